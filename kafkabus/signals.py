"""Signals the Kafka transport sends for cross-cutting concerns (metrics); never business rules.

ops/receivers.py connects them; nothing here knows who listens.
"""
from django.dispatch import Signal

# Sent when a consumer measured its lag on a topic: kwargs topic, lag.
consumer_lag_measured = Signal()
# Sent once per message sent to a dead-letter topic: kwargs topic, reason.
dead_lettered = Signal()
