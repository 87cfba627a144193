"""The payload contract through the API: both seed payloads pass unchanged, every bad input is a 400."""
from __future__ import annotations

import pytest

from queues.models import Queue, QueueRequest, StepDependency
from tests.queues.factories import payload

pytestmark = pytest.mark.django_db

URL = "/api/queues/"


def _with(mutate):
    data = payload("historical-pipeline")
    mutate(data)
    return data


def _set_request(index, **fields):
    def mutate(data):
        for key, value in fields.items():
            if value is None:
                data["requests"][index].pop(key, None)
            else:
                data["requests"][index][key] = value

    return mutate


def _add_depends_on_cycle(data):
    data["requests"][4]["name"] = "graph"
    data["requests"][5]["name"] = "train"
    data["requests"][4]["depends_on"] = ["train"]


BAD_INPUTS = {
    "unknown top-level key": (lambda d: d.update(priority="high"), "priority"),
    "unknown request key": (_set_request(0, colour="red"), "requests[0].colour"),
    "unknown target": (_set_request(0, target="loader-consumer"), "requests[0].target"),
    "unknown type": (_set_request(1, type="api_quotes"), "requests[1].type"),
    "type not taken by target": (_set_request(4, type="api_trades"), "requests[4].type"),
    "field not taken by target": (_set_request(5, source="x_coll"), "requests[5].source"),
    "malformed time_range": (lambda d: d.update(time_range="2024/06/01-2024/06/30"), "time_range"),
    "impossible date": (lambda d: d.update(time_range="2024-02-30:2024-03-01"), "time_range"),
    "reversed time_range": (lambda d: d.update(time_range="2024-06-30:2024-06-01"), "time_range"),
    "missing time_range for api types": (lambda d: d.pop("time_range"), "time_range"),
    "interval contradicting type": (_set_request(0, interval="1h"), "requests[0].interval"),
    "interval for a type without one": (_set_request(1, interval="5m"), "requests[1].interval"),
    "graph-builder without collection_output": (_set_request(4, collection_output=None), "requests[4].collection_output"),
    "gnn_train without model_output": (_set_request(5, model_output=None), "requests[5].model_output"),
    "duplicate step names": (
        lambda d: (d["requests"][0].update(name="load"), d["requests"][1].update(name="load")),
        "requests[1].name",
    ),
    "depends_on a missing step": (_set_request(5, depends_on=["no-such-step"]), "requests[5].depends_on"),
    "dependency cycle": (_add_depends_on_cycle, "requests"),
    "empty requests": (lambda d: d.update(requests=[]), "requests"),
    "requests not a list": (lambda d: d.update(requests={"target": "visualizer"}), "requests"),
    "request not an object": (lambda d: d["requests"].append("loader-producer"), "requests[6]"),
    "missing requests": (lambda d: d.pop("requests"), "requests"),
    "missing symbol": (lambda d: d.pop("symbol"), "symbol"),
    "lower-case garbage symbol": (lambda d: d.update(symbol="btc-usdt"), "symbol"),
    "too long symbol": (lambda d: d.update(symbol="B" * 21), "symbol"),
    "symbol not a string": (lambda d: d.update(symbol=42), "symbol"),
    "queue_id with upper case": (lambda d: d.update(queue_id="My-Queue"), "queue_id"),
    "queue_id too long": (lambda d: d.update(queue_id="q" * 41), "queue_id"),
    "queue_id with underscore": (lambda d: d.update(queue_id="my_queue"), "queue_id"),
    "queue_id ending with dash": (lambda d: d.update(queue_id="my-queue-"), "queue_id"),
    "bad collection name": (_set_request(4, collection_output="bad name!"), "requests[4].collection_output"),
    "requests and microservices both": (lambda d: d.update(microservices=d["requests"]), "microservices"),
    # Issue #10 §4: a pattern ending in `$` also matched a value with a trailing newline.
    "queue_id with a trailing newline": (lambda d: d.update(queue_id="abc\n"), "queue_id"),
    "time_range with a trailing newline": (lambda d: d.update(time_range="2024-06-01:2024-06-30\n"), "time_range"),
    "step name with a trailing newline": (_set_request(0, name="load\n"), "requests[0].name"),
    "collection with a trailing newline": (_set_request(4, collection_output="graph\n"), "requests[4].collection_output"),
    "kafka_topic with a trailing newline": (_set_request(0, kafka_topic="topic\n"), "requests[0].kafka_topic"),
    "image with a trailing newline": (_set_request(0, image="registry.local/streamforge/loader:1\n"), "requests[0].image"),
}


