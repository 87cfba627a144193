"""The OpenAPI schema validates, documents the payload with both seed examples, and the docs need no CDN."""
from __future__ import annotations

import re

import pytest
import yaml
from openapi_spec_validator import validate

from tests.queues.factories import payload

pytestmark = pytest.mark.django_db


@pytest.fixture
def spec(api) -> dict:
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json() if response["Content-Type"].startswith("application/vnd.oai.openapi+json") else yaml.safe_load(response.content)


def test_it_serves_a_valid_openapi_3_schema(spec):
    assert spec["openapi"].startswith("3.")
    validate(spec)


def test_it_offers_both_seed_payloads_as_create_examples(spec):
    for path in ("/api/queues/", "/queues/start-pipeline"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        examples = body["examples"]
        values = [e["value"] for e in examples.values()]
        assert payload("historical-pipeline") in values and payload("realtime-pipeline") in values


def test_it_documents_the_payload_fields(spec):
    schemas = spec["components"]["schemas"]
    ref = spec["paths"]["/api/queues/"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    doc = schemas[ref.rsplit("/", 1)[1]]
    assert {"symbol", "time_range", "requests", "queue_id", "microservices"} <= set(doc["properties"])
    assert set(doc["required"]) == {"symbol", "requests"}
    step = schemas[doc["properties"]["requests"]["items"]["$ref"].rsplit("/", 1)[1]]
    for field in ("target", "type", "name", "depends_on", "interval", "collection_name", "collection_inputs",
                  "collection_output", "model_output", "graph_collection", "inference_interval", "source",
                  "image", "kafka_topic"):
        assert field in step["properties"], field


def test_it_documents_errors_and_deprecations(spec):
    create = spec["paths"]["/api/queues/"]["post"]["responses"]
    assert {"200", "201", "400", "409"} <= set(create)
    for path, method in (("/queues/start-pipeline", "post"), ("/queues/stop", "post"), ("/queues/list", "get")):
        assert spec["paths"][path][method]["deprecated"] is True
    assert "/api/queues/{queue_id}/stop/" in spec["paths"]
    assert spec["paths"]["/api/queues/"]["get"]["parameters"]
    names = {p["name"] for p in spec["paths"]["/api/queues/"]["get"]["parameters"]}
    assert {"status", "symbol", "target", "created_after", "created_before", "page"} <= names
    assert {"tokenAuth", "cookieAuth"} <= set(spec["components"]["securitySchemes"])


@pytest.mark.parametrize("url", ["/api/docs/", "/api/redoc/"])
def test_it_serves_the_docs_without_any_external_host(client, operator, url):
    client.force_login(operator)
    response = client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert "drf_spectacular_sidecar" in html or "/static/" in html
    external = re.findall(r"""(?:src|href)\s*=\s*["']?((?:https?:)?//[^"'\s>]+)""", html)
    assert external == []
    assert "cdn" not in html.lower()


def test_it_serves_the_docs_assets_locally(client, operator):
    client.force_login(operator)
    html = client.get("/api/docs/").content.decode()
    assets = re.findall(r"""(?:src|href)=["'](/static/[^"']+)["']""", html)
    assert any("swagger-ui-bundle" in a for a in assets)
    from django.contrib.staticfiles import finders

    for asset in assets:
        assert finders.find(asset.removeprefix("/static/")), asset
