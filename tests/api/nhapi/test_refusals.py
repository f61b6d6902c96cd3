"""Outsiders are refused on every route of /api/, and hostile input gets a 4xx
with a reason, never a 5xx. The routes are read from the served OpenAPI
document, so a new route is covered the day it is added."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from nerveshub.tenancy.models import Membership
from tests.api.nhapi.conftest import ORG, PRODUCT, Tool, tool_for
from tests.conftest import Tenant
from tests.deployments.conftest import make_device

pytestmark = pytest.mark.django_db

SIGN_IN = ("/users/login", "/users/auth", "/auth/cli_session", "/auth/cli_session/x")
VALUES = {"org": "acme", "product": "widget", "identifier": "dev-1", "name": "main", "who": "victor"}


def _operations() -> list[tuple[str, str]]:
    document = Client().get("/api/openapi.json").json()
    found = []
    for path, item in document["paths"].items():
        for method in item:
            concrete = re.sub(r"\{(\w+)\}", lambda m: VALUES.get(m.group(1), "x"), path)
            found.append((method.upper(), concrete.removeprefix("/api")))
    return found


def _is_org_route(path: str) -> bool:
    return path.startswith("/orgs/")


# A valid body for each writing route (by the end of its path), so that the
# access check, not the body's validation, decides the answer.
BODIES: dict[str, Any] = {
    "/users": {"username": "oscar", "role": "view"},
    "/users/invite": {"email": "x@example.com", "role": "view"},
    "/users/victor": {"role": "view"},
    "/keys": {"name": "k", "key": "x"},
    "/ca_certificates": {"cert": "x"},
    "/products": {"name": "p"},
    "/products/widget": {"name": "p"},
    "/devices": {"identifier": "d"},
    "/certificates": {"cert": "x"},
    "/deployments": {"name": "d", "firmware": "f"},
    "/deployments/main": {"deployment": {"state": "on"}},
    "/move": {"new_org_name": "acme", "new_product_name": "widget"},
    "/upgrade": {"uuid": "f"},
    "/code": {"body": "1 + 1"},
}


def _call(tool: Tool, method: str, path: str) -> Any:
    if method == "GET":
        return tool.get(path)
    suffix = max((s for s in BODIES if path.endswith(s)), key=len, default=None)
    return tool.send(method, path, BODIES[suffix] if suffix else {})


@pytest.fixture
def device(tenant: Tenant) -> None:
    make_device(tenant.product, "dev-1")


def test_the_document_lists_every_route_and_no_v1_route() -> None:
    operations = _operations()
    assert len(operations) >= 45
    assert not [p for _m, p in operations if p.startswith("/v1")]
    assert Client().get("/api/v1/openapi.json").status_code == 200


def test_without_a_token_every_route_but_sign_in_answers_401(tenant: Tenant) -> None:
    anonymous = tool_for(None)
    for method, path in _operations():
        if path in SIGN_IN:
            continue
        answer = anonymous.send(method, path, {}) if method != "GET" else anonymous.get(path)
        assert answer.status_code == 401, (method, path)
        assert answer.json() == {"errors": {"detail": "missing or invalid API token"}}, (method, path)


def test_another_organizations_member_gets_404_everywhere(tenant: Tenant, device: None, outsider_tool: Tool) -> None:
    for method, path in _operations():
        if not _is_org_route(path):
            continue
        answer = _call(outsider_tool, method, path)
        assert answer.status_code == 404, (method, path, answer.content)
        assert "acme" in answer.json()["errors"]["detail"], (method, path)
        # The same answer as for an organization that does not exist.
        missing = _call(outsider_tool, method, path.replace("/orgs/acme", "/orgs/acme-none"))
        assert missing.json()["errors"]["detail"] == answer.json()["errors"]["detail"].replace("acme", "acme-none")


def test_a_viewer_may_read_but_not_write(tenant: Tenant, device: None, viewer_tool: Tool) -> None:
    for method, path in _operations():
        if not _is_org_route(path):
            continue
        answer = _call(viewer_tool, method, path)
        if method == "GET":
            assert answer.status_code in (200, 401, 404), (method, path)
            if answer.status_code == 401:
                # Only the verification token, which is half of registering a CA.
                assert path.endswith("/verification_token"), path
        else:
            assert answer.status_code == 401, (method, path, answer.content)
            assert "role" in answer.json()["errors"]["detail"]


def test_a_removed_member_is_refused_with_the_token_they_kept(tenant: Tenant, device: None) -> None:
    tool = tool_for(tenant.admin)
    assert tool.get(PRODUCT + "/devices/dev-1").status_code == 200
    Membership.objects.filter(user=tenant.admin, org=tenant.org).delete()
    assert tool.get(PRODUCT + "/devices/dev-1").status_code == 404
    assert tool.get("/orgs").json() == {"data": []}


HOSTILE: list[tuple[str, str, Any]] = [
    ("GET", PRODUCT + "/devices?pagination[page]=99999999999999999999999", None),
    ("GET", PRODUCT + "/devices?pagination[page_size]=-1", None),
    ("GET", PRODUCT + "/devices?pagination[page]=1e400", None),
    ("GET", PRODUCT + "/devices?filters[connection]=sometimes", None),
    ("GET", PRODUCT + "/devices?filters[identifier]=%00", None),
    ("POST", PRODUCT + "/devices", {"identifier": "a\x00b"}),
    ("POST", PRODUCT + "/devices", {"identifier": "x" * 10_000}),
    ("POST", PRODUCT + "/devices", {"identifier": "ok", "tags": [1, 2]}),
    ("POST", PRODUCT + "/devices", {"identifier": "spaced out"}),
    ("POST", PRODUCT + "/devices", {"identifier": "\u202edev"}),
    ("POST", PRODUCT + "/devices", ["not", "an", "object"]),
    ("PUT", PRODUCT + "/devices/dev-1", {"updates_enabled": "maybe"}),
    ("PUT", PRODUCT + "/devices/dev-1", {"device": {"description": ["a list"]}}),
    ("POST", PRODUCT + "/deployments", {"name": "d", "firmware": "f" * 37}),
    ("POST", PRODUCT + "/deployments", {"name": "d", "firmware": "nope", "is_active": 10**30}),
    ("PUT", PRODUCT + "/deployments/main", {"deployment": "on"}),
    ("POST", ORG + "/ca_certificates", {"cert": "=" * 100, "verification_cert": "A"}),
    ("POST", ORG + "/ca_certificates", {"cert": "\u00e9t\u00e9", "verification_cert": "\u00e9"}),
    ("POST", ORG + "/ca_certificates", {"cert": 12345}),
    ("POST", ORG + "/keys", {"name": "k", "key": "A" * 999}),
    ("POST", ORG + "/keys", {"name": "", "key": "x"}),
    ("POST", ORG + "/users", {"username": "victor", "role": 7}),
    ("POST", ORG + "/products", {"product": {"name": "\x00"}}),
    ("PUT", ORG + "/products/widget", {"name": "y" * 1000}),
    ("POST", PRODUCT + "/devices/dev-1/upgrade", {"uuid": ["a", "list"]}),
    ("POST", PRODUCT + "/devices/dev-1/upgrade", {"uuid": "\x00" * 100}),
    ("POST", PRODUCT + "/devices/dev-1/upgrade", {}),
    ("POST", PRODUCT + "/devices/dev-1/code", {}),
    ("POST", PRODUCT + "/devices/dev-1/code", {"body": 42}),
    ("POST", PRODUCT + "/devices/dev-1/code", {"body": "x" * 200_000}),
    ("POST", PRODUCT + "/devices/dev-1/code", {"body": "   "}),
]


def test_hostile_input_gets_a_4xx_with_a_reason(tenant: Tenant, device: None, admin_tool: Tool) -> None:
    for method, path, body in HOSTILE:
        if method == "GET":
            answer = admin_tool.client.get("/api" + path, HTTP_AUTHORIZATION=f"token {admin_tool.token}")
        else:
            answer = admin_tool.send(method, path, body)
        assert 400 <= answer.status_code < 500, (method, path, body, answer.status_code, answer.content[:300])
        errors = answer.json()["errors"]
        assert errors and all(errors.values()), (method, path, errors)


def test_bodies_that_are_not_json_are_refused(tenant: Tenant, admin_tool: Tool) -> None:
    token = f"token {admin_tool.token}"
    for body, content_type in ((b"{", "application/json"), (b"\xff\xfe", "application/json"), (b"a=b", "text/plain")):
        answer = admin_tool.client.post(
            "/api" + PRODUCT + "/devices", body, content_type=content_type, HTTP_AUTHORIZATION=token
        )
        assert 400 <= answer.status_code < 500, (body, answer.status_code)
