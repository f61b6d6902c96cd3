"""Inputs the database cannot take answer 4xx with a JSON error, on SQLite and
PostgreSQL alike (found by tests/api/test_schemathesis.py)."""

from __future__ import annotations

import pytest

from devices.models import Device
from tests.api.conftest import ApiClient
from tests.conftest import Tenant
from tests.deployments.conftest import make_device


@pytest.mark.django_db(transaction=True)
def test_nul_characters_are_refused_in_bodies_queries_and_paths(tenant: Tenant, as_admin: ApiClient) -> None:
    make_device(tenant.product, "dev-1")
    created = as_admin.post("/orgs/acme/products/widget/devices", {"identifier": "ok", "description": "a\x00b"})
    patched = as_admin.patch("/orgs/acme/products/widget/devices/dev-1", {"tags": ["a\x00"]})
    queried = as_admin.get("/orgs/acme/products/widget/devices", search="dev\x00")
    in_path = as_admin.get("/orgs/ac%00me/products")
    assert created.status_code == 400 and patched.status_code == 400
    assert queried.status_code == 400 and "NUL" in queried.json()["errors"]["detail"]
    assert in_path.status_code in (404, 422) and "detail" in in_path.json()["errors"]
    assert not Device.objects.filter(identifier="ok").exists()
    assert Device.objects.get(identifier="dev-1").tags == []


@pytest.mark.django_db
def test_ids_out_of_range_or_in_other_scripts_are_not_found(tenant: Tenant, as_admin: ApiClient) -> None:
    assert as_admin.get("/orgs/acme/products/widget/firmwares/%C2%B2").status_code == 404
    assert as_admin.get("/orgs/acme/products/widget/firmwares/" + "9" * 30).status_code == 404
    assert as_admin.delete("/users/me/tokens/" + "9" * 30).status_code == 404
    assert as_admin.delete("/users/me/tokens/0").status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    "params",
    [
        {"page": "9" * 20},
        {"page": "9" * 5000},
        {"page": str(2**31)},
        {"page": "1e400"},
        {"page": "²"},
        {"page_size": "9" * 20},
        {"page": "0"},
    ],
)
def test_huge_or_odd_page_numbers_are_refused_with_422(
    tenant: Tenant, as_admin: ApiClient, params: dict[str, str]
) -> None:
    make_device(tenant.product, "dev-1")
    # when
    response = as_admin.get("/orgs/acme/products/widget/devices", **params)
    # then: the field is named, never a 500
    assert response.status_code == 422, response.content
    assert set(response.json()["errors"]) == set(params)


@pytest.mark.django_db
def test_the_last_page_number_still_answers(tenant: Tenant, as_admin: ApiClient) -> None:
    response = as_admin.get("/orgs/acme/products/widget/devices", page=str(2**31 - 1), page_size="500")
    assert response.status_code == 200
    assert response.json()["devices"] == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "identifier",
    ["dev\x07bell", "dev\x1b[2J", "dev\u202egnp.exe", "dev\u200bone", "dev\u2028one", "dev one", "d" * 201],
)
def test_identifiers_with_control_or_format_characters_are_refused(
    tenant: Tenant, as_admin: ApiClient, identifier: str
) -> None:
    # when
    response = as_admin.post("/orgs/acme/products/widget/devices", {"identifier": identifier})
    # then: the same rule as a device registering itself (devices.models.validate_identifier)
    assert response.status_code == 422, response.content
    assert "identifier" in response.json()["errors"]
    assert not Device.objects.exists()
