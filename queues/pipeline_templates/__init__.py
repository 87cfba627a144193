"""Built-in payload templates: the two pipelines of the original spec, offered in admin and Swagger."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

_DIR = Path(__file__).resolve().parent

TEMPLATES = {
    "historical-pipeline": "Historical: June 2024 BTCUSDT candles and trades → graph → GNN model",
    "realtime-pipeline": "Realtime: live BTCUSDT candles and trades → realtime graph → inference → visualizer",
}


@lru_cache(maxsize=None)
def _load(name: str) -> str:
    return (_DIR / f"{name}.json").read_text()


def template_payload(name: str) -> dict:
    """A fresh copy of a template's payload."""
    if name not in TEMPLATES:
        raise KeyError(name)
    return json.loads(_load(name))
