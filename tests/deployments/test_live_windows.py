"""Maintenance windows and trust preflight against a real hub process and
nerves_hub_link-shaped devices: nothing is pushed before the window opens and
the update comes when it does (on the real clock: the window opens at the
next whole minute, so this waits up to 70 s); a device that was never sent
the firmware's signing key is not pushed under refuse and is under warn.

With services (PostgreSQL and Redis) a Celery worker and beat run the
orchestrator; in embedded mode the hub process runs it and its backstop
itself. The backstop runs every 5 s: it is what wakes the rollout when the
window opens."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from deployments.models import Deployment, FwupKeysSent, Preflight
from devices import services as device_services
from firmware.models import Firmware, SigningKey
from nerveshub.tenancy import services as tenancy
from tests.conftest import HubProcess, Tenant, services_available
from tests.deployments.conftest import make_firmware
from tests.support.fwup import generate_keypair
from tests.support.hub import database_url_for_children
from tests.support.nhl_client import DEFAULT_FW, NHLDevice
from tests.support.rollout_sim import Cluster, server_env

BACKSTOP = "5"


@pytest.fixture
def hub(live_hub: Callable[..., HubProcess], tmp_path: Path) -> Iterator[HubProcess]:
    cluster = None
    if services_available():
        env = server_env(database_url_for_children(), os.environ["REDIS_URL"], str(settings.DATA_DIR), int(BACKSTOP))
        cluster = Cluster(tmp_path, env)
        cluster.wait_worker_ready(cluster.start_worker("w0"))
        cluster.start_beat()
    try:
        yield live_hub({"ROLLOUT_BACKSTOP_SECONDS": BACKSTOP})
    finally:
        if cluster is not None:
            cluster.stop()
            print(cluster.logs())


def _deployment(tenant: Tenant, **fields: Any) -> tuple[Deployment, str, str]:
    target = make_firmware(tenant.product, "2.0.0", architecture=DEFAULT_FW["nerves_fw_architecture"])
    key = SigningKey.objects.create(org=tenant.org, name="release", key=generate_keypair().public)
    Firmware.objects.filter(pk=target.pk).update(signing_key=key)
    deployment = Deployment.objects.create(
        org=tenant.org, product=tenant.product, name="stable", firmware=target, is_active=True, **fields
    )
    _, issued = device_services.create_product_secret("test", tenant.product)
    return deployment, issued.key, issued.secret


def _device(hub: HubProcess, tenant: Tenant, name: str, key: str, secret: str, **fields: Any) -> NHLDevice:
    device_services.create_device("test", tenant.product, name)
    return NHLDevice(url=hub.ws_url, identifier=name, key=key, secret=secret, device_api_version="2.1.0", **fields)


def _api(hub: HubProcess, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"{hub.http_url}/api/v1{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_outside_the_window_nothing_is_pushed_and_the_update_comes_when_it_opens(
    hub: HubProcess, tenant: Tenant
) -> None:
    # given: a window that opens at the next whole minute at least 10 s away
    now = datetime.now(UTC)
    opens = (now + timedelta(seconds=70)).replace(second=0, microsecond=0)
    closes = opens + timedelta(minutes=10)
    window = f"daily {opens:%H:%M}-{closes:%H:%M} UTC"
    _, key, secret = _deployment(tenant, windows=[window])
    device = _device(hub, tenant, "night-owl", key, secret)

    async def scenario() -> tuple[float, list[Any]]:
        await device.connect(timeout=30)
        # then: nothing while the window is closed (the backstop ran several times)
        quiet = opens.timestamp() - time.time() - 2
        with pytest.raises(TimeoutError):
            await device.next_event("update", timeout=quiet)
        # and the update once it opens, within a backstop period or so
        update = await device.next_event("update", timeout=40)
        arrived = time.time()
        await device.close()
        return arrived, update

    arrived, update = asyncio.run(scenario())
    assert arrived >= opens.timestamp()
    assert arrived - opens.timestamp() < 20
    assert update[4]["firmware_meta"]["version"] == "2.0.0"
    device.assert_no_violations()


def test_a_device_without_the_signing_key_is_not_pushed_under_refuse_and_is_under_warn(
    hub: HubProcess, tenant: Tenant
) -> None:
    # given: a refusing deployment; one device asks for the org's keys on
    # connect (the hub sends them), the other has keys of its own
    _, key, secret = _deployment(tenant, preflight=Preflight.REFUSE)
    trusting = _device(hub, tenant, "trusting", key, secret)
    keyless = _device(hub, tenant, "keyless", key, secret, request_keys=False)
    token = tenancy.create_api_token("test", tenant.manager, "tests").clear
    path = f"/orgs/{tenant.org.name}/products/{tenant.product.name}/deployments/stable"

    async def scenario() -> dict[str, Any]:
        await trusting.connect(timeout=30)
        await keyless.connect(timeout=30)
        # then: the device that was sent the key gets the update; the other does not
        await trusting.next_event("update", timeout=30)
        with pytest.raises(TimeoutError):
            await keyless.next_event("update", timeout=float(BACKSTOP) * 2)
        status, report = await asyncio.to_thread(_api, hub, token, "GET", path + "/preflight")
        assert status == 200
        # when: the operator accepts the risk
        status, changed = await asyncio.to_thread(_api, hub, token, "PATCH", path, {"preflight": "warn"})
        assert status == 200, changed
        # then: it is pushed too
        await keyless.next_event("update", timeout=30)
        await trusting.close()
        await keyless.close()
        return dict(report)

    report = asyncio.run(scenario())
    assert report["refusing"] == 1
    assert report["devices"] == [{"identifier": "keyless", "reasons": ["does not have the signing key release"]}]
    release = SigningKey.objects.get(org=tenant.org, name="release")
    assert FwupKeysSent.objects.filter(device__identifier="trusting", key=release.key).exists()
    assert not FwupKeysSent.objects.filter(device__identifier="keyless").exists()
    for device in (trusting, keyless):
        device.assert_no_violations()
