"""Rollout outcomes against real hub processes and nerves_hub_link-shaped
devices: two hub restarts (kill -9) cut updates short and the breaker stays
closed; an operator clearing the penalty box has the update pushed at once; a
product's extensions change reaches a connected device without a reconnect.

With services (PostgreSQL and Redis) a Celery worker runs the orchestrator; in
embedded mode each hub process runs it itself. The backstop is set to ten
minutes: whatever arrives within the test's deadlines came from the action,
not from the periodic run."""

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
from devices.models import Device
from firmware.models import Firmware
from nerveshub.tenancy import services as tenancy
from tests.conftest import HubProcess, Tenant, services_available
from tests.deployments.conftest import make_firmware
from tests.devices.conftest import wait_until
from tests.support.hub import database_url_for_children
from tests.support.nhl_client import DEFAULT_FW, NHLDevice
from tests.support.rollout_sim import Cluster, server_env

HUB_ENV = {"ROLLOUT_BACKSTOP_SECONDS": "600"}


@pytest.fixture
def start_hub(live_hub: Callable[..., HubProcess], tmp_path: Path) -> Iterator[Callable[[], HubProcess]]:
    """Hub processes, plus (with services) a Celery worker for the orchestrator."""
    cluster = None
    if services_available():
        env = server_env(database_url_for_children(), os.environ["REDIS_URL"], str(settings.DATA_DIR), 600)
        cluster = Cluster(tmp_path, env)
        cluster.wait_worker_ready(cluster.start_worker("w0"))
    try:
        yield lambda: live_hub(HUB_ENV)
    finally:
        if cluster is not None:
            cluster.stop()
            print(cluster.logs())


def _kill(hub: HubProcess) -> None:
    """kill -9: the process's sockets die with it and nothing is recorded."""
    hub.process.kill()
    hub.process.wait(10)


