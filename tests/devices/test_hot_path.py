"""A returning device's one-statement connect (devicelink/hotpath.py) across two
hub processes: what each process keeps (the product keys it has read) and what
the connect reads with the device (its deployment) never hides a change made
elsewhere. The stated bound is the next connect: every connect checks the key
and reads the deployment in its own statement.

Each test first connects the device through both processes, so that both have
read the key and know the device: the fast path is what answers afterwards.
"""

from __future__ import annotations

import pytest
import websockets
from django.db import connection

from deployments.models import Deployment
from devices import services
from devices.models import Device, ProductSharedSecret
from tests.deployments.conftest import make_firmware
from tests.devices.conftest import Credentials, run
from tests.support.hub import HubLauncher, HubProcess
from tests.support.nhl_client import DEFAULT_FW

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the fast path runs on PostgreSQL only"),
]


async def connect_and_close(
    creds: Credentials, hub: HubProcess, identifier: str, key: str = "", secret: str = ""
) -> None:
    device = creds.device(hub.ws_url, identifier, request_keys=False)
    if key:
        device.key, device.secret = key, secret
    reply = await device.connect()
    assert reply[4]["status"] == "ok", reply
    await device.heartbeat()
    await device.close()


async def refusal(creds: Credentials, hub: HubProcess, identifier: str, secret: str = "") -> int:
    device = creds.device(hub.ws_url, identifier, request_keys=False)
    if secret:
        device.secret = secret
    try:
        await device.open()
    except websockets.InvalidStatus as exc:
        return exc.response.status_code
    await device.close()
    return 101


# On by default (nerveshub/settings.py); set here whatever the environment says:
# these tests are about the fast path.
FAST_PATH = {"DEVICE_FAST_PATH": "true"}


def test_a_deactivated_key_is_refused_by_every_process_at_its_next_connect(
    live_hub: HubLauncher, creds: Credentials
) -> None:
    hub_a, hub_b = live_hub(FAST_PATH), live_hub(FAST_PATH)

    async def warm() -> None:
        for hub in (hub_a, hub_b, hub_a, hub_b):
            await connect_and_close(creds, hub, "dev-key")

    run(warm())
    # when: the operator deactivates the product key (from neither hub process)
    services.deactivate_secrets("test", ProductSharedSecret.objects.filter(key=creds.product_key))
    # then: both processes refuse the very next connect with it
    assert run(refusal(creds, hub_b, "dev-key")) == 401
    assert run(refusal(creds, hub_a, "dev-key")) == 401
    # and a new key of the product is accepted at once by a process that read the old one
    _, issued = services.create_product_secret("test", creds.tenant.product)
    run(connect_and_close(creds, hub_b, "dev-key", issued.key, issued.secret))


def test_a_changed_deployment_is_seen_by_the_other_process_at_the_next_join(
    live_hub: HubLauncher, creds: Credentials
) -> None:
    product = creds.tenant.product
    firmware = make_firmware(product, DEFAULT_FW["nerves_fw_version"], platform=DEFAULT_FW["nerves_fw_platform"])
    firmware.architecture = DEFAULT_FW["nerves_fw_architecture"]
    firmware.save()
    first = Deployment.objects.create(
        org=creds.tenant.org, product=product, name="a", firmware=firmware, is_active=True
    )
    hub_a, hub_b = live_hub(FAST_PATH), live_hub(FAST_PATH)

    async def warm() -> None:
        for hub in (hub_a, hub_b, hub_a, hub_b):
            await connect_and_close(creds, hub, "dev-dep")

    run(warm())
    assert Device.objects.get(identifier="dev-dep").deployment_id == first.pk
    # when: the deployment stops and another starts, written by neither hub process
    Deployment.objects.filter(pk=first.pk).update(is_active=False)
    second = Deployment.objects.create(
        org=creds.tenant.org, product=product, name="b", firmware=firmware, is_active=True
    )
    # then: the next join through either process moves the device
    run(connect_and_close(creds, hub_b, "dev-dep"))
    assert Device.objects.get(identifier="dev-dep").deployment_id == second.pk
    # when: the device no longer matches its deployment's conditions
    Deployment.objects.filter(pk=second.pk).update(conditions_tags=["beta"])
    run(connect_and_close(creds, hub_a, "dev-dep"))
    # then: it leaves it at its next join
    assert Device.objects.get(identifier="dev-dep").deployment_id is None


def test_a_returning_device_is_offered_its_extensions(live_hub: HubLauncher, creds: Credentials) -> None:
    hub = live_hub(FAST_PATH)

    async def scenario() -> list[str]:
        await connect_and_close(creds, hub, "dev-ext")  # first sight: the full path
        device = creds.device(hub.ws_url, "dev-ext", request_keys=False)
        await device.connect()  # returning: the fast path from the event loop
        await device.next_event("health:check")  # asked once health is attached
        attached = sorted(device.attach_refs)
        await device.close()
        device.assert_no_violations()
        return attached

    # the product allows health and geo (creds); the device offers those and network_identity
    assert run(scenario()) == ["geo", "health"]


def test_a_warm_process_still_refuses_a_bad_signature_and_counts_it(live_hub: HubLauncher, creds: Credentials) -> None:
    hub = live_hub({**FAST_PATH, "NH1_FAILURES_PER_ADDRESS": "3"})

    async def scenario() -> list[int]:
        await connect_and_close(creds, hub, "dev-sig")
        await connect_and_close(creds, hub, "dev-sig")  # this process has read the key
        statuses = []
        for _ in range(4):
            statuses.append(await refusal(creds, hub, "dev-sig", secret="not-the-secret"))
        # the address is now blocked, the right secret included
        statuses.append(await refusal(creds, hub, "dev-sig"))
        return statuses

    assert run(scenario()) == [401, 401, 401, 429, 429]
