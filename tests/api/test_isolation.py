"""Generated from the OpenAPI document: every operation refuses a caller without
a token, an outsider (admin of another organization) gets 404 for everything of
this organization, and a viewer cannot write."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import pytest
from django.test import Client

from deployments.models import Deployment
from tests.api.conftest import api_for
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware

if TYPE_CHECKING:
    # django-stubs' name for what the test client returns (no runtime class).
    from django.test.client import _MonkeyPatchedWSGIResponse as TestResponse

SAMPLE = {"org": "acme", "product": "widget", "identifier": "dev-1", "name": "main"}
PUBLIC = {"/api/v1/openapi.json", "/api/v1/docs"}


def _document(client: Client) -> dict[str, Any]:
    document: dict[str, Any] = client.get("/api/v1/openapi.json").json()
    return document


def _operations(client: Client) -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, item in _document(client)["paths"].items() for method in item]


def _example(schema: dict[str, Any], document: dict[str, Any]) -> Any:
    """A minimal valid value for a JSON schema: enough to get past input
    validation, so that what answers is the access check."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _example(document["components"]["schemas"][name], document)
    if "anyOf" in schema:
        return _example(schema["anyOf"][0], document)
    kind: Any = schema.get("type")
    if kind == "object":
        return {
            k: _example(v, document) for k, v in schema.get("properties", {}).items() if k in schema.get("required", [])
        }
    return {"string": "sample", "integer": 1, "number": 1, "boolean": False, "array": []}.get(kind, None)


def _body(client: Client, method: str, path: str) -> str:
    document = _document(client)
    content = document["paths"][path][method.lower()].get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    return json.dumps(_example(schema, document) if schema else {})


def _url(path: str, tenant: Tenant) -> str:
    values = {**SAMPLE, "uuid": Deployment.objects.get(name="main").firmware.uuid}
    return re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), "x")), path)


def _call(client: Client, method: str, path: str, tenant: Tenant, token: str | None) -> TestResponse:
    headers: dict[str, Any] = {"HTTP_AUTHORIZATION": f"token {token}"} if token else {}
    body = _body(client, method, path)
    return client.generic(method, _url(path, tenant), body, content_type="application/json", **headers)


@pytest.fixture
def world(tenant: Tenant) -> Tenant:
    firmware = make_firmware(tenant.product, "2.0.0")
    Deployment.objects.create(org=tenant.org, product=tenant.product, name="main", firmware=firmware)
    make_device(tenant.product, "dev-1")
    return tenant


@pytest.mark.django_db
def test_it_requires_a_token_everywhere(world: Tenant, client: Client) -> None:
    for method, path in _operations(client):
        if path in PUBLIC:
            continue
        response = _call(client, method, path, world, None)
        assert response.status_code == 401, (method, path)


@pytest.mark.django_db
def test_it_hides_this_organization_from_an_outsider(world: Tenant, client: Client) -> None:
    token = api_for(world.outsider).token
    scoped = [(m, p) for m, p in _operations(client) if "{org}" in p]
    assert len(scoped) > 10
    for method, path in scoped:
        response = _call(client, method, path, world, token)
        assert response.status_code == 404, (method, path, response.status_code, response.content[:200])


@pytest.mark.django_db
def test_it_refuses_every_write_to_a_viewer(world: Tenant, client: Client) -> None:
    token = api_for(world.viewer).token
    writes = [(m, p) for m, p in _operations(client) if "{org}" in p and m != "GET"]
    for method, path in writes:
        response = _call(client, method, path, world, token)
        assert response.status_code == 403, (method, path, response.status_code, response.content[:200])
        assert "role" in response.json()["errors"]["detail"]
