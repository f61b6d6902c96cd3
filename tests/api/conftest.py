from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from nerveshub.tenancy import services as tenancy
from tests.conftest import Tenant

if TYPE_CHECKING:
    # django-stubs' name for what the test client returns (no runtime class).
    from django.test.client import _MonkeyPatchedWSGIResponse as TestResponse


@dataclass
class ApiClient:
    client: Client
    token: str

    def _headers(self) -> dict[str, Any]:
        return {"HTTP_AUTHORIZATION": f"token {self.token}"}

    def get(self, path: str, **params: Any) -> TestResponse:
        return self.client.get("/api/v1" + path, params, **self._headers())

    def post(self, path: str, body: Any = None) -> TestResponse:
        return self.client.post("/api/v1" + path, body or {}, content_type="application/json", **self._headers())

    def patch(self, path: str, body: Any) -> TestResponse:
        return self.client.patch("/api/v1" + path, body, content_type="application/json", **self._headers())

    def delete(self, path: str) -> TestResponse:
        return self.client.delete("/api/v1" + path, **self._headers())


def api_for(user: User) -> ApiClient:
    return ApiClient(Client(), tenancy.create_api_token("test", user, "tests").clear)


@pytest.fixture
def as_admin(tenant: Tenant) -> ApiClient:
    return api_for(tenant.admin)


@pytest.fixture
def as_manager(tenant: Tenant) -> ApiClient:
    return api_for(tenant.manager)


@pytest.fixture
def as_viewer(tenant: Tenant) -> ApiClient:
    return api_for(tenant.viewer)


@pytest.fixture
def as_outsider(tenant: Tenant) -> ApiClient:
    return api_for(tenant.outsider)
