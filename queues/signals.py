"""Signals for cross-cutting concerns (metrics, the ArangoDB mirror); never business rules."""
from django.dispatch import Signal

# Sent after a queue's status changed: kwargs queue, previous, status.
queue_status_changed = Signal()
# Sent after a step's state changed: kwargs step, previous, state, and written_with_change (True when the
# change ran as one statement outside a transaction with what `step_state_writing` receivers returned).
step_state_changed = Signal()
# Sent before a step's state change that runs as one statement outside a transaction (kwargs step,
# state): a receiver that records the change in the database returns (sql, params), a data-modifying
# statement over `changed(id)` (the row the change updated) that runs inside the change's statement, so
# the record exists exactly when the change does; it then skips its write on `step_state_changed`.
step_state_writing = Signal()
# Sent inside the transaction of a telemetry batch: kwargs step_pks (steps whose progress may have
# changed) and event_keys (events stored). Bulk writes send no post_save, hence this signal.
telemetry_ingested = Signal()
