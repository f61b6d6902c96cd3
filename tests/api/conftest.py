from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.test import Client

from nerveshub.tenancy import services as tenancy
from tests.conftest import Tenant


@dataclass
class ApiClient:
    client: Client
    token: str

    def _headers(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"token {self.token}"}

    def get(self, path: str, **params):
        return self.client.get("/api/v1" + path, params, **self._headers())

    def post(self, path: str, body=None):
        return self.client.post("/api/v1" + path, body or {}, content_type="application/json", **self._headers())

    def patch(self, path: str, body):
        return self.client.patch("/api/v1" + path, body, content_type="application/json", **self._headers())

    def delete(self, path: str):
        return self.client.delete("/api/v1" + path, **self._headers())


def api_for(user) -> ApiClient:
    return ApiClient(Client(), tenancy.create_api_token("test", user, "tests").clear)


@pytest.fixture
def as_admin(tenant: Tenant):
    return api_for(tenant.admin)


@pytest.fixture
def as_manager(tenant: Tenant):
    return api_for(tenant.manager)


@pytest.fixture
def as_viewer(tenant: Tenant):
    return api_for(tenant.viewer)


@pytest.fixture
def as_outsider(tenant: Tenant):
    return api_for(tenant.outsider)
