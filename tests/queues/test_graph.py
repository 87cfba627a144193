"""Dependency inference (DESIGN §5 rules 1-3) as the API shows it for the two seed pipelines."""
from __future__ import annotations

import pytest

from tests.queues.factories import payload

pytestmark = pytest.mark.django_db

LP, AC, GB, GT, VZ = "loader-producer", "arango-connector", "graph-builder", "gnn-trainer", "visualizer"


def _edges(body) -> set[tuple[str, str, str]]:
    return {(e["upstream"], e["downstream"], e["kind"]) for e in body["edges"]}


def test_it_infers_the_historical_graph(api):
    body = api.post("/api/queues/", payload("historical-pipeline"), format="json").json()
    names = [s["name"] for s in body["steps"]]
    assert names == [
        "loader-producer-api-candles-5m",
        "loader-producer-api-trades",
        "arango-connector-api-candles-5m",
        "arango-connector-api-trades",
        "graph-builder-gnn-graph",
        "gnn-trainer-gnn-train",
    ]
    lc, lt, cc, ct, gb, gt = names
    assert _edges(body) == {
        (cc, lc, "ready"),  # connectors before loaders of the same type
        (ct, lt, "ready"),
        (cc, gb, "success"),  # graph-builder waits for both connectors to succeed
        (ct, gb, "success"),
        (gb, gt, "success"),  # gnn-trainer waits for graph-builder
    }
    steps = {s["name"]: s for s in body["steps"]}
    assert steps[cc]["collections_written"] == ["btc_candles_5m_2024_06"]
    assert steps[ct]["collections_written"] == ["btc_trades_2024_06"]
    assert steps[gb]["collections_read"] == ["btc_candles_5m_2024_06", "btc_trades_2024_06"]
    assert steps[gb]["collections_written"] == ["btc_graph_2024_06"]
    assert steps[gt]["collections_read"] == ["btc_graph_2024_06"]
    assert steps[gt]["collections_written"] == ["gnn_model_btc_2024_06"]
    assert sorted(steps[gb]["depends_on"]) == sorted([cc, ct])
    assert all(e["reason"] for e in body["edges"])
    assert body["warnings"] == []


def test_it_infers_the_realtime_graph_with_ready_edges(api):
    body = api.post("/api/queues/", payload("realtime-pipeline"), format="json").json()
    lc, lt, cc, ct, gb, gi, vz = [s["name"] for s in body["steps"]]
    assert _edges(body) == {
        (cc, lc, "ready"),
        (ct, lt, "ready"),
        (cc, gb, "ready"),  # streaming upstreams: wait until they run, not until they end
        (ct, gb, "ready"),
        (gb, gi, "ready"),
        (gb, vz, "ready"),
    }
    steps = {s["name"]: s for s in body["steps"]}
    assert steps[cc]["collections_written"] == ["btc_ws_candles_1m_2024_08_01"]
    assert steps[ct]["collections_written"] == ["btc_ws_trades_2024_08_01"]
    assert all(s["streaming"] for s in body["steps"])


def test_it_warns_about_inputs_no_step_writes(api):
    data = payload("historical-pipeline")
    data["requests"][4]["collection_inputs"].append("eth_trades_2024_06")
    response = api.post("/api/queues/", data, format="json")
    assert response.status_code == 201
    (warning,) = response.json()["warnings"]
    assert "eth_trades_2024_06" in warning and "requests[4]" in warning


def test_it_adds_explicit_depends_on_edges(api):
    data = payload("historical-pipeline")
    data["requests"][1]["name"] = "trades"
    data["requests"][0]["depends_on"] = ["trades"]
    body = api.post("/api/queues/", data, format="json").json()
    edge = next(e for e in body["edges"] if e["downstream"] == "loader-producer-api-candles-5m" and e["upstream"] == "trades")
    assert edge["kind"] == "success" and edge["reason"] == "depends_on"


def test_it_names_the_steps_of_a_cycle(api):
    data = payload("historical-pipeline")
    data["requests"][4]["depends_on"] = ["gnn-trainer-gnn-train"]
    response = api.post("/api/queues/", data, format="json")
    assert response.status_code == 400
    (message,) = response.json()["requests"]
    assert "cycle" in message.lower() and "graph-builder-gnn-graph" in message


def _chain(length: int) -> dict:
    """A streaming payload whose steps each depend on the one before: the deepest graph per step."""
    requests = [{"target": LP, "type": "ws_trades", "name": "s0"}]
    requests += [{"target": LP, "type": "ws_trades", "name": f"s{i}", "depends_on": [f"s{i - 1}"]} for i in range(1, length)]
    return {"symbol": "BTCUSDT", "requests": requests}


def test_it_refuses_more_steps_than_the_cap_with_a_clear_message(api):
    """Issue #10 §4 (step cap): above MAX_STEPS_PER_QUEUE (default 100) the payload is a 400 on `requests`."""
    response = api.post("/api/queues/", _chain(101), format="json")
    assert response.status_code == 400, response.content
    (message,) = response.json()["requests"]
    assert "101" in message and "100" in message and "MAX_STEPS_PER_QUEUE" in message
    assert api.post("/api/queues/", _chain(100), format="json").status_code == 201


def test_it_answers_a_1200_step_chain_with_400_not_500(api):
    """Issue #10 §4 (RecursionError): a ~1,200-step dependency chain was a RecursionError, i.e. a 500."""
    response = api.post("/api/queues/", _chain(1200), format="json")
    assert response.status_code == 400
    assert "requests" in response.json()


def test_it_validates_a_1200_step_chain_when_the_cap_is_raised(settings):
    """Issue #10 §4 (iterative cycle check): with the cap raised, a long chain still validates (no recursion)."""
    from queues.contract import parse_payload

    settings.MAX_STEPS_PER_QUEUE = 2000
    spec = parse_payload(_chain(1200))
    assert len(spec.steps) == 1200 and len(spec.edges) == 1199


def test_it_names_a_cycle_closing_a_long_chain(settings):
    """Issue #10 §4 (iterative cycle check): a cycle at the end of a 1,500-step chain is found and named."""
    from queues.contract import PayloadError, parse_payload

    settings.MAX_STEPS_PER_QUEUE = 2000
    data = _chain(1500)
    data["requests"][0]["depends_on"] = ["s1499"]
    with pytest.raises(PayloadError) as raised:
        parse_payload(data)
    (message,) = raised.value.errors["requests"]
    assert "cycle" in message.lower() and "s0 → s1 →" in message and "s1499 → s0" in message
