"""Plain progress reports coalesced per step per batch (issue #12, telemetry ingestion).

Most of what workers send is "still loading, N records so far". Storing each of those as its own
row with its own unique key cost more than everything else ingestion does, and the only thing a
report adds is a higher count. So a batch's plain reports are grouped by what an operator reads of
them — (queue, producer, run as sent, status, message) — and each group becomes ONE event: the
highest records_written, the last report's text (payload) and time, and `coalesced` = how many
distinct reports it stands for (the same text twice in a batch counts once, as before). The group's
key is the content hash of its distinct reports' texts in order (`event_key`), so the same batch
delivered again is a duplicate as a whole, and a group of one has the very key the report had when
each event was a row. A report delivered again in a batch cut differently (a consumer restart) lands
in a group of its own and is counted again in `coalesced`; the progress it carries cannot count twice
(records_written is a maximum).

A plain report is `loading` or `progress` without the keys error_message, extra, sent_at and finished,
flat and plainly storable (`_plainly_storable`), every field it uses of the shape the inline
reading of `normalize` accepts. Anything else — lifecycle events, errors, extras, any value this
test does not vouch for — goes through `normalize` as before: it is stored as its own row, or
refused with the reason that names the field. The test here is only ever stricter than normalize.
"""
from __future__ import annotations

from datetime import datetime, timezone as dt_timezone

from jobs.telemetry_input import (
    _EPOCH_MAX, _SCALAR_TYPES, BIGINT_MAX, MAX_RUN, MAX_STRING_CHARS, PRODUCER_MAX, QUEUE_ID_MAX, Event,
    _plainly_storable, canonical,
)

COALESCED_STATUSES = ("loading", "progress")
_FLOAT_EPOCH_MAX = _EPOCH_MAX - 1  # a float just below the limit may round up to it in fromtimestamp


def split(raw_events: list, texts: list | None) -> tuple[list[Event], list[int]]:
    """Returns (one Event per group of plain reports, the indexes of the other events).

    Per report: the checks of what differs from report to report (count, time, text, value types)
    and one dict lookup; what its group shares (queue, producer, run, message) is checked once,
    when the group is made: a report that finds its group has values equal to ones already vouched
    for, and among JSON's values only a string equals a string. The run is the exception (True and
    1.0 equal 1), so its type is checked per report. No object, no hash digest per report.
    """
    groups: dict[tuple, list] = {}
    rest: list[int] = []
    texts = [None] * len(raw_events) if texts is None else list(texts)  # filled in below for HTTP
    plainly = _plainly_storable
    scalar_types = _SCALAR_TYPES.issuperset
    index = -1
    for raw in raw_events:
        index += 1
        if raw.__class__ is not dict:
            rest.append(index)
            continue
        get = raw.get
        status = get("event")
        if status != "loading" and status != "progress":
            if status is None or status == "":
                status = get("status")
            if status != "loading" and status != "progress":
                rest.append(index)
                continue
        if "error_message" in raw or "extra" in raw or "sent_at" in raw or "finished" in raw:  # even as null
            rest.append(index)
            continue
        records = get("records_written")
        if records is None:
            records = get("message_count")
        if records.__class__ is int:
            if not 0 <= records <= BIGINT_MAX:
                rest.append(index)
                continue
        elif records is not None:
            rest.append(index)
            continue
        timestamp = get("timestamp")
        if timestamp.__class__ is int:
            if not 0 <= timestamp < _EPOCH_MAX:
                rest.append(index)
                continue
        elif timestamp is not None and not (timestamp.__class__ is float and 0 <= timestamp < _FLOAT_EPOCH_MAX):
            rest.append(index)
            continue
        run = get("run")
        if run is not None and run.__class__ is not int:
            rest.append(index)
            continue
        text = texts[index]
        if text is None:
            text = texts[index] = canonical(raw)
        # _plainly_storable's verdict; its usual case inline (ASCII, no \u escape, scalar values only)
        if not (len(text) <= MAX_STRING_CHARS and text.isascii() and ("\\" not in text or "\\u" not in text)
                and scalar_types(map(type, raw.values()))) and not plainly(raw, text):
            rest.append(index)
            continue
        producer = get("producer")
        if producer is None or producer == "":
            producer = get("telemetry_id")
        message = get("message")
        if message is None:
            message = ""
        # Hashable: the values are scalars (checked above), lists and objects went to normalize.
        key = (get("queue_id"), producer, run, status, message)
        group = groups.get(key)
        if group is None:
            if not _plain_group(key):
                rest.append(index)
                continue
            groups[key] = [records, [index], None]
            continue
        highest = group[0]
        if records is not None and highest is not None and records > highest:
            group[0] = records  # the common case: a higher count, so not a report seen before
            if group[2] is not None:
                group[2].add(text)
        elif _repeated(group, texts, text, index):
            continue
        elif highest is None:
            group[0] = records
        group[1].append(index)
    return [_event(key, group, raw_events, texts) for key, group in groups.items()], rest


def _plain_group(key: tuple) -> bool:
    """What a group's reports share, of the shape normalize's inline reading accepts (once per group)."""
    queue_id, producer, run, _, message = key
    return (
        queue_id.__class__ is str and 0 < len(queue_id) <= QUEUE_ID_MAX
        and producer.__class__ is str and 0 < len(producer) <= PRODUCER_MAX
        and message.__class__ is str
        and (run is None or 1 <= run <= MAX_RUN)
    )


def _repeated(group: list, texts: list, text: str, index: int) -> bool:
    """Whether a report that does not raise the count is one already in its group (a redelivery inside
    the batch): then it is counted once, as when each event was a row. Only such a report is compared."""
    seen = group[2]
    if seen is None:
        seen = group[2] = {texts[i] for i in group[1]}
    if text in seen:
        group.append(index)  # its position, for a rejection of the group
        return True
    seen.add(text)
    return False


def _event(key: tuple, group: list, raw_events: list, texts: list) -> Event:
    queue_id, producer, run, status, message = key
    records, indexes = group[0], group[1]
    last = indexes[-1]
    raw, text = raw_events[last], texts[last]  # the last report: payload, time
    timestamp = raw.get("timestamp")
    sent_at = None if timestamp is None else datetime.fromtimestamp(timestamp, tz=dt_timezone.utc)
    event = Event(queue_id, producer, status, raw, text, "", records, message[:2000], None, sent_at, run)
    event.index = last  # applied where its last report was, in batch order
    event.coalesced = len(indexes)  # distinct reports
    event.indexes = indexes if len(group) == 3 else sorted(indexes + group[3:])  # repeated ones too
    if len(indexes) > 1:
        event.hashed = "\n".join([texts[i] for i in indexes])
    return event
