"""The StreamForge worker simulator, a development tool: `python -m devtools.simulator`.

worker.py (the behaviour, HTTP telemetry), kafka_io.py (Kafka telemetry, stop commands, data
topics), data.py (record flow without Kafka). It needs no Django settings and no database.
"""
