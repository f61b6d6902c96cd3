"""Maintenance windows, trust preflight and products' built-in keys through
the API: what is accepted, what is refused with a reason, and who may."""

from __future__ import annotations

import pytest

from deployments.models import Deployment, Preflight
from firmware.models import Firmware, SigningKey
from tests.api.conftest import ApiClient
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware
from tests.support.fwup import generate_keypair

pytestmark = pytest.mark.django_db

DEPLOYMENTS = "/orgs/acme/products/widget/deployments"
PRODUCT = "/orgs/acme/products/widget"


@pytest.fixture
def signed(tenant: Tenant) -> Deployment:
    key = SigningKey.objects.create(org=tenant.org, name="release", key=generate_keypair().public)
    firmware = make_firmware(tenant.product, "2.0.0")
    Firmware.objects.filter(pk=firmware.pk).update(signing_key=key)
    make_device(tenant.product, "keyless")
    return Deployment.objects.create(org=tenant.org, product=tenant.product, name="main", firmware=firmware)


def test_it_creates_and_changes_windows_and_the_preflight_mode(
    tenant: Tenant, signed: Deployment, as_manager: ApiClient
) -> None:
    # when
    created = as_manager.post(
        DEPLOYMENTS,
        {
            "name": "nightly",
            "firmware": signed.firmware.uuid,
            "windows": ["mon-fri 01:00-05:00 Europe/Berlin"],
            "preflight": "refuse",
        },
    )
    changed = as_manager.patch(DEPLOYMENTS + "/nightly", {"windows": ["sat,sun 22:00-02:00 America/New_York"]})
    cleared = as_manager.patch(DEPLOYMENTS + "/nightly", {"windows": []})
    # then
    assert created.status_code == 201, created.content
    assert created.json()["windows"] == ["mon-fri 01:00-05:00 Europe/Berlin"]
    assert created.json()["preflight"] == "refuse"
    assert changed.json()["windows"] == ["sat,sun 22:00-02:00 America/New_York"]
    assert cleared.json()["windows"] == [] and cleared.json()["window_note"] == ""
    assert Deployment.objects.get(name="nightly").preflight == Preflight.REFUSE


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        ("mon-fri 01:00-05:00 Europe/Atlantis", "unknown time zone 'Europe/Atlantis'"),
        ("01:00-05:00 Europe/Berlin", "no days given"),
        ("mon 02:00-02:00 UTC", "the range 02:00-02:00 is empty"),
    ],
)
def test_a_bad_window_is_a_422_with_the_reason(
    signed: Deployment, as_manager: ApiClient, window: str, reason: str
) -> None:
    response = as_manager.patch(DEPLOYMENTS + "/main", {"windows": [window]})
    assert response.status_code == 422
    assert reason in response.content.decode()
    assert Deployment.objects.get(pk=signed.pk).windows == []


def test_a_bad_preflight_mode_is_a_422(signed: Deployment, as_manager: ApiClient) -> None:
    assert as_manager.patch(DEPLOYMENTS + "/main", {"preflight": "ignore"}).status_code == 422
    assert as_manager.patch(DEPLOYMENTS + "/main", {"windows": "mon 01:00-02:00 UTC"}).status_code == 422


def test_activation_warns_or_refuses_as_the_deployment_says(signed: Deployment, as_manager: ApiClient) -> None:
    # given: refuse
    Deployment.objects.filter(pk=signed.pk).update(preflight=Preflight.REFUSE)
    # when
    refused = as_manager.post(DEPLOYMENTS + "/main/activate")
    # then
    assert refused.status_code == 422
    assert "Not activated: 1 of 1 matching device(s) would refuse this firmware" in refused.content.decode()
    assert not Deployment.objects.get(pk=signed.pk).is_active
    # given: warn
    Deployment.objects.filter(pk=signed.pk).update(preflight=Preflight.WARN)
    # when
    warned = as_manager.post(DEPLOYMENTS + "/main/activate")
    # then
    assert warned.status_code == 200
    assert warned.json()["is_active"]
    assert warned.json()["preflight_warning"].startswith("1 of 1 matching device(s) would refuse this firmware")


def test_the_preflight_report_lists_devices_and_reasons(
    signed: Deployment, as_viewer: ApiClient, as_outsider: ApiClient
) -> None:
    report = as_viewer.get(DEPLOYMENTS + "/main/preflight")
    assert report.status_code == 200
    assert report.json() == {
        "mode": "warn",
        "checked": 1,
        "refusing": 1,
        "devices": [{"identifier": "keyless", "reasons": ["does not have the signing key release"]}],
    }
    assert as_outsider.get(DEPLOYMENTS + "/main/preflight").status_code == 404


def test_lesser_roles_cannot_change_windows_or_activate(
    signed: Deployment, as_viewer: ApiClient, as_outsider: ApiClient, tenant: Tenant
) -> None:
    body = {"windows": ["daily 00:00-24:00 UTC"], "preflight": "refuse"}
    assert as_viewer.patch(DEPLOYMENTS + "/main", body).status_code == 403
    assert as_outsider.patch(DEPLOYMENTS + "/main", body).status_code == 404
    assert as_viewer.post(DEPLOYMENTS + "/main/activate").status_code == 403
    assert Deployment.objects.get(pk=signed.pk).windows == []


def test_a_product_names_its_built_in_keys(
    tenant: Tenant, signed: Deployment, as_manager: ApiClient, as_viewer: ApiClient, other_tenant: Tenant
) -> None:
    SigningKey.objects.create(org=other_tenant.org, name="theirs", key=generate_keypair().public)
    # when
    set_keys = as_manager.patch(PRODUCT, {"builtin_keys": ["release"]})
    foreign = as_manager.patch(PRODUCT, {"builtin_keys": ["theirs"]})
    by_viewer = as_viewer.patch(PRODUCT, {"builtin_keys": []})
    # then
    assert set_keys.status_code == 200 and set_keys.json()["builtin_keys"] == ["release"]
    assert foreign.status_code == 422 and "no signing key named theirs" in foreign.content.decode()
    assert by_viewer.status_code == 403
    assert list(tenant.product.builtin_keys.values_list("name", flat=True)) == ["release"]
    assert as_viewer.get(DEPLOYMENTS + "/main/preflight").json()["refusing"] == 0


def test_the_nerveshub_api_switch_answers_a_refusing_preflight_with_422(tenant: Tenant, signed: Deployment) -> None:
    from tests.api.nhapi.conftest import tool_for

    # given
    Deployment.objects.filter(pk=signed.pk).update(preflight=Preflight.REFUSE)
    # when
    response = tool_for(tenant.manager).put(PRODUCT + "/deployments/main", {"deployment": {"state": "on"}})
    # then
    assert response.status_code == 422
    assert "would refuse this firmware" in response.content.decode()
    assert not Deployment.objects.get(pk=signed.pk).is_active
