"""`nerveshub device update|move|script` and `nerveshub member …` against a
real hub process and a connected nerves_hub_link-shaped device, with the
refusals and exit codes scripts rely on."""

from __future__ import annotations

import asyncio
from typing import Any

from django.contrib.auth.models import User

from deployments.models import DeviceUpdate
from devices import services as device_services
from devices.models import Device, ScriptRun
from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import Membership, Role
from tests.cli.conftest import Cli, Result
from tests.conftest import Tenant
from tests.deployments.conftest import make_firmware
from tests.support.hub import HubLauncher
from tests.support.nhl_client import DEFAULT_FW, NHLDevice

SCOPE = ("--org", "acme", "--product", "widget")


def test_a_manager_updates_runs_code_on_and_moves_a_connected_device(
    live_hub: HubLauncher, tenant: Tenant, cli: Cli
) -> None:
    # given: a connected device and a valid firmware
    firmware = make_firmware(tenant.product, "2.0.0", architecture=DEFAULT_FW["nerves_fw_architecture"])
    tenancy.get_or_create_product("test", tenant.org, "gizmo")
    _, issued = device_services.create_product_secret("test", tenant.product)
    device_services.create_device("test", tenant.product, "SN-1")
    hub = live_hub()
    manager = cli.as_user(tenant.manager, hub.http_url)
    device = NHLDevice(url=hub.ws_url, identifier="SN-1", key=issued.key, secret=issued.secret)

    async def scenario() -> tuple[Result, list[Any], Result, list[Any], Result, Result]:
        await device.connect(timeout=30)
        # when: a firmware is pushed to it
        push = ("device", "update", "SN-1", "--firmware", firmware.uuid or "", *SCOPE)
        updated = await asyncio.to_thread(manager, *push)
        pushed = await device.next_event("update", timeout=30)
        # when: code is run and waited for; the device answers
        waiting = manager.popen("device", "script", "run", "SN-1", "--text", "1 + 1", "--wait", *SCOPE, "--json")
        asked = await device.next_event("scripts/run", timeout=30)
        await device.push("device", "scripts/run", {"ref": asked[4]["ref"], "result": "completed", "return": "2"})
        stdout, stderr = await asyncio.to_thread(waiting.communicate, timeout=60)
        answered = Result(waiting.returncode, stdout, stderr)
        read_again = await asyncio.to_thread(manager, "device", "script", "get", "SN-1", asked[4]["ref"], *SCOPE)
        # when: it is moved to another product
        moved = await asyncio.to_thread(manager, "device", "move", "SN-1", "--to", "gizmo", *SCOPE)
        await device.wait_closed(timeout=30)
        return updated, pushed, answered, asked, read_again, moved

    updated, pushed, answered, asked, read_again, moved = asyncio.run(scenario())
    # then
    assert updated.code == 0, updated.stderr
    assert "2.0.0" in updated.stdout
    assert pushed[4]["firmware_meta"]["uuid"] == firmware.uuid
    assert DeviceUpdate.objects.get(device__identifier="SN-1").deployment_id is None
    assert asked[4]["text"] == "1 + 1"
    assert answered.code == 0, answered.stderr
    assert (answered.json()["status"], answered.json()["return_value"]) == ("completed", "2")
    assert read_again.code == 0 and "return_value: 2" in read_again.stdout
    assert moved.code == 0, moved.stderr
    assert Device.objects.get(identifier="SN-1").product.name == "gizmo"
    device.assert_no_violations()


def test_device_commands_are_refused_with_the_hubs_reason(live_hub: HubLauncher, tenant: Tenant, cli: Cli) -> None:
    # given: an offline device; a viewer, an outsider, and a manager who was removed
    firmware = make_firmware(tenant.product, "2.0.0")
    device_services.create_device("test", tenant.product, "SN-2")
    hub = live_hub()
    manager = cli.as_user(tenant.manager, hub.http_url)
    viewer = cli.as_user(tenant.viewer, hub.http_url)
    outsider = cli.as_user(tenant.outsider, hub.http_url)
    former = User.objects.create_user("former", "former@example.com", "pw")
    Membership.objects.create(org=tenant.org, user=former, role=Role.MANAGE)
    removed = cli.as_user(former, hub.http_url)
    Membership.objects.filter(user=former).delete()
    commands = [
        ("device", "update", "SN-2", "--firmware", firmware.uuid or ""),
        ("device", "script", "run", "SN-2", "--text", "1"),
        ("device", "script", "get", "SN-2", "abc"),
        ("device", "move", "SN-2", "--to", "widget"),
    ]
    # when / then
    offline = manager("device", "update", "SN-2", "--firmware", firmware.uuid or "", *SCOPE)
    assert offline.code == 1 and "HTTP 409" in offline.stderr and "not queued" in offline.stderr
    no_code = manager("device", "script", "run", "SN-2", *SCOPE)
    assert no_code.code == 2 and "--text" in no_code.stderr
    for command in commands:
        assert "HTTP 403" in viewer(*command, *SCOPE).stderr, command
        assert "HTTP 404" in outsider(*command, *SCOPE).stderr, command
        assert "HTTP 404" in removed(*command, *SCOPE).stderr, command
    assert not DeviceUpdate.objects.exists() and not ScriptRun.objects.exists()


def test_an_admin_manages_members_and_keeps_one_admin(live_hub: HubLauncher, tenant: Tenant, cli: Cli) -> None:
    # given
    User.objects.create_user("newcomer", "new@example.com", "pw")
    hub = live_hub()
    admin = cli.as_user(tenant.admin, hub.http_url)
    manager = cli.as_user(tenant.manager, hub.http_url)
    outsider = cli.as_user(tenant.outsider, hub.http_url)
    org = ("--org", "acme")
    # when
    added = admin("member", "add", "newcomer", "--role", "view", *org)
    role = admin("member", "role", "newcomer", "manage", *org)
    listed = admin("member", "list", *org, "--json")
    invited = admin("member", "add", "friend@example.com", "--role", "view", "--invite", *org)
    removed = admin("member", "remove", "newcomer", *org)
    last_admin = admin("member", "role", "alice", "view", *org)
    by_manager = manager("member", "add", "newcomer", "--role", "admin", *org)
    by_outsider = outsider("member", "list", *org)
    # then
    assert added.code == 0 and "added newcomer as view" in added.stdout
    assert role.code == 0 and "newcomer is now manage" in role.stdout
    assert {"username": "newcomer", "email": "new@example.com", "role": "manage"} in listed.json()
    assert invited.code == 0 and "/invitations/" in invited.stdout
    assert removed.code == 0
    assert not Membership.objects.filter(user__username="newcomer").exists()
    assert last_admin.code == 1 and "HTTP 409" in last_admin.stderr and "at least one admin" in last_admin.stderr
    assert by_manager.code == 1 and "HTTP 403" in by_manager.stderr
    assert by_outsider.code == 1 and "HTTP 404" in by_outsider.stderr
    assert Membership.objects.get(user=tenant.admin).role == Role.ADMIN
