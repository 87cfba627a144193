"""Connection settings for confluent-kafka clients, without Django.

Shared by the manager (kafkabus.config, from settings) and by workers such as the simulator
(devtools.simulator.kafka_io, from the step environment), so both connect the same way (DESIGN §6):
SASL_SSL with SCRAM-SHA-512 when a user is given (the CA bundle when one is given), plaintext otherwise.
"""
from __future__ import annotations


def connection_config(*, bootstrap: str, user: str = "", password: str = "", ca_path: str = "", client_id: str) -> dict:
    if not bootstrap:
        raise RuntimeError("Kafka is not configured: set KAFKA_BOOTSTRAP_SERVERS")
    config = {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        # Keep retrying a broker that went away instead of giving up (a restart must be survived).
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 2000,
    }
    if user:
        config.update(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanisms": "SCRAM-SHA-512",
                "sasl.username": user,
                "sasl.password": password,
            }
        )
        if ca_path:
            config["ssl.ca.location"] = str(ca_path)
    else:
        config["security.protocol"] = "PLAINTEXT"
    return config
