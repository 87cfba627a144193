"""Exporter for pods without a web server (Celery worker/beat, Kafka consumers).

    PROMETHEUS_MULTIPROC_DIR=/run/metrics METRICS_PORT=9100 python -m ops.metrics_server

Runs beside the main process (a sidecar container sharing the multiprocess directory, see
deploy/) and serves everything the processes of the pod wrote there. It needs no Django settings
and no database, so it keeps answering while the main process restarts.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector


def main() -> int:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        print("PROMETHEUS_MULTIPROC_DIR must be set", file=sys.stderr)
        return 2
    os.makedirs(directory, exist_ok=True)
    port = int(os.environ.get("METRICS_PORT", "9100"))
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    server, thread = start_http_server(port, addr=os.environ.get("METRICS_ADDR", "0.0.0.0"), registry=registry)
    print(f"serving metrics of {directory} on :{port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
