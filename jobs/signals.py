"""Signals the orchestration sends for cross-cutting concerns (metrics); never business rules.

ops/receivers.py connects them; nothing here knows who listens.
"""
from django.dispatch import Signal

# Sent after one reconcile pass: kwargs seconds (its duration).
reconcile_finished = Signal()
# Sent by the workload watcher (jobs/k8s_watch.py): kwargs kind (jobs, pods), outcome (event, list,
# expired, broken), count.
workload_watch_counted = Signal()
# Sent once per telemetry batch and (status, target) group: kwargs status, target, count.
telemetry_counted = Signal()
