"""Derived names (DESIGN §4): queue ids, Job names, telemetry ids, topics, default collections."""
from __future__ import annotations

from datetime import date

import pytest

from queues import naming
from tests.queues.factories import payload

DNS1123 = naming.DNS1123_LABEL


def test_it_generates_queue_ids_as_short_dns_labels():
    queue_id = naming.generate_queue_id("BTCUSDT", "api_candles_5m", date(2024, 6, 1))
    assert queue_id.startswith("btcusdt-api-candles-5m-20240601-")
    assert len(queue_id) <= 40 and DNS1123.fullmatch(queue_id)
    assert len(queue_id.rsplit("-", 1)[1]) == 6


def test_it_keeps_long_generated_queue_ids_within_40_chars():
    queue_id = naming.generate_queue_id("A" * 20, "realtime_gnn_infer", date(2024, 6, 1))
    assert len(queue_id) <= 40 and DNS1123.fullmatch(queue_id)


def test_it_generates_different_queue_ids_for_the_same_payload():
    ids = {naming.generate_queue_id("BTCUSDT", "ws_trades", None) for _ in range(20)}
    assert len(ids) == 20


def test_it_keeps_job_names_within_63_chars_and_unique_for_a_40_char_queue_id():
    queue_id = "q" * 40
    names = [naming.job_name(queue_id, "arango-connector", n) for n in range(1, 12)]
    assert all(len(n) <= 63 and DNS1123.fullmatch(n) for n in names)
    assert len(set(names)) == len(names)
    assert naming.job_name(queue_id, "arango-connector", 3) == naming.job_name(queue_id, "arango-connector", 3)


def test_it_builds_shared_topics_and_telemetry_ids():
    assert naming.kafka_topic("q1", "api_candles_5m") == "q1-api-candles-5m"
    assert naming.telemetry_producer_id("loader-producer", "api_trades") == "loader-producer__api_trades"


@pytest.mark.parametrize(
    "symbol, type_name, start, end, expected",
    [
        ("BTCUSDT", "api_candles_5m", date(2024, 6, 1), date(2024, 6, 30), "btc_candles_5m_2024_06"),
        ("BTCUSDT", "api_trades", date(2024, 6, 1), date(2024, 6, 30), "btc_trades_2024_06"),
        ("BTCUSDT", "ws_trades", date(2024, 8, 1), date(2024, 8, 1), "btc_ws_trades_2024_08_01"),
        ("ETHBTC", "api_trades", date(2024, 2, 1), date(2024, 2, 29), "eth_trades_2024_02"),
        ("BTCUSDT", "api_trades", date(2024, 6, 1), date(2024, 7, 31), "btc_trades_2024_06_01_2024_07_31"),
        ("BTCUSDT", "api_trades", date(2024, 6, 2), date(2024, 6, 30), "btc_trades_2024_06_02_2024_06_30"),
        ("BTCFDUSD", "ws_depth", None, None, "btc_ws_depth"),
        ("SOLUSDC", "api_candles_1h", date(2024, 1, 1), date(2024, 1, 31), "sol_candles_1h_2024_01"),
    ],
)
def test_it_derives_default_collections(symbol, type_name, start, end, expected):
    assert naming.default_collection(symbol, type_name, start, end) == expected


@pytest.mark.parametrize("symbol, base", [("BTCUSDT", "btc"), ("BTCFDUSD", "btc"), ("ETHBTC", "eth"), ("USDT", "usdt"), ("XYZ", "xyz")])
def test_it_strips_the_quote_asset(symbol, base):
    assert naming.symbol_base(symbol) == base


@pytest.mark.django_db
def test_it_gives_every_step_unique_names_with_a_40_char_queue_id_and_repeated_targets(api):
    data = payload("historical-pipeline", queue_id="a" * 40)
    # A second loader/connector pair of another interval: the same targets three times over.
    data["requests"] += [
        {"target": "loader-producer", "type": "api_candles_1h"},
        {"target": "arango-connector", "type": "api_candles_1h"},
        {"target": "loader-producer", "type": "api_candles_5m", "name": "candles-again", "kafka_topic": "other-topic"},
    ]
    response = api.post("/api/queues/", data, format="json")
    assert response.status_code == 201, response.content
    steps = response.json()["steps"]
    job_names = [s["job_name"] for s in steps]
    assert all(len(n) <= 63 and DNS1123.fullmatch(n) for n in job_names)
    assert len(set(job_names)) == len(steps)
    telemetry = [s["telemetry_id"] for s in steps]
    assert len(set(telemetry)) == len(steps)
    assert all(t.startswith(f"{s['target']}__") for t, s in zip(telemetry, steps))
    assert len({s["name"] for s in steps}) == len(steps)


@pytest.mark.django_db
def test_it_shares_topics_between_loader_and_connector_of_a_type(api):
    body = api.post("/api/queues/", payload("historical-pipeline", queue_id="topics-1"), format="json").json()
    topic = {(s["target"], s["type"]): s["kafka_topic"] for s in body["steps"]}
    assert topic[("loader-producer", "api_candles_5m")] == topic[("arango-connector", "api_candles_5m")] == "topics-1-api-candles-5m"
    assert topic[("loader-producer", "api_trades")] == topic[("arango-connector", "api_trades")] == "topics-1-api-trades"
    assert topic[("graph-builder", "gnn_graph")] == ""


@pytest.mark.django_db
def test_it_uses_an_explicit_kafka_topic_and_collection_name(api):
    data = payload("realtime-pipeline")
    data["requests"][1]["kafka_topic"] = "custom-trades"
    data["requests"][3]["kafka_topic"] = "custom-trades"
    data["requests"][3]["collection_name"] = "my_trades"
    data["requests"][4]["collection_inputs"] = ["btc_ws_candles_1m_2024_08_01", "my_trades"]
    body = api.post("/api/queues/", data, format="json").json()
    steps = {s["name"]: s for s in body["steps"]}
    assert steps["loader-producer-ws-trades"]["kafka_topic"] == "custom-trades"
    assert steps["arango-connector-ws-trades"]["collections_written"] == ["my_trades"]
    assert {"upstream": "arango-connector-ws-trades", "downstream": "loader-producer-ws-trades"}.items() <= next(
        e for e in body["edges"] if e["downstream"] == "loader-producer-ws-trades"
    ).items()


@pytest.mark.parametrize("value", ["abc\n", "a\n"])
def test_it_refuses_dns_labels_with_line_breaks(value):
    """Issue #10 §4 (trailing newline): `$` matched before a final newline, so `abc\\n` passed as a label."""
    assert not naming.is_dns1123_label(value)


def test_it_checks_symbols_by_full_match():
    """Issue #10 §4 (trailing newline): the symbol pattern must not accept a final newline either."""
    assert naming.SYMBOL_RE.fullmatch("BTCUSDT")
    assert not naming.is_symbol("BTCUSDT\n")
    assert naming.is_symbol("BTCUSDT")
