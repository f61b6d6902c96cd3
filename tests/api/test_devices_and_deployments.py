"""Devices and deployments through the API."""

from __future__ import annotations

import pytest

from deployments.models import Deployment
from devices.models import Device
from tests.api.conftest import ApiClient
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware

DEVICES = "/orgs/acme/products/widget/devices"
DEPLOYMENTS = "/orgs/acme/products/widget/deployments"


@pytest.mark.django_db
def test_it_creates_lists_filters_and_deletes_devices(
    tenant: Tenant, as_manager: ApiClient, as_viewer: ApiClient
) -> None:
    # given
    assert as_manager.post(DEVICES, {"identifier": "dev-1", "tags": ["eu", "beta"]}).status_code == 201
    assert as_manager.post(DEVICES, {"identifier": "dev-2", "tags": ["us"]}).status_code == 201
    # when
    everything = as_viewer.get(DEVICES).json()
    eu = as_viewer.get(DEVICES, tag="eu").json()
    page2 = as_viewer.get(DEVICES, page=2, page_size=1).json()
    # then
    assert everything["total"] == 2
    assert [d["identifier"] for d in eu["devices"]] == ["dev-1"]
    assert [d["identifier"] for d in page2["devices"]] == ["dev-2"]
    assert as_manager.post(DEVICES, {"identifier": "dev-1"}).status_code == 409
    assert as_manager.delete(DEVICES + "/dev-1").status_code == 204
    assert as_viewer.get(DEVICES + "/dev-1").status_code == 404
    assert Device.objects.get(identifier="dev-1").deleted_at is not None


@pytest.mark.django_db
def test_it_updates_tags_description_and_updates_flag(tenant: Tenant, as_manager: ApiClient) -> None:
    as_manager.post(DEVICES, {"identifier": "dev-1", "tags": ["a"]})
    body = as_manager.patch(DEVICES + "/dev-1", {"tags": ["b", "c"], "description": "roof", "updates_enabled": False})
    assert body.status_code == 200
    assert body.json()["tags"] == ["b", "c"]
    assert body.json()["description"] == "roof"
    assert body.json()["updates_enabled"] is False
    assert as_manager.patch(DEVICES + "/dev-1", {"tags": ["two words"]}).status_code == 422


@pytest.mark.django_db
def test_it_refuses_device_writes_to_a_viewer(tenant: Tenant, as_manager: ApiClient, as_viewer: ApiClient) -> None:
    as_manager.post(DEVICES, {"identifier": "dev-1"})
    assert as_viewer.post(DEVICES, {"identifier": "dev-2"}).status_code == 403
    assert as_viewer.patch(DEVICES + "/dev-1", {"tags": ["x"]}).status_code == 403
    assert as_viewer.post(DEVICES + "/dev-1/reboot").status_code == 403
    assert as_viewer.delete(DEVICES + "/dev-1").status_code == 403


@pytest.mark.django_db
def test_it_manages_a_deployment_lifecycle(tenant: Tenant, as_manager: ApiClient, as_viewer: ApiClient) -> None:
    # given
    firmware = make_firmware(tenant.product, "2.0.0")
    make_device(tenant.product, "d1", version="1.0.0")
    # when
    created = as_manager.post(
        DEPLOYMENTS,
        {"name": "main", "firmware": firmware.uuid, "conditions": {"version": "~> 1.0"}, "concurrent_updates": 5},
    )
    activated = as_manager.post(DEPLOYMENTS + "/main/activate")
    status = as_viewer.get(DEPLOYMENTS + "/main/status").json()
    # then
    assert created.status_code == 201 and created.json()["is_active"] is False
    assert activated.json()["is_active"] is True
    assert status["counts"]["members"] == 1
    assert Device.objects.get(identifier="d1").deployment == Deployment.objects.get(name="main")
    assert as_manager.post(DEPLOYMENTS + "/main/pause").json()["paused"] is True
    assert as_manager.patch(DEPLOYMENTS + "/main", {"conditions": {"version": ">= 1.0"}}).status_code == 422
    assert as_manager.patch(DEPLOYMENTS + "/main", {"concurrent_updates": 0}).status_code == 422


@pytest.mark.django_db
def test_it_refuses_firmware_that_is_not_valid_or_not_in_the_product(
    tenant: Tenant, other_tenant: Tenant, as_manager: ApiClient
) -> None:
    foreign = make_firmware(other_tenant.product, "2.0.0")
    response = as_manager.post(DEPLOYMENTS, {"name": "x", "firmware": foreign.uuid})
    assert response.status_code == 404
    assert not Deployment.objects.exists()
