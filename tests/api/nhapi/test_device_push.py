"""`POST …/devices/:identifier/upgrade` and `…/code` as NervesHub's tools send
them: a manual update and an ad-hoc support script, refused with the reason."""

from __future__ import annotations

import pytest

from deployments.models import DeviceUpdate, UpdateStatus
from devices.models import Device, ScriptRun
from firmware.models import Firmware, FirmwareStatus
from nerveshub.tenancy.models import AuditEvent, Membership
from tests.api.nhapi.conftest import PRODUCT, Tool, tool_for
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware

pytestmark = pytest.mark.django_db

DEVICE = PRODUCT + "/devices/dev-1"


@pytest.fixture
def device(tenant: Tenant) -> Device:
    return make_device(tenant.product, "dev-1", socket_channel="test.socket#1", device_api_version="2.2.0")


def test_upgrade_pushes_the_firmware_and_records_a_manual_update(
    tenant: Tenant, device: Device, manager_tool: Tool
) -> None:
    # given
    firmware = make_firmware(tenant.product, "2.0.0")
    # when
    answer = manager_tool.post(DEVICE + "/upgrade", {"uuid": firmware.uuid})
    # then
    assert answer.status_code == 204, answer.content
    update = DeviceUpdate.objects.get(device=device)
    assert (update.firmware_id, update.deployment_id, update.status) == (firmware.pk, None, UpdateStatus.REQUESTED)
    assert AuditEvent.objects.filter(action="update.requested", actor_user=tenant.manager).exists()


def test_upgrade_refusals_say_why(tenant: Tenant, other_tenant: Tenant, device: Device, manager_tool: Tool) -> None:
    # given
    pending = make_firmware(tenant.product, "2.0.0")
    Firmware.objects.filter(pk=pending.pk).update(status=FirmwareStatus.PENDING)
    foreign = make_firmware(other_tenant.product, "2.0.0")
    make_device(tenant.product, "dev-off", online=False)
    valid = make_firmware(tenant.product, "3.0.0")
    # when / then
    unknown = manager_tool.post(DEVICE + "/upgrade", {"uuid": foreign.uuid})
    assert unknown.status_code == 404 and foreign.uuid in unknown.json()["errors"]["detail"]
    invalid = manager_tool.post(DEVICE + "/upgrade", {"uuid": pending.uuid})
    assert invalid.status_code == 409 and "not validated" in invalid.json()["errors"]["detail"]
    offline = manager_tool.post(PRODUCT + "/devices/dev-off/upgrade", {"uuid": valid.uuid})
    assert offline.status_code == 409 and "not queued" in offline.json()["errors"]["detail"]
    assert manager_tool.post(DEVICE + "/upgrade", {"uuid": valid.uuid}).status_code == 204
    busy = manager_tool.post(DEVICE + "/upgrade", {"uuid": valid.uuid})
    assert busy.status_code == 409 and "in flight" in busy.json()["errors"]["detail"]
    assert DeviceUpdate.objects.count() == 1


def test_upgrade_and_code_need_manage(tenant: Tenant, device: Device, viewer_tool: Tool, outsider_tool: Tool) -> None:
    # given
    firmware = make_firmware(tenant.product, "2.0.0")
    removed = tool_for(tenant.manager)
    Membership.objects.filter(user=tenant.manager, org=tenant.org).delete()
    # when / then
    for tool, status in ((viewer_tool, 401), (outsider_tool, 404), (removed, 404)):
        assert tool.post(DEVICE + "/upgrade", {"uuid": firmware.uuid}).status_code == status
        assert tool.post(DEVICE + "/code", {"body": "1 + 1"}).status_code == status
    assert not DeviceUpdate.objects.exists()
    assert not ScriptRun.objects.exists()


def test_code_runs_the_text_as_a_support_script(tenant: Tenant, device: Device, manager_tool: Tool) -> None:
    # when: the tools' `body`, then the other name
    first = manager_tool.post(DEVICE + "/code", {"body": "IO.puts(:hello)"})
    second = manager_tool.post(DEVICE + "/code", {"code": "Node.self()"})
    # then
    assert (first.status_code, second.status_code) == (204, 204)
    runs = ScriptRun.objects.filter(device=device).order_by("pk")
    assert [(r.text, r.script_id, r.requested_by_id) for r in runs] == [
        ("IO.puts(:hello)", None, tenant.manager.pk),
        ("Node.self()", None, tenant.manager.pk),
    ]
    assert AuditEvent.objects.filter(action="device.script_run").count() == 2


def test_code_refusals_say_why(tenant: Tenant, device: Device, manager_tool: Tool) -> None:
    # given
    make_device(tenant.product, "dev-old", socket_channel="test.socket#2", device_api_version="2.0.0")
    make_device(tenant.product, "dev-off", online=False, device_api_version="2.2.0")
    # when / then
    old = manager_tool.post(PRODUCT + "/devices/dev-old/code", {"body": "1"})
    assert old.status_code == 409 and "2.1.0" in old.json()["errors"]["detail"]
    off = manager_tool.post(PRODUCT + "/devices/dev-off/code", {"body": "1"})
    assert off.status_code == 409 and "offline" in off.json()["errors"]["detail"]
    empty = manager_tool.post(DEVICE + "/code", {})
    assert empty.status_code == 422 and empty.json()["errors"]["body"]
    assert not ScriptRun.objects.exists()
