"""Issue #15 §9: the OpenAPI descriptions keep their text in ReDoc and Swagger UI, which render them as
Markdown with HTML: `api_candles_<interval>` must not lose `<interval>` as an unknown tag."""
from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.django_db

CODE_SPAN = re.compile(r"`[^`]*`")
TAG_LIKE = re.compile(r"<[A-Za-z/!]")


def descriptions(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                yield value
            else:
                yield from descriptions(value)
    elif isinstance(node, list):
        for value in node:
            yield from descriptions(value)


def test_it_leaves_no_raw_angle_brackets_in_descriptions(api):
    """§9 catalogue text intact: no description holds `<word` outside a code span (it would be eaten as HTML)."""
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    texts = list(descriptions(schema))
    assert texts, "the schema has descriptions"
    raw = [text for text in texts if TAG_LIKE.search(CODE_SPAN.sub("", text))]
    assert raw == []
    joined = "\n".join(texts)
    assert "api_candles_&lt;interval&gt;" in joined or "`api_candles_<interval>`" in joined
    assert "Token &lt;key&gt;" in schema["info"]["description"] or "`Authorization: Token <key>`" in schema["info"]["description"]
