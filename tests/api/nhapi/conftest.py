"""Requests shaped the way NervesHub's own tools (nerves_hub_cli 2.1.0: the
`mix nerves_hub.*` tasks and the escript) send them to /api/: JSON bodies,
`Authorization: token nhu_…`, certificates as base64 of their PEM, firmware as
a multipart `firmware` part."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import caches
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from nerveshub.tenancy import services as tenancy
from tests.conftest import Tenant

if TYPE_CHECKING:
    # django-stubs' name for what the test client returns (no runtime class).
    from django.test.client import _MonkeyPatchedWSGIResponse as TestResponse

ORG = "/orgs/acme"
PRODUCT = ORG + "/products/widget"


def b64(pem: bytes | str) -> str:
    return base64.b64encode(pem.encode() if isinstance(pem, str) else pem).decode()


@dataclass
class Tool:
    """One of NervesHub's tools, holding a token (or none)."""

    client: Client
    token: str | None

    def _headers(self) -> dict[str, Any]:
        return {"HTTP_AUTHORIZATION": f"token {self.token}"} if self.token else {}

    def get(self, path: str, params: dict[str, Any] | None = None) -> TestResponse:
        return self.client.get("/api" + path, params or {}, **self._headers())

    def send(self, method: str, path: str, body: Any = None) -> TestResponse:
        data = "" if body is None else json.dumps(body)
        call = getattr(self.client, method.lower())
        return call("/api" + path, data, content_type="application/json", **self._headers())  # type: ignore[no-any-return]

    def post(self, path: str, body: Any = None) -> TestResponse:
        return self.send("POST", path, body)

    def put(self, path: str, body: Any) -> TestResponse:
        return self.send("PUT", path, body)

    def delete(self, path: str) -> TestResponse:
        # The tools send DELETE with an empty body.
        return self.send("DELETE", path)

    def upload(self, path: str, data: bytes, name: str = "widget.fw", **fields: str) -> TestResponse:
        body: dict[str, Any] = {"firmware": SimpleUploadedFile(name, data, content_type="application/octet-stream")}
        body.update(fields)
        return self.client.post("/api" + path, body, **self._headers())


def tool_for(user: User | None) -> Tool:
    return Tool(Client(), tenancy.create_api_token("test", user, "tests").clear if user else None)


@pytest.fixture
def admin_tool(tenant: Tenant) -> Tool:
    return tool_for(tenant.admin)


@pytest.fixture
def manager_tool(tenant: Tenant) -> Tool:
    return tool_for(tenant.manager)


@pytest.fixture
def viewer_tool(tenant: Tenant) -> Tool:
    return tool_for(tenant.viewer)


@pytest.fixture
def outsider_tool(tenant: Tenant) -> Tool:
    return tool_for(tenant.outsider)


@pytest.fixture(autouse=True)
def empty_throttle(settings: Any) -> Iterator[None]:
    # Sign-in counts outlive a test (Redis in the services run): start and end empty.
    # The tenant's four users are created per test: a fast hash (for tests
    # only) keeps that from costing seconds each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.LOGIN_FAILURE_LIMIT = 5
    settings.LOGIN_ADDRESS_FAILURE_LIMIT = 50
    caches["default"].clear()
    yield
    caches["default"].clear()
