"""A StreamForge worker simulator: behaves like loader-producer, arango-connector, graph-builder,
gnn-trainer and visualizer, driven only by the Job environment (DESIGN §7).

Run as `python -m devtools.simulator` (what the local launcher does) or `manage.py simulate_worker`.
It needs no Django settings and no database, like a real worker.

Behaviour:
- batch steps report `started`, then `loading` with growing `records_written`, then `finished`;
  `gnn_train` adds `extra: {epoch, loss}`;
- topic consumers (arango-connector) and streaming steps run until stopped;
- on SIGTERM (or a `stop` command on the control topic) a step reports `interrupted`, then
  `finished`, and exits 0.

Telemetry goes to Kafka when KAFKA_BOOTSTRAP_SERVERS is set (devtools.simulator.kafka_io), else to the
manager's HTTP endpoint (MANAGER_TELEMETRY_URL), authenticated with the step's own credential: read
from the file MANAGER_TELEMETRY_TOKEN_FILE names (local launcher), else MANAGER_TELEMETRY_TOKEN
(a Kubernetes Secret reference).

Knobs (environment): SIMULATOR_TICK seconds between reports (0.5), SIMULATOR_TICKS reports of a
batch step (5), SIMULATOR_RECORDS records a loader writes (1000). Faults (SIMULATOR_FAULT, JSON):
{"fail_after": N} report `error` after N ticks and exit 1; {"crash_after": N} die silently with
exit 137 after N ticks; {"hang": true} ignore SIGTERM and never finish; {"slow": F} ticks F× longer;
{"exit_code": N} with fail_after: the exit code to use; {"launch_delay": S} (read by the
local launcher) waits S seconds after starting the process before the launch is recorded.
"""
from __future__ import annotations

import json
import os
import random
import signal
import time
import urllib.error
import urllib.request

from devtools.simulator import step_run
from devtools.simulator.data import SimulatedData

STREAMING_PREFIXES = ("ws_", "realtime_")
STREAMING_TYPES = ("graph_metrics_stream",)


class HttpSink:
    """POSTs events to the manager; retries briefly, never kills the worker."""

    def __init__(self, url: str, token: str):
        self.url, self.token = url, token

    def send(self, event: dict) -> None:
        body = json.dumps(event).encode()
        request = urllib.request.Request(
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        for attempt in range(5):
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    response.read()
                return
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    log(f"telemetry rejected with HTTP {exc.code}: {exc.read()[:300]!r}")
                    return
            except OSError as exc:
                log(f"telemetry not delivered ({exc}); retrying")
            time.sleep(0.2 * 2**attempt)

    def stop_requested(self) -> bool:
        return False  # without Kafka, the stop command arrives as SIGTERM

    def close(self) -> None:
        pass


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Worker:
    def __init__(self, env: dict, sink, data):
        self.env, self.sink, self.data = env, sink, data
        self.target = env.get("TARGET") or env["TELEMETRY_PRODUCER_ID"].split("__", 1)[0]
        self.type = env["TYPE"]
        self.fault = json.loads(env.get("SIMULATOR_FAULT") or "{}")
        self.tick = float(env.get("SIMULATOR_TICK", "0.5")) * float(self.fault.get("slow", 1))
        self.ticks = int(env.get("SIMULATOR_TICKS", "5"))
        self.total = int(env.get("SIMULATOR_RECORDS", "1000"))
        self.records = 0
        self.seq = 0
        self.stopping = False

    @property
    def runs_until_stopped(self) -> bool:
        return (
            self.type.startswith(STREAMING_PREFIXES)
            or self.type in STREAMING_TYPES
            or self.target == "arango-connector"  # a topic consumer cannot know when its producer ends
        )

    def on_sigterm(self, signum, frame) -> None:
        self.stopping = True

    def report(self, status: str, message: str = "", **fields) -> None:
        self.seq += 1
        event = {
            "event": status,
            "status": status,
            "queue_id": self.env["QUEUE_ID"],
            "producer": self.env["TELEMETRY_PRODUCER_ID"],
            "symbol": self.env.get("SYMBOL"),
            "type": self.type,
            "records_written": self.records,
            "message": message,
            "finished": status == "finished",
            "timestamp": time.time(),
            "seq": self.seq,
            **({"run": run} if (run := step_run(self.env)) is not None else {}),
            **fields,
        }
        self.sink.send(event)

    def run(self) -> int:
        if self.fault.get("hang"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGTERM, self.on_sigterm)
        log(f"{self.target} {self.type} starting for {self.env['QUEUE_ID']}")
        self.report("started", f"{self.target} started")
        tick = 0
        while True:
            if self.fault.get("hang") and tick >= 1:
                time.sleep(self.tick)
                continue
            if self.sink.stop_requested() or self.stopping:  # the command first: it says who asked
                self.report("interrupted", "stop requested")
                self.report("finished", f"stopped after {self.records} records")
                log("stopped")
                return 0
            tick += 1
            if "crash_after" in self.fault and tick > int(self.fault["crash_after"]):
                log("crashing (injected)")
                os._exit(137)
            if "fail_after" in self.fault and tick > int(self.fault["fail_after"]):
                self.report("error", error_message="injected failure")
                log("failing (injected)")
                return int(self.fault.get("exit_code", 1))
            self.work(tick)
            if not self.runs_until_stopped and tick >= self.ticks:
                self.report("finished", f"wrote {self.records} records")
                log(f"finished with {self.records} records")
                return 0
            time.sleep(self.tick)

    def work(self, tick: int) -> None:
        chunk = max(1, self.total // self.ticks)
        if self.target == "loader-producer":
            self.records += self.data.produce(min(chunk, self.total - self.records) if not self.runs_until_stopped else chunk)
        elif self.target == "arango-connector":
            self.records += self.data.consume(chunk)
        else:
            self.records += chunk
        extra = {}
        if self.type == "gnn_train":
            extra = {"extra": {"epoch": tick, "loss": round(1.0 / (tick + 1) + random.random() * 0.01, 4)}}
        self.report("loading", f"tick {tick}", **extra)


def build_io(env: dict):
    if env.get("KAFKA_BOOTSTRAP_SERVERS"):
        from devtools.simulator.kafka_io import kafka_io  # confluent_kafka only when Kafka is used

        return kafka_io(env)
    return HttpSink(env["MANAGER_TELEMETRY_URL"], telemetry_token(env)), SimulatedData()


def telemetry_token(env: dict) -> str:
    path = env.get("MANAGER_TELEMETRY_TOKEN_FILE")
    if path:
        with open(path) as handle:
            return handle.read().strip()
    return env.get("MANAGER_TELEMETRY_TOKEN", "")


def main() -> int:
    env = dict(os.environ)
    missing = [k for k in ("QUEUE_ID", "TYPE", "TELEMETRY_PRODUCER_ID") if not env.get(k)]
    if missing:
        log(f"missing environment: {', '.join(missing)}")
        return 2
    sink, data = build_io(env)
    try:
        return Worker(env, sink, data).run()
    finally:
        data.close()
        sink.close()

