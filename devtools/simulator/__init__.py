"""The StreamForge worker simulator, a development tool: `python -m devtools.simulator`.

worker.py (the behaviour, HTTP telemetry), kafka_io.py (Kafka telemetry, stop commands, data
topics), data.py (record flow without Kafka). It needs no Django settings and no database.
"""


def step_run(env: dict) -> int | None:
    """The step run this worker is (STEP_RUN, set by the launcher), or None when it was not given."""
    value = env.get("STEP_RUN", "")
    return int(value) if value.isdecimal() else None  # isdigit admits "²", which int() refuses
