"""Token authentication, error shapes, organizations and products."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import APIToken, AuditEvent, Product
from tests.api.conftest import ApiClient
from tests.conftest import Tenant


@pytest.mark.django_db
@pytest.mark.parametrize("scheme", ["token", "Token", "Bearer", "bearer"])
def test_it_accepts_token_and_bearer_schemes(tenant: Tenant, scheme: str) -> None:
    token = tenancy.create_api_token("test", tenant.viewer).clear
    response = Client().get("/api/v1/users/me", HTTP_AUTHORIZATION=f"{scheme} {token}")
    assert response.status_code == 200
    assert response.json() == {"username": "victor", "email": "victor@example.com"}


@pytest.mark.django_db
@pytest.mark.parametrize("header", [None, "token", "token nhu_wrong", "Basic dXNlcjpwYXNz", "nhu_bare"])
def test_it_refuses_missing_or_wrong_tokens(tenant: Tenant, header: str | None) -> None:
    kwargs: dict[str, Any] = {"HTTP_AUTHORIZATION": header} if header else {}
    response = Client().get("/api/v1/orgs", **kwargs)
    assert response.status_code == 401
    assert response.json() == {"errors": {"detail": "missing or invalid API token"}}


@pytest.mark.django_db
def test_it_refuses_a_revoked_token_and_records_last_use(tenant: Tenant) -> None:
    issued = tenancy.create_api_token("test", tenant.viewer)
    assert Client().get("/api/v1/orgs", HTTP_AUTHORIZATION=f"token {issued.clear}").status_code == 200
    assert APIToken.objects.get(pk=issued.token.pk).last_used_at is not None
    tenancy.revoke_api_token("test", issued.token)
    assert Client().get("/api/v1/orgs", HTTP_AUTHORIZATION=f"token {issued.clear}").status_code == 401


@pytest.mark.django_db
def test_it_lists_only_the_users_organizations(as_viewer: ApiClient, as_outsider: ApiClient) -> None:
    assert as_viewer.get("/orgs").json() == [{"name": "acme", "role": "view"}]
    assert as_outsider.get("/orgs").json() == [{"name": "globex", "role": "admin"}]


@pytest.mark.django_db
def test_it_creates_updates_and_deletes_products(tenant: Tenant, as_manager: ApiClient, as_admin: ApiClient) -> None:
    # when
    created = as_manager.post("/orgs/acme/products", {"name": "gizmo", "description": "a gizmo"})
    patched = as_manager.patch("/orgs/acme/products/gizmo", {"extensions": ["health", "geo"]})
    refused = as_manager.delete("/orgs/acme/products/gizmo")
    deleted = as_admin.delete("/orgs/acme/products/gizmo")
    # then
    assert created.status_code == 201 and created.json()["description"] == "a gizmo"
    assert patched.json()["extensions"] == ["health", "geo"]
    assert refused.status_code == 403
    assert deleted.status_code == 204
    assert not Product.objects.filter(name="gizmo").exists()
    assert AuditEvent.objects.filter(action="product.changed", actor="user:mallory-manager").exists()


@pytest.mark.django_db
def test_it_explains_invalid_input(as_manager: ApiClient) -> None:
    response = as_manager.post("/orgs/acme/products", {"name": "", "colour": "red"})
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert "name" in errors and "colour" in errors
    assert as_manager.patch("/orgs/acme/products/widget", {"extensions": ["telepathy"]}).status_code == 422
    assert as_manager.post("/orgs/acme/products", {"name": "widget"}).status_code == 409


@pytest.mark.django_db
def test_it_refuses_writes_to_a_viewer_and_hides_other_orgs(as_viewer: ApiClient, as_outsider: ApiClient) -> None:
    assert as_viewer.post("/orgs/acme/products", {"name": "x"}).status_code == 403
    response = as_outsider.get("/orgs/acme/products")
    assert response.status_code == 404
    assert response.json() == {"errors": {"detail": "organization 'acme' not found"}}


@pytest.mark.django_db
def test_it_serves_an_openapi_document(client: Client) -> None:
    document = client.get("/api/v1/openapi.json").json()
    assert document["info"]["title"] == "NervesHub API"
    assert "/api/v1/orgs/{org}/products/{product}/devices" in document["paths"]


@pytest.mark.django_db
def test_it_sets_the_poll_interval_of_a_product_within_its_bounds(
    tenant: Tenant, as_manager: ApiClient, as_viewer: ApiClient
) -> None:
    # when
    patched = as_manager.patch("/orgs/acme/products/widget", {"poll_interval_seconds": 600})
    # then
    assert patched.status_code == 200 and patched.json()["poll_interval_seconds"] == 600
    assert Product.objects.get(pk=tenant.product.pk).poll_interval_seconds == 600
    for hostile in (5, 10**12, -1, "soon"):
        assert as_manager.patch("/orgs/acme/products/widget", {"poll_interval_seconds": hostile}).status_code == 422
    assert as_viewer.patch("/orgs/acme/products/widget", {"poll_interval_seconds": 60}).status_code == 403
    assert Product.objects.get(pk=tenant.product.pk).poll_interval_seconds == 600


@pytest.mark.django_db
def test_it_sets_the_health_limits_of_a_product(tenant: Tenant, as_manager: ApiClient, as_viewer: ApiClient) -> None:
    # when: a manager sets the CPU temperature limits
    patched = as_manager.patch("/orgs/acme/products/widget", {"health_thresholds": {"cpu_temp": [70, 85]}})
    # then: stored and answered
    assert patched.status_code == 200 and patched.json()["health_thresholds"] == {"cpu_temp": [70, 85]}
    assert Product.objects.get(pk=tenant.product.pk).health_thresholds == {"cpu_temp": [70, 85]}
    # hostile or wrong limits are refused with a reason, and nothing changes
    for hostile in (
        {"cpu_temp": [90, 80]},
        {"cpu_temp": [1]},
        {"cpu_temp": ["hot", "hotter"]},
        {"": [1, 2]},
        {"x" * 500: [1, 2]},
        [70, 85],
        {f"m{i}": [1, 2] for i in range(1000)},
    ):
        refused = as_manager.patch("/orgs/acme/products/widget", {"health_thresholds": hostile})
        assert refused.status_code == 422, (hostile, refused.status_code)
    assert as_viewer.patch("/orgs/acme/products/widget", {"health_thresholds": {}}).status_code == 403
    assert Product.objects.get(pk=tenant.product.pk).health_thresholds == {"cpu_temp": [70, 85]}
