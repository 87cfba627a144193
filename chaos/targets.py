"""The one place the fault-injection suite names the product.

Everything else in `chaos/` drives the system through its process boundaries: `manage.py` commands,
`python -m` entry points, the celery CLI, gunicorn, the HTTP API, Kafka topics, and reads the
database with plain SQL. When modules move (services to jobs/, the API to api/, consumers to
consumers/, the simulator to devtools/simulator/), only this file changes. Imports of product code
are lazy (inside functions) because the harness runs without Django being set up.
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# --- entry points (argv tails; the harness prefixes the interpreter) -----------------------------
MANAGE = ["manage.py"]
WSGI_APP = "queuemanager.wsgi:application"
GUNICORN_CONFIG = "python:ops.gunicorn_config"
CELERY_APP = "queuemanager"
CONTROL_CONSUMER = ["manage.py", "consume_queue_control"]
EVENTS_CONSUMER = ["manage.py", "consume_queue_events"]
KUBE_EMULATOR = ["-m", "tests.emulators.kube"]
ARANGO_EMULATOR = ["-m", "tests.emulators.arango"]

# --- HTTP API -----------------------------------------------------------------------------------
API_QUEUES = "/api/queues/"
HEALTH_LIVE = "/health/live"


def api_queue(queue_id: str) -> str:
    return f"/api/queues/{queue_id}/"


def api_queue_stop(queue_id: str) -> str:
    return f"/api/queues/{queue_id}/stop/"


def api_queue_retry(queue_id: str) -> str:
    return f"/api/queues/{queue_id}/retry/"


# --- the payload contract: the built-in templates, read as data ---------------------------------
TEMPLATES_DIR = ROOT / "queues" / "pipeline_templates"


def template_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.json"))


def template_payload(name: str) -> dict:
    return json.loads((TEMPLATES_DIR / f"{name}.json").read_text())


# --- database schema (read with SQL; the tables are the contract the invariants check) ----------
QUEUE_TABLE = "queues_queue"
STEP_TABLE = "queues_queuerequest"
EVENT_TABLE = "queues_telemetryevent"
COMMAND_TABLE = "kafkabus_processedcommand"

MIRROR_OUTBOX_TABLE = "mirror_mirroroutbox"  # rows not yet written to ArangoDB

QUEUE_ACTIVE = ("pending", "running", "stopping")
QUEUE_TERMINAL = ("succeeded", "failed", "stopped")
STEP_LAUNCHED = ("launching", "pending", "running", "stopping")
STEP_TERMINAL = ("succeeded", "failed", "stopped", "lost")
STEP_FAILED = ("failed", "lost")


def check_schema_names() -> list[str]:
    """What differs between the names above and the product's models (needs Django set up)."""
    from kafkabus.models import ProcessedCommand
    from mirror.models import MirrorOutbox
    from queues.models import Queue, QueueRequest, QueueStatus, StepState, TelemetryEvent

    problems = []
    for model, table in ((Queue, QUEUE_TABLE), (QueueRequest, STEP_TABLE), (TelemetryEvent, EVENT_TABLE),
                         (ProcessedCommand, COMMAND_TABLE), (MirrorOutbox, MIRROR_OUTBOX_TABLE)):
        if model._meta.db_table != table:
            problems.append(f"{model.__name__} table is {model._meta.db_table}, not {table}")
    for name, ours, theirs in (
        ("QueueStatus.ACTIVE", QUEUE_ACTIVE, QueueStatus.ACTIVE), ("QueueStatus.TERMINAL", QUEUE_TERMINAL, QueueStatus.TERMINAL),
        ("StepState.LAUNCHED", STEP_LAUNCHED, StepState.LAUNCHED), ("StepState.TERMINAL", STEP_TERMINAL, StepState.TERMINAL),
        ("StepState.FAILED_STATES", STEP_FAILED, StepState.FAILED_STATES),
    ):
        if set(ours) != {str(v) for v in theirs}:
            problems.append(f"{name} is {sorted(map(str, theirs))}, not {sorted(ours)}")
    return problems


# --- local launcher: one folder per Job name under LOCAL_LAUNCHER_DIR ---------------------------
PROCESS_FILE = "process.json"  # {"pid", "pgid", "runner_pid", "started"}
EXIT_FILE = "exit.json"  # {"returncode", "ended"}
OUTPUT_FILE = "output.log"
SIMULATOR_FINISHED = "finished with "  # "finished with N records": what a batch step says it sent

# --- Kubernetes emulator: the labels the launcher puts on every Job ----------------------------
JOB_LABEL_QUEUE = "streamforge.io/queue-id"
JOB_LABEL_STEP = "streamforge.io/step"
JOB_LABEL_RUN = "streamforge.io/run"
JOB_LABEL_TYPE = "streamforge.io/type"  # the step's type, `_` -> `-`
STREAMING_TYPES = ("ws-", "realtime-", "graph-metrics-stream")  # prefixes of types that run until stopped
KUBE_EMULATOR_TOKEN = "emulator-token"


def kube_env(api_url: str, namespace: str) -> dict[str, str]:
    """The settings that put the launcher on a Kubernetes API (README *Running steps as Kubernetes Jobs*)."""
    return {"JOB_LAUNCHER": "kubernetes", "K8S_API_URL": api_url, "K8S_API_TOKEN": KUBE_EMULATOR_TOKEN,
            "K8S_NAMESPACE": namespace}

# --- ArangoDB mirror: collections and the fields compared with PostgreSQL ------------------------
ARANGO_QUEUES, ARANGO_STEPS = "queues", "steps"  # queue docs carry queue_id; step docs queue_id and name


def arango_env(url: str, database: str, password: str) -> dict[str, str]:
    """The settings that switch the mirror on (README *Configuration*), draining every second."""
    return {"ARANGO_URL": url, "ARANGO_DB": database, "ARANGO_USER": "root", "ARANGO_PASSWORD": password,
            "MIRROR_SYNC_INTERVAL_SECONDS": "2"}


# --- Kafka: the manager's own messages carry this origin ---------------------------------------
MANAGER_ORIGIN = "queue-manager"
DLQ_SUFFIX = "-dlq"
