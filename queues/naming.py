"""Names derived from a payload (DESIGN §4): queue ids, Job names, producer ids, topics, collections."""
from __future__ import annotations

import calendar
import hashlib
import re
import secrets
import string
from datetime import date

# Used with fullmatch only: `$` also matches before a final newline, so `re.match(r"…$")` let
# `abc\n` through as a label.
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
QUEUE_ID_MAX = 40
JOB_NAME_MAX = 63
SYMBOL_RE = re.compile(r"[A-Z0-9]{2,20}")

# Longest first, so BTCFDUSD is btc and not btcfd.
QUOTE_ASSETS = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "DAI", "EUR", "TRY", "BRL", "BTC", "ETH", "BNB")
_ALPHABET = string.ascii_lowercase + string.digits


def is_dns1123_label(value: str, max_length: int = 63) -> bool:
    return len(value) <= max_length and bool(DNS1123_LABEL.fullmatch(value))


def is_symbol(value: str) -> bool:
    return bool(SYMBOL_RE.fullmatch(value))


def _slug(value: str) -> str:
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", value.lower())).strip("-")


def _short_hash(value: str, length: int = 6) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:length]


def _fit(name: str, max_length: int) -> str:
    """Truncate to max_length keeping uniqueness with a short hash of the full name."""
    if len(name) <= max_length:
        return name
    digest = _short_hash(name)
    return f"{name[: max_length - len(digest) - 1].rstrip('-')}-{digest}"


def generate_queue_id(symbol: str, first_type: str, start: date | None) -> str:
    """`btcusdt-api-candles-5m-20240601-x7k2p9`: symbol, first type, start date, 6 random chars."""
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(6))
    parts = [symbol.lower(), _slug(first_type)]
    if start:
        parts.append(start.strftime("%Y%m%d"))
    head = "-".join(parts)
    room = QUEUE_ID_MAX - len(suffix) - 1
    return f"{head[:room].rstrip('-')}-{suffix}"


def job_name(queue_id: str, target: str, step_number: int, run: int = 1) -> str:
    """Stable Job name, unique per step: `{queue_id}-{target}-{n}`, hashed down to 63 chars.

    A retried step (run 2, 3, …) gets `-r{run}` so its new Job never collides with the old one,
    which may still be in the cluster until its TTL expires.
    """
    name = f"{queue_id}-{target}-{step_number}"
    return _fit(f"{name}-r{run}" if run > 1 else name, JOB_NAME_MAX)


def default_step_name(target: str, type_name: str) -> str:
    return _slug(f"{target}-{type_name}")


def telemetry_producer_id(target: str, suffix: str) -> str:
    return f"{target}__{suffix}"


def kafka_topic(queue_id: str, type_name: str) -> str:
    """Loaders and connectors of one type in one queue share `{queue_id}-{type}`."""
    return f"{queue_id}-{type_name.replace('_', '-')}"


def symbol_base(symbol: str) -> str:
    """`BTCUSDT` → `btc`: the symbol without its quote asset."""
    for quote in QUOTE_ASSETS:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)].lower()
    return symbol.lower()


def period_suffix(start: date, end: date) -> str:
    if start == end:
        return start.strftime("%Y_%m_%d")
    last_day = calendar.monthrange(start.year, start.month)[1]
    if start.day == 1 and end == start.replace(day=last_day):
        return start.strftime("%Y_%m")
    return f"{start:%Y_%m_%d}_{end:%Y_%m_%d}"


def default_collection(symbol: str, type_name: str, start: date | None, end: date | None) -> str:
    """`{base}_{type without "api_"}_{period}`, e.g. api_candles_5m over June 2024 → btc_candles_5m_2024_06."""
    type_part = type_name.removeprefix("api_")
    name = f"{symbol_base(symbol)}_{type_part}"
    if start and end:
        name = f"{name}_{period_suffix(start, end)}"
    return name
