"""/api/v1 device operations beyond create/read/update/delete: a manual update,
support scripts and their results, moving a device to another product; with
the refusals for an outsider, a lesser role and a removed member."""

from __future__ import annotations

import pytest

from deployments.models import DeviceUpdate, UpdateStatus
from devices import scripts
from devices.models import Device, ScriptRun, ScriptRunStatus, SupportScript
from firmware.models import Firmware, FirmwareStatus
from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import AuditEvent, Membership
from tests.api.conftest import ApiClient, api_for
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware

pytestmark = pytest.mark.django_db

DEVICE = "/orgs/acme/products/widget/devices/dev-1"


@pytest.fixture
def device(tenant: Tenant) -> Device:
    return make_device(tenant.product, "dev-1", socket_channel="test.socket#1", device_api_version="2.2.0")


def test_it_pushes_a_chosen_firmware_to_one_device(tenant: Tenant, device: Device, as_manager: ApiClient) -> None:
    # given
    firmware = make_firmware(tenant.product, "2.0.0")
    # when
    answer = as_manager.post(DEVICE + "/update", {"firmware": firmware.uuid})
    # then
    assert answer.status_code == 202, answer.content
    body = answer.json()
    assert (body["firmware"], body["version"], body["status"]) == (firmware.uuid, "2.0.0", "requested")
    update = DeviceUpdate.objects.get(pk=body["id"])
    assert (update.device_id, update.deployment_id) == (device.pk, None)


def test_a_manual_update_is_refused_with_the_reason(tenant: Tenant, device: Device, as_manager: ApiClient) -> None:
    # given
    pending = make_firmware(tenant.product, "2.0.0")
    Firmware.objects.filter(pk=pending.pk).update(status=FirmwareStatus.PENDING)
    valid = make_firmware(tenant.product, "3.0.0")
    DeviceUpdate.objects.create(device=device, firmware=valid, status=UpdateStatus.DOWNLOADING)
    # when / then
    missing = as_manager.post(DEVICE + "/update", {"firmware": "no-such-uuid"})
    assert missing.status_code == 404
    invalid = as_manager.post(DEVICE + "/update", {"firmware": pending.uuid})
    assert invalid.status_code == 409 and "not validated" in invalid.json()["errors"]["detail"]
    busy = as_manager.post(DEVICE + "/update", {"firmware": valid.uuid})
    assert busy.status_code == 409 and "in flight" in busy.json()["errors"]["detail"]


def test_it_runs_a_saved_script_or_text_and_reads_the_result(
    tenant: Tenant, device: Device, as_manager: ApiClient
) -> None:
    # given
    SupportScript.objects.create(org=tenant.org, product=tenant.product, name="uptime", text=":erlang.time()")
    # when
    saved = as_manager.post(DEVICE + "/scripts", {"script": "uptime"})
    ad_hoc = as_manager.post(DEVICE + "/scripts", {"text": "1 + 1", "timeout_ms": 2000})
    # then
    assert (saved.status_code, ad_hoc.status_code) == (202, 202)
    assert saved.json()["script"] == "uptime" and saved.json()["status"] == "pending"
    ref = ad_hoc.json()["ref"]
    run = ScriptRun.objects.get(ref=ref)
    assert (run.text, run.timeout_ms, run.script_id) == ("1 + 1", 2000, None)
    # when: the device answers
    scripts.record_script_result(device.pk, {"ref": ref, "result": "completed", "output": "", "return": "2"})
    result = as_manager.get(DEVICE + f"/scripts/{ref}")
    # then
    assert result.status_code == 200
    assert (result.json()["status"], result.json()["return_value"]) == (ScriptRunStatus.COMPLETED, "2")
    assert as_manager.get(DEVICE + "/scripts/nope").status_code == 404


def test_script_requests_are_checked(tenant: Tenant, device: Device, as_manager: ApiClient) -> None:
    make_device(tenant.product, "dev-old", socket_channel="test.socket#2", device_api_version="2.0.0")
    assert as_manager.post(DEVICE + "/scripts", {}).status_code == 422
    assert as_manager.post(DEVICE + "/scripts", {"script": "a", "text": "b"}).status_code == 422
    assert as_manager.post(DEVICE + "/scripts", {"script": "missing"}).status_code == 404
    assert as_manager.post(DEVICE + "/scripts", {"text": "1", "timeout_ms": 0}).status_code == 422
    assert as_manager.post(DEVICE + "/scripts", {"text": " \n "}).status_code == 422
    assert as_manager.post(DEVICE + "/scripts", {"text": "x" * 200_000}).status_code == 422
    old = as_manager.post("/orgs/acme/products/widget/devices/dev-old/scripts", {"text": "1"})
    assert old.status_code == 409 and "2.1.0" in old.json()["errors"]["detail"]
    assert not ScriptRun.objects.exists()


def test_it_moves_a_device_to_another_product_of_the_organization(
    tenant: Tenant, device: Device, as_manager: ApiClient
) -> None:
    # given
    tenancy.get_or_create_product("test", tenant.org, "gizmo")
    # when
    answer = as_manager.post(DEVICE + "/move", {"product": "gizmo"})
    # then
    assert answer.status_code == 200, answer.content
    assert Device.objects.get(pk=device.pk).product.name == "gizmo"
    assert as_manager.get("/orgs/acme/products/gizmo/devices/dev-1").status_code == 200
    assert AuditEvent.objects.filter(action="device.moved").exists()
    again = as_manager.post("/orgs/acme/products/gizmo/devices/dev-1/move", {"product": "gizmo"})
    assert again.status_code == 409
    assert as_manager.post("/orgs/acme/products/gizmo/devices/dev-1/move", {"product": "none"}).status_code == 404


def test_another_organizations_product_is_not_a_move_target(
    tenant: Tenant, other_tenant: Tenant, device: Device, as_admin: ApiClient
) -> None:
    # "globex" is no product of acme: the move stays within the organization
    assert as_admin.post(DEVICE + "/move", {"product": "gadget"}).status_code == 404
    assert Device.objects.get(pk=device.pk).product_id == tenant.product.pk


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/update", {"firmware": "x"}),
        ("post", "/scripts", {"text": "1"}),
        ("get", "/scripts/abc", None),
        ("post", "/move", {"product": "widget"}),
    ],
)
def test_each_operation_refuses_outsiders_viewers_and_removed_members(
    tenant: Tenant, device: Device, method: str, path: str, body: dict[str, str] | None
) -> None:
    # given
    removed = api_for(tenant.manager)
    Membership.objects.filter(user=tenant.manager, org=tenant.org).delete()

    def call(client: ApiClient) -> int:
        answer = client.get(DEVICE + path) if method == "get" else client.post(DEVICE + path, body)
        return int(answer.status_code)

    # when / then
    assert call(api_for(tenant.outsider)) == 404
    assert call(api_for(tenant.viewer)) == 403
    assert call(removed) == 404
    assert not DeviceUpdate.objects.exists() and not ScriptRun.objects.exists()


def test_every_ref_is_one_path_segment_and_one_cli_argument() -> None:
    # base64's "/" would split the result route's path, and a leading "-" (one
    # URL-safe base64 ref in 64) made `nerveshub device script get` read it as an option
    refs = {scripts._new_ref() for _ in range(2000)}
    assert not [r for r in refs if "/" in r or "+" in r or r.startswith("-")]
    assert all(len(r) == 8 for r in refs)
