"""Signals for cross-cutting concerns (metrics, the ArangoDB mirror); never business rules."""
from django.dispatch import Signal

# Sent after a queue's status changed: kwargs queue, previous, status.
queue_status_changed = Signal()
# Sent after a step's state changed: kwargs step, previous, state.
step_state_changed = Signal()
# Sent inside the transaction of a telemetry batch: kwargs step_pks (steps whose progress may have
# changed) and event_keys (events stored). Bulk writes send no post_save, hence this signal.
telemetry_ingested = Signal()
