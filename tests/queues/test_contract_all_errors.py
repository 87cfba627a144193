"""Issue #15 §10: the start page and the API report every problem at once — field errors and graph errors
(unknown `depends_on`, cycles) together, without a false "No step named X" for a step that failed itself."""
from __future__ import annotations

import pytest

from queues.contract import PayloadError, parse_payload
from tests.queues.factories import payload

pytestmark = pytest.mark.django_db


def errors_of(data: dict) -> dict[str, list[str]]:
    with pytest.raises(PayloadError) as caught:
        parse_payload(data)
    return caught.value.errors


def with_field_error_and_cycle() -> dict:
    data = payload()
    data["symbol"] = "not a symbol!"
    data["requests"][0]["interval"] = "7m"  # a field error in one step
    data["requests"][4]["name"] = "graph"
    data["requests"][5]["name"] = "train"
    data["requests"][4]["depends_on"] = ["train"]  # train reads graph's output: a cycle
    return data


def test_it_reports_field_errors_and_a_cycle_together():
    """§10 field errors AND a dependency cycle in one answer (the cycle was reported only once fields were fixed)."""
    errors = errors_of(with_field_error_and_cycle())
    assert "symbol" in errors and "requests[0].interval" in errors
    assert any("Dependency cycle" in message and "graph" in message and "train" in message
               for message in errors.get("requests", []))


def test_it_reports_an_unknown_depends_on_beside_field_errors():
    """§10 an unknown `depends_on` beside field errors of other steps."""
    data = payload()
    data["requests"][1]["type"] = "no_such_type"
    data["requests"][5]["depends_on"] = ["nobody"]
    errors = errors_of(data)
    assert "requests[1].type" in errors
    assert errors["requests[5].depends_on"] == ["No step named 'nobody' in this queue."]


def test_it_does_not_call_a_step_that_failed_itself_unknown():
    """§10 no false "No step named X" when step X is there but has errors of its own; other graph errors still found."""
    data = payload()
    data["requests"][0]["name"] = "loader"
    data["requests"][0]["interval"] = "7m"  # the step named loader fails to parse
    data["requests"][2]["depends_on"] = ["loader"]
    data["requests"][3]["depends_on"] = ["ghost"]
    errors = errors_of(data)
    assert "requests[0].interval" in errors
    assert "requests[2].depends_on" not in errors
    assert errors["requests[3].depends_on"] == ["No step named 'ghost' in this queue."]


def test_it_finds_a_cycle_among_steps_after_one_that_failed():
    """§10 the graph checks run over the steps that parsed even when an earlier request failed (indexes keep their place)."""
    data = payload()
    data["requests"][0] = {"target": "no-such-target"}
    data["requests"][2]["name"] = "a"
    data["requests"][3]["name"] = "b"
    data["requests"][2]["depends_on"] = ["b"]
    data["requests"][3]["depends_on"] = ["a"]
    errors = errors_of(data)
    assert "requests[0].target" in errors
    assert any("Dependency cycle: a → b → a." in m or "Dependency cycle: b → a → b." in m for m in errors["requests"])


def test_it_answers_the_api_with_all_problems_in_one_400(api):
    """§10 the API's 400 carries every field message and the graph error together."""
    response = api.post("/api/queues/", with_field_error_and_cycle(), format="json")
    assert response.status_code == 400
    body = response.json()
    assert "symbol" in body and "requests[0].interval" in body
    assert any("Dependency cycle" in message for message in body["requests"])
