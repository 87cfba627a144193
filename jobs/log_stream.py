"""A step's log read incrementally by offset, for the console's follow view (the API's step_logs is a tail).

Offsets belong to a `source`: "file" (bytes of the local launcher's output, exact), "window" (characters of
the launcher's recent log, used where the launcher cannot read from an offset, e.g. Kubernetes pods), or
"stored" (characters of the tail kept when the step ended). A reader whose source changed starts again.
"""
from __future__ import annotations

from django.conf import settings

from jobs.launchers import LaunchError, get_launcher
from queues.models import QueueRequest, StepState

CHUNK_BYTES = 256 * 1024
WINDOW_BYTES = 1024 * 1024  # what a launcher without offsets is asked for per read
DOWNLOAD_BYTES = 16 * 1024 * 1024


def _live(step: QueueRequest) -> bool:
    return step.state in StepState.LAUNCHED or bool(step.launched_at and not step.logs)


def step_log_since(step: QueueRequest, *, offset: int, limit: int = CHUNK_BYTES) -> dict:
    """{"source", "offset", "next", "text", "more", "error"?}: the log from `offset` on (restarted at 0 if it shrank)."""
    offset = max(int(offset), 0)
    if _live(step):
        launcher = get_launcher()
        try:
            if hasattr(launcher, "read_log"):
                text, after = launcher.read_log(step, offset=offset, limit=limit)
                if text or not step.logs:  # nothing new yet, unless the step ended and its kept tail is the log now
                    return {"source": "file", "offset": offset, "next": after, "text": text, "more": len(text) > 0}
            else:
                window = launcher.logs(step, tail_bytes=WINDOW_BYTES)
                if window:
                    return _slice("window", window, offset, limit)
        except LaunchError as exc:
            if not step.logs:
                return {"source": "none", "offset": 0, "next": 0, "text": "", "more": False, "error": str(exc)}
    return _slice("stored" if step.logs else "none", step.logs, offset, limit)


def _slice(source: str, text: str, offset: int, limit: int) -> dict:
    if offset > len(text):  # the window moved on or the text was replaced: read it again from the start
        offset = 0
    chunk = text[offset:offset + limit]
    return {"source": source, "offset": offset, "next": offset + len(chunk), "text": chunk,
            "more": offset + len(chunk) < len(text)}


def step_log_full(step: QueueRequest) -> str:
    """As much of the log as can be had (up to DOWNLOAD_BYTES), for a download."""
    parts, offset = [], 0
    while sum(len(p) for p in parts) < DOWNLOAD_BYTES:
        chunk = step_log_since(step, offset=offset, limit=max(CHUNK_BYTES, settings.STEP_LOG_TAIL_BYTES))
        if chunk["offset"] != offset or not chunk["text"]:
            break
        parts.append(chunk["text"])
        offset = chunk["next"]
        if chunk["source"] != "file" and not chunk["more"]:
            break
    return "".join(parts)
