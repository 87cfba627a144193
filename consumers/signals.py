"""Signals the consumers send for cross-cutting concerns (metrics); never business rules.

ops/receivers.py connects them; nothing here knows who listens.
"""
from django.dispatch import Signal

# Sent once per queue-control message handled: kwargs command, outcome.
command_handled = Signal()