def _api(hub: HubProcess, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> int:
    request = urllib.request.Request(
        f"{hub.http_url}/api/v1{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status)


def _setup(tenant: Tenant, **deployment_fields: Any) -> tuple[Firmware, Deployment, str, str]:
    target = make_firmware(tenant.product, "2.0.0", architecture=DEFAULT_FW["nerves_fw_architecture"])
    deployment = Deployment.objects.create(
        org=tenant.org, product=tenant.product, name="stable", firmware=target, is_active=True, **deployment_fields
    )
    _, issued = device_services.create_product_secret("test", tenant.product)
    return target, deployment, issued.key, issued.secret


def _on_target(firmware: Firmware) -> dict[str, str]:
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


async def _download(device: NHLDevice) -> None:
    await device.push("device", "status_update", {"status": "received"})
    await device.push("device", "status_update", {"status": "started"})
    await device.push("device", "fwup_progress", {"value": 50, "stage": "downloading"})


async def _reconnect(device: NHLDevice, url: str, firmware: dict[str, str] | None = None) -> None:
    await device.close()
    device.url = url
    if firmware is not None:
        device.firmware = firmware
    await device.connect(timeout=30)


def test_two_hub_restarts_do_not_trip_the_breaker(start_hub: Callable[[], HubProcess], tenant: Tenant) -> None:
    # given: the breaker's defaults (20 % of at least 10), five devices, one of
    # which fails every update (penalty box after its fourth failure)
    target, deployment, key, secret = _setup(
        tenant, concurrent_updates=5, penalty_attempts=4, penalty_rate_attempts=100
    )
    names = ("fails", "fast-1", "fast-2", "slow-1", "slow-2")
    # Registered beforehand: a first connect's registration can deadlock with
    # the orchestrator's claim on PostgreSQL (noted, not this test's subject).
    for name in names:
        device_services.create_device("test", tenant.product, name)
    hub = start_hub()
    devices = {
        name: NHLDevice(url=hub.ws_url, identifier=name, key=key, secret=secret, device_api_version="2.1.0")
        for name in names
    }
    slow = [devices["slow-1"], devices["slow-2"]]

    async def scenario() -> None:
        for device in devices.values():
            await device.connect(timeout=30)
        # the failing device fails four times and is penalty-boxed
        failing = devices["fails"]
        failed = DeviceUpdate.objects.filter(device__identifier="fails", status=UpdateStatus.FAILED)
        for attempt in range(1, 5):
            await failing.next_event("update", timeout=30)
            await failing.push("device", "status_update", {"status": "received"})
            await failing.push("device", "status_update", {"status": "failed", "reason": "FWUP error"})
            # n=attempt binds this iteration's count; mypy cannot infer a lambda with a
            # parameter the expected Callable[[], bool] lacks, though the call is valid.
            await _until(lambda n=attempt: failed.count() == n)  # type: ignore[misc]
        # two devices update and reboot onto the target
        for name in ("fast-1", "fast-2"):
            device = devices[name]
            await device.next_event("update", timeout=30)
            await _download(device)
            await device.push("device", "status_update", {"status": "completed"})
            await _reconnect(device, hub.ws_url, _on_target(target))
        # two are downloading when the hub is killed, twice; each time they come
        # back on the next hub process without the update (the download died
        # with the process that served it)
        current = hub
        for device in slow:
            await device.next_event("update", timeout=30)
            await _download(device)
        for _restart in range(2):
            await _until(lambda: all(_status(d.identifier) == UpdateStatus.DOWNLOADING for d in slow))
            _kill(current)
            current = await asyncio.to_thread(start_hub)
            for device in devices.values():
                await _reconnect(device, current.ws_url)
            # then: each is offered the update again on its new socket
            for device in slow:
                await device.next_event("update", timeout=30)
                await _download(device)
        for device in slow:
            await device.push("device", "status_update", {"status": "completed"})
            await _reconnect(device, current.ws_url, _on_target(target))
        await _until(lambda: DeviceUpdate.objects.filter(status=UpdateStatus.SUCCEEDED).count() == 4)
        for device in devices.values():
            await device.close()
            device.assert_no_violations()

    asyncio.run(scenario())
    # then: four devices updated, one failed: the breaker did not trip, and
    # nothing the restarts did is recorded as a failure
    deployment.refresh_from_db()
    assert deployment.paused_at is None, deployment.paused_reason
    rows = DeviceUpdate.objects.filter(deployment=deployment)
    assert rows.filter(status=UpdateStatus.EXPIRED).count() == 0
    assert rows.filter(status=UpdateStatus.FAILED).count() == 4
    assert set(rows.filter(status=UpdateStatus.SUCCEEDED).values_list("device__identifier", flat=True)) == {
        "fast-1",
        "fast-2",
        "slow-1",
        "slow-2",
    }


def test_clearing_the_penalty_box_pushes_the_update_at_once(
    start_hub: Callable[[], HubProcess], tenant: Tenant
) -> None:
    # given: a connected device in the penalty box after three failures
    _, deployment, key, secret = _setup(tenant, penalty_rate_attempts=100)
    row = device_services.create_device("test", tenant.product, "boxed")
    Device.objects.filter(pk=row.pk).update(penalty_box_until=timezone.now() + timedelta(hours=24))
    token = tenancy.create_api_token("test", tenant.manager, "tests").clear
    hub = start_hub()
    device = NHLDevice(url=hub.ws_url, identifier="boxed", key=key, secret=secret, device_api_version="2.1.0")

    async def scenario() -> list[Any]:
        await device.connect(timeout=30)
        with pytest.raises(TimeoutError):
            await device.next_event("update", timeout=2)
        # when: an operator clears its penalty box
        path = f"/orgs/{tenant.org.name}/products/{tenant.product.name}/devices/boxed/penalty"
        assert await asyncio.to_thread(_api, hub, token, "DELETE", path) == 204
        # then: the update comes now, not at the next backstop run (10 min)
        update = await device.next_event("update", timeout=30)
        await device.close()
        return update

    update = asyncio.run(scenario())
    assert update[4]["firmware_meta"]["uuid"] == deployment.firmware.uuid
    device.assert_no_violations()


def test_a_product_extensions_change_reaches_a_connected_device(
    start_hub: Callable[[], HubProcess], tenant: Tenant
) -> None:
    # given: the product allows health only; the device is connected with it attached
    tenant.product.extensions = ["health"]
    tenant.product.save()
    _, issued = device_services.create_product_secret("test", tenant.product)
    token = tenancy.create_api_token("test", tenant.manager, "tests").clear
    hub = start_hub()
    device = NHLDevice(url=hub.ws_url, identifier="ext", key=issued.key, secret=issued.secret)
    path = f"/orgs/{tenant.org.name}/products/{tenant.product.name}"

    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        await device.connect(timeout=30)
        assert (await device.next_event("extensions", timeout=10))[3] == "health:check"
        # when: a manager allows geo too
        assert await asyncio.to_thread(_api, hub, token, "PATCH", path, {"extensions": ["health", "geo"]}) == 200
        # then: the device is told to attach it, and once it has, it is asked
        # for its location
        attach = await device.next_event("attach", timeout=10)
        device.attach_refs["geo"] = await device.push("extensions", "geo:attached", {})
        request = await device.next_event("geo:location:request", timeout=10)
        # when: health is taken away
        assert await asyncio.to_thread(_api, hub, token, "PATCH", path, {"extensions": ["geo"]}) == 200
        # then: the device is told to detach it; its answer is not replied to
        detach = await device.next_event("detach", timeout=10)
        await device.push("extensions", "health:detached", {})
        await device.heartbeat()
        await device.close()
        return attach, request, detach

    attach, request, detach = asyncio.run(scenario())
    assert attach[2:] == ["extensions", "attach", {"extensions": ["geo"]}]
    assert request[2] == "extensions"
    assert detach[2:] == ["extensions", "detach", {"extensions": ["health"]}]
    device.assert_no_violations()
    wait_until(lambda: Device.objects.filter(identifier="ext", socket_channel="").exists())