def _assert_nothing_created():
    assert Queue.objects.count() == 0
    assert QueueRequest.objects.count() == 0
    assert StepDependency.objects.count() == 0


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_it_rejects_bad_input_naming_the_field(api, case):
    mutate, path = BAD_INPUTS[case]
    response = api.post(URL, _with(mutate), format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert path in body, body
    assert all(isinstance(messages, list) and messages and all(isinstance(m, str) for m in messages) for messages in body.values())
    _assert_nothing_created()


def test_it_refuses_a_depends_on_name_with_a_trailing_newline_as_malformed(api):
    """Issue #10 §4 (trailing newline): `depends_on` items are checked as step names by full match."""
    response = api.post(URL, _with(_set_request(5, depends_on=["graph-builder-gnn-graph\n"])), format="json")
    assert response.status_code == 400
    assert any("not a valid step name" in m for m in response.json()["requests[5].depends_on"])
    _assert_nothing_created()


def test_it_reports_graph_builder_missing_output_in_the_documented_shape(api):
    response = api.post(URL, _with(_set_request(4, collection_output=None)), format="json")
    assert response.json() == {
        "requests[4].collection_output": ["This field is required for target graph-builder (gnn_graph)."]
    }


def test_it_reports_every_problem_at_once(api):
    def mutate(data):
        data["symbol"] = "x"
        data["requests"][0]["target"] = "nope"
        data["requests"][2]["colour"] = "red"

    body = api.post(URL, _with(mutate), format="json").json()
    assert {"symbol", "requests[0].target", "requests[2].colour"} <= set(body)


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"a string"', b"42", b"null"], ids=["list", "string", "number", "null"])
def test_it_rejects_a_body_that_is_not_an_object(api, raw):
    response = api.generic("POST", URL, raw, content_type="application/json")
    assert response.status_code == 400
    assert "non_field_errors" in response.json()
    _assert_nothing_created()


@pytest.mark.parametrize("raw", [b"{not json", b'{"symbol": "BTCUSDT",', b"\xff\xfe"])
def test_it_rejects_malformed_json(api, raw):
    response = api.generic("POST", URL, raw, content_type="application/json")
    assert response.status_code == 400
    assert "detail" in response.json()
    _assert_nothing_created()


@pytest.mark.parametrize("url", [URL, "/queues/start-pipeline", "/queues/stop"])
def test_it_rejects_json_nested_too_deep_to_parse_with_a_400(api, url):
    """Issue #10 §4 (fuzzing): JSON nested past the parser's recursion limit was a RecursionError, a 500."""
    raw = b'{"symbol": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = api.generic("POST", url, raw, content_type="application/json")
    assert response.status_code == 400
    assert "detail" in response.json()
    _assert_nothing_created()


def test_it_rejects_an_empty_body_naming_the_required_fields(api):
    response = api.generic("POST", URL, b"", content_type="application/json")
    assert response.status_code == 400
    assert {"symbol", "requests"} <= set(response.json())
    _assert_nothing_created()


def test_it_rejects_a_form_encoded_body_without_a_500(api):
    response = api.post(URL, {"symbol": "BTCUSDT"})  # multipart, not JSON
    assert response.status_code == 415
    _assert_nothing_created()


@pytest.mark.parametrize("name", ["historical-pipeline", "realtime-pipeline"])
def test_it_accepts_both_seed_payloads_unchanged(api, name):
    seed = payload(name)
    response = api.post(URL, seed, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    # Submitted and advanced at once (jobs.submission): the steps nothing waits on are launching.
    assert body["status"] == "running"
    roots = set(QueueRequest.objects.filter(queue__queue_id=body["queue_id"], upstream_edges=None)
                .values_list("name", flat=True))
    assert roots and len(roots) < len(seed["requests"])
    assert [s["state"] for s in body["steps"]] == ["launching" if s["name"] in roots else "waiting" for s in body["steps"]]
    assert [(s["target"], s["type"]) for s in body["steps"]] == [(r["target"], r["type"]) for r in seed["requests"]]
    queue = Queue.objects.get(queue_id=body["queue_id"])
    assert queue.payload == seed
    assert queue.submitted_by.username == "operator"


def test_it_accepts_the_microservices_alias(api):
    seed = payload("historical-pipeline")
    seed["microservices"] = seed.pop("requests")
    response = api.post(URL, seed, format="json")
    assert response.status_code == 201, response.content
    assert len(response.json()["steps"]) == 6


def test_it_names_alias_paths_under_microservices(api):
    seed = payload("historical-pipeline")
    seed["microservices"] = seed.pop("requests")
    seed["microservices"][4].pop("collection_output")
    body = api.post(URL, seed, format="json").json()
    assert "microservices[4].collection_output" in body


def test_it_upper_cases_the_symbol(api):
    response = api.post(URL, payload("realtime-pipeline", symbol="btcusdt"), format="json")
    assert response.status_code == 201
    assert response.json()["symbol"] == "BTCUSDT"


def test_it_accepts_a_streaming_queue_without_time_range(api):
    data = payload("realtime-pipeline")
    data["time_range"] = None
    data["requests"][4]["collection_inputs"] = ["btc_ws_candles_1m", "btc_ws_trades"]
    response = api.post(URL, data, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["time_range"] is None
    assert body["warnings"] == []
