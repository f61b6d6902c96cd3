"""Soak and revert against a real hub process and nerves_hub_link-shaped
devices: an update soaks after the device returns on the new firmware, an
auto-revert during the soak fails it, a return on the new firmware after the
soak time ends it as succeeded, and a revert through the API pushes the
device the firmware it ran before.

With services (PostgreSQL and Redis) a Celery worker runs the orchestrator; in
embedded mode the hub process runs it itself."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from deployments.models import Deployment, DeviceUpdate, UpdateStatus
from devices import services as device_services
from firmware.models import Firmware
from nerveshub.tenancy import services as tenancy
from tests.conftest import HubProcess, Tenant, services_available
from tests.deployments.conftest import make_firmware
from tests.support.hub import database_url_for_children
from tests.support.nhl_client import DEFAULT_FW, NHLDevice
from tests.support.rollout_sim import Cluster, server_env


@pytest.fixture
def start_hub(live_hub: Callable[..., HubProcess], tmp_path: Path) -> Iterator[Callable[[], HubProcess]]:
    cluster = None
    if services_available():
        env = server_env(database_url_for_children(), os.environ["REDIS_URL"], str(settings.DATA_DIR), 600)
        cluster = Cluster(tmp_path, env)
        cluster.wait_worker_ready(cluster.start_worker("w0"))
    try:
        yield lambda: live_hub({"ROLLOUT_BACKSTOP_SECONDS": "600"})
    finally:
        if cluster is not None:
            cluster.stop()


def _running(firmware: Firmware) -> dict[str, str]:
    return {**DEFAULT_FW, "nerves_fw_uuid": firmware.uuid or "", "nerves_fw_version": firmware.version}


async def _in_thread(function: Callable[[], Any]) -> Any:
    def call() -> Any:
        try:
            return function()
        finally:
            connection.close()

    return await asyncio.to_thread(call)


async def _until(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await _in_thread(check):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)


def _status(identifier: str) -> str:
    update = DeviceUpdate.objects.filter(device__identifier=identifier).order_by("-pk").first()
    return update.status if update is not None else ""


def _post(hub: HubProcess, token: str, path: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{hub.http_url}/api/v1{path}", data=b"", method="POST", headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status), json.loads(response.read())


def test_a_soaked_rollout_fails_a_revert_and_is_reverted(start_hub: Callable[[], HubProcess], tenant: Tenant) -> None:
    # given: two devices on 1.0.0, a 30-minute soak, a breaker that does not trip
    arch = DEFAULT_FW["nerves_fw_architecture"]
    old = make_firmware(tenant.product, "1.0.0", architecture=arch)
    target = make_firmware(tenant.product, "2.0.0", architecture=arch)
    Deployment.objects.create(
        org=tenant.org,
        product=tenant.product,
        name="stable",
        firmware=target,
        is_active=True,
        concurrent_updates=2,
        soak_minutes=30,
        breaker_failure_percent=100,
    )
    _, issued = device_services.create_product_secret("test", tenant.product)
    for name in ("good", "bad"):
        device_services.create_device("test", tenant.product, name)
    token = tenancy.create_api_token("test", tenant.manager, "tests").clear
    hub = start_hub()
    devices = {
        name: NHLDevice(url=hub.ws_url, identifier=name, key=issued.key, secret=issued.secret, firmware=_running(old))
        for name in ("good", "bad")
    }
    base = f"/orgs/{tenant.org.name}/products/{tenant.product.name}/deployments/stable"

    async def scenario() -> list[Any]:
        for device in devices.values():
            await device.connect(timeout=30)
        # both update and come back on the new firmware: soaking
        for device in devices.values():
            await device.next_event("update", timeout=30)
            await device.push("device", "status_update", {"status": "received"})
            await device.push("device", "fwup_progress", {"value": 100, "stage": "updating"})
            await device.push("device", "status_update", {"status": "completed"})
            await device.close()
            device.firmware = _running(target)
            await device.connect(timeout=30)
        await _until(lambda: {_status("good"), _status("bad")} == {UpdateStatus.SOAKING})
        # one auto-reverts during its soak: back on 1.0.0, saying so
        bad = devices["bad"]
        await bad.close()
        bad.firmware, bad.auto_reverted = _running(old), True
        await bad.connect(timeout=30)
        # (its next attempt may be claimed at once: only the penalty box holds it back)
        await _until(lambda: DeviceUpdate.objects.filter(device__identifier="bad", status=UpdateStatus.FAILED).exists())
        # the other reconnects on the new firmware once its soak time is up
        await _in_thread(
            lambda: DeviceUpdate.objects.filter(device__identifier="good").update(
                soak_until=timezone.now() - timedelta(seconds=1)
            )
        )
        good = devices["good"]
        await good.close()
        await good.connect(timeout=30)
        await _until(lambda: _status("good") == UpdateStatus.SUCCEEDED)
        # when: an operator pauses and reverts
        assert (await asyncio.to_thread(_post, hub, token, base + "/pause"))[0] == 200
        code, body = await asyncio.to_thread(_post, hub, token, base + "/revert")
        assert code == 201 and body["devices"] == 1, body
        # then: the updated device is pushed the firmware it ran before
        update = await good.next_event("update", timeout=30)
        for device in devices.values():
            await device.close()
            device.assert_no_violations()
        return update

    update = asyncio.run(scenario())
    assert update[4]["firmware_meta"]["uuid"] == old.uuid
    bad_row = DeviceUpdate.objects.get(device__identifier="bad", firmware=target, status=UpdateStatus.FAILED)
    assert "soak" in bad_row.reason
    assert Deployment.objects.get(name="stable revert to 1.0.0").reverts.name == "stable"  # type: ignore[union-attr]
