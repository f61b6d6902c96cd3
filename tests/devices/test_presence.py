"""Presence survives a crash: a device whose socket lived in a hub process that
died (kill -9, an OOM, a lost machine) is shown offline within a stated time,
by the pages, the API, the rollout preview and the dashboard, and its
disconnect is recorded once, with its device.offline webhook
(docs/device-link.md, "Presence").

The live tests kill real hub processes with SIGKILL while a device is
connected: nothing in the dying process can record anything.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from django.test import Client
from django.utils import timezone

from deployments import rollout
from deployments.models import Deployment
from devices import services
from devices.models import ConnectionStatus, Device, HubLease
from nerveshub.tenancy import services as tenancy
from nerveshub.web.access import org_slug
from tests.deployments.conftest import make_firmware
from tests.devices.conftest import Credentials
from tests.support.nhl_client import DEFAULT_FW, NHLDevice
from webhooks.models import WebhookDelivery, WebhookEndpoint

T = TypeVar("T")

# Short leases for the live tests: a process's devices count as offline 3 s
# after its last renewal, and a live process records them within 1 s more.
LEASE = 3
RENEW = 1
SHORT_LEASES = {"HUB_LEASE_SECONDS": str(LEASE), "HUB_LEASE_RENEW_SECONDS": str(RENEW)}
# What the tests allow on a loaded machine, on top of the stated bound.
SLACK = 15.0


class DeviceLoop:
    """Device clients on an event loop of their own, so that the test can read
    the database and the pages synchronously while the sockets stay open."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def device_loop() -> Iterator[DeviceLoop]:
    loop = DeviceLoop()
    yield loop
    loop.stop()


def poll(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check` held (it is polled every 0.1 s)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - start


async def quietly_close(device: NHLDevice) -> None:
    try:
        await device.close()
    except Exception:
        pass


class Views:
    """What an operator sees: the API, the device page, the dashboard, the preview."""

    def __init__(self, creds: Credentials, deployment: Deployment) -> None:
        tenant = creds.tenant
        self.token = tenancy.create_api_token("test", tenant.admin, "presence").clear
        self.web = Client()
        self.web.force_login(tenant.admin)
        self.slug = org_slug(tenant.org)
        self.api_base = f"/api/v1/orgs/{tenant.org.name}/products/{tenant.product.name}/devices"
        self.deployment = deployment

    def api(self, identifier: str) -> dict[str, Any]:
        response = Client().get(f"{self.api_base}/{identifier}", HTTP_AUTHORIZATION=f"token {self.token}")
        assert response.status_code == 200, response.content
        body: dict[str, Any] = response.json()
        return body

    def api_online(self, identifier: str) -> bool:
        return bool(self.api(identifier)["online"])

    def device_page(self, device_id: int) -> str:
        return self.web.get(f"/org/{self.slug}/devices/{device_id}/").content.decode()

    def dashboard(self) -> str:
        return self.web.get(f"/org/{self.slug}/").content.decode()

    def eligible(self) -> list[str]:
        rows = rollout.preview(Deployment.objects.get(pk=self.deployment.pk))
        return [r.device.identifier for r in rows if r.eligible]


def _api_path_exists() -> None:
    # The API's device path, as the API tests use it (a wrong path would make
    # every assertion below fail with a 404, not pass).
    from devices.api import BASE

    assert BASE == "/orgs/{org}/products/{product}/devices"


def _setup(creds: Credentials) -> Views:
    _api_path_exists()
    tenant = creds.tenant
    WebhookEndpoint.objects.create(org=tenant.org, url="https://hooks.example.com/x", event_types=["device.offline"])
    # An update the device would get (the deployment is not active: nothing is pushed).
    target = make_firmware(tenant.product, "2.0.0", platform="rpi4", architecture=DEFAULT_FW["nerves_fw_architecture"])
    deployment = Deployment.objects.create(
        org=tenant.org, product=tenant.product, name="stable", firmware=target, is_active=False
    )
    return Views(creds, deployment)


def offline_webhooks(device_id: int) -> int:
    return sum(
        1
        for d in WebhookDelivery.objects.filter(event_type="device.offline")
        if int(d.payload["data"]["subject"]["id"]) == device_id
    )


def test_an_embedded_hub_killed_and_restarted_shows_its_device_offline(
    live_hub: Any, creds: Credentials, device_loop: DeviceLoop
) -> None:
    # given: an embedded hub (no Redis) with a device connected
    env = {"REDIS_URL": "", **SHORT_LEASES}
    views = _setup(creds)
    hub = live_hub(env)
    device = creds.device(hub.ws_url, "dev-crash")
    device_loop.run(device.connect())
    row = Device.objects.get(identifier="dev-crash")
    assert views.api_online("dev-crash")
    assert "Connected" in views.device_page(row.pk)
    assert "<b>1</b> online" in views.dashboard()
    assert views.eligible() == ["dev-crash"]

    # when: the hub is killed as an OOM would
    hub.process.kill()
    hub.process.wait(10)
    killed = time.monotonic()

    # then: within its lease the device is offline everywhere, though nothing
    # has written its row yet (no process is left to write it)
    shown_offline = poll(lambda: not views.api_online("dev-crash"), LEASE + SLACK)
    assert Device.objects.get(pk=row.pk).connection_status == ConnectionStatus.CONNECTED
    assert views.api("dev-crash")["connection_status"] == "disconnected"
    assert "Disconnected" in views.device_page(row.pk)
    assert "<b>0</b> online" in views.dashboard()
    assert views.eligible() == []
    assert offline_webhooks(row.pk) == 0

    # when: the hub starts again
    restarted_at = time.monotonic()
    hub = live_hub(env)
    # then: it records the disconnect its predecessor left at once, with the webhook
    started = time.monotonic() - restarted_at
    recorded = started + poll(
        lambda: Device.objects.get(pk=row.pk).connection_status == ConnectionStatus.DISCONNECTED, SLACK
    )
    recorded_after_kill = time.monotonic() - killed
    assert offline_webhooks(row.pk) == 1
    stored = Device.objects.get(pk=row.pk)
    assert (stored.socket_channel, stored.hub_lease_id) == ("", None)
    print(
        f"\nembedded: offline in queries {shown_offline:.1f} s after kill -9 (lease {LEASE} s); "
        f"recorded {recorded:.1f} s after the restart began, of which {started:.1f} s for the process to listen "
        f"({recorded_after_kill:.1f} s after the kill)"
    )
    assert recorded < SLACK + 30  # the restart itself included

    # when: the device comes back
    device_loop.run(quietly_close(device))
    again = creds.device(hub.ws_url, "dev-crash")
    device_loop.run(again.connect())
    # then: it is online again, on the new process's lease, and only one offline was sent
    assert views.api_online("dev-crash")
    assert views.eligible() == ["dev-crash"]
    assert Device.objects.get(pk=row.pk).hub_lease_id == HubLease.objects.filter(closed_at__isnull=True).get().pk
    device_loop.run(again.close())
    poll(lambda: not views.api_online("dev-crash"), SLACK)
    assert offline_webhooks(row.pk) == 2  # the crash's, and this ordinary close's
    again.assert_no_violations()


@pytest.mark.services
def test_a_surviving_process_records_the_devices_of_a_killed_one(
    live_hub: Any, creds: Credentials, device_loop: DeviceLoop
) -> None:
    # given: two hub processes sharing Redis, a device on the first
    views = _setup(creds)
    first, second = live_hub(SHORT_LEASES), live_hub(SHORT_LEASES)
    device = creds.device(first.ws_url, "dev-on-first")
    bystander = creds.device(second.ws_url, "dev-on-second")
    device_loop.run(device.connect())
    device_loop.run(bystander.connect())
    row = Device.objects.get(identifier="dev-on-first")
    assert views.api_online("dev-on-first") and views.api_online("dev-on-second")

    # when: the first is killed
    first.process.kill()
    first.process.wait(10)

    # then: shown offline once its lease runs out, recorded by the second
    # process within one renewal more, with its webhook; the other device stays
    shown_offline = poll(lambda: not views.api_online("dev-on-first"), LEASE + SLACK)
    recorded = poll(
        lambda: Device.objects.get(pk=row.pk).connection_status == ConnectionStatus.DISCONNECTED, LEASE + RENEW + SLACK
    )
    recorded += shown_offline
    print(
        f"\ntwo processes: offline in queries {shown_offline:.1f} s after kill -9, recorded {recorded:.1f} s after "
        f"(lease {LEASE} s, renewal {RENEW} s)"
    )
    assert offline_webhooks(row.pk) == 1
    assert views.api_online("dev-on-second")
    assert views.eligible() == ["dev-on-second"]

    # when: the device reconnects, to the surviving process
    device_loop.run(quietly_close(device))
    again = creds.device(second.ws_url, "dev-on-first")
    device_loop.run(again.connect())
    time.sleep(LEASE + RENEW)  # the second process's sweeps go on
    # then: online again, and nothing recorded it offline a second time
    assert views.api_online("dev-on-first")
    assert sorted(views.eligible()) == ["dev-on-first", "dev-on-second"]
    assert offline_webhooks(row.pk) == 1
    for client in (again, bystander):
        device_loop.run(client.close())
        client.assert_no_violations()


def test_a_process_whose_lease_was_closed_out_closes_its_sockets_so_they_reconnect(
    live_hub: Any, creds: Credentials, device_loop: DeviceLoop
) -> None:
    # given: a hub with a device connected, whose lease another process closed
    # out (as if the hub had stalled past its lease)
    hub = live_hub(SHORT_LEASES)
    device = creds.device(hub.ws_url, "dev-stalled")
    device_loop.run(device.connect())
    row = Device.objects.get(identifier="dev-stalled")
    lease_id = row.hub_lease_id
    assert lease_id is not None

    # when
    assert services.close_out_expired_leases(None, all_others=True) == [row.pk]

    # then: the hub notices at its next renewal and closes the socket: the
    # device, recorded offline, is not left connected to a process that the
    # database no longer believes
    device_loop.run(device.wait_closed(timeout=LEASE + SLACK))
    again = creds.device(hub.ws_url, "dev-stalled")
    device_loop.run(again.connect())
    stored = Device.objects.get(pk=row.pk)
    assert stored.online and stored.hub_lease_id not in (None, lease_id)
    device_loop.run(again.heartbeat())
    device_loop.run(again.close())
    again.assert_no_violations()


# --- The rule, without live processes ----------------------------------------------


def _connected_on(lease: HubLease, creds: Credentials, identifier: str) -> Device:
    device = services.create_device("test", creds.tenant.product, identifier)
    Device.objects.filter(pk=device.pk).update(
        firmware_uuid=DEFAULT_FW["nerves_fw_uuid"],
        firmware_platform="rpi4",
        firmware_architecture=DEFAULT_FW["nerves_fw_architecture"],
    )
    seen = Device.objects.select_related("product").get(pk=device.pk)
    services.open_device_connection(seen, f"chan-{identifier}", lease.pk)
    return Device.objects.get(pk=device.pk)


def _lease(expires_in: float) -> HubLease:
    now = timezone.now()
    return HubLease.objects.create(channel="specific.x", expires_at=now + timedelta(seconds=expires_in))


@pytest.mark.django_db
def test_presence_is_not_believed_past_the_lease_of_the_process(creds: Credentials) -> None:
    # given: a device on a live process, one on a process whose lease expired
    views = _setup(creds)
    live, dead = _lease(60), _lease(-1)
    alive = _connected_on(live, creds, "dev-live")
    orphan = _connected_on(dead, creds, "dev-orphan")

    # then: the row of the second still says connected; nothing believes it
    assert orphan.connection_status == ConnectionStatus.CONNECTED
    assert list(Device.objects.online()) == [alive]
    assert list(Device.objects.offline()) == [orphan]
    assert (alive.online, orphan.online) == (True, False)
    assert orphan.presence == ConnectionStatus.DISCONNECTED
    assert views.api("dev-orphan")["online"] is False
    assert views.api("dev-live")["online"] is True
    listed = Client().get(f"{views.api_base}?online=false", HTTP_AUTHORIZATION=f"token {views.token}").json()
    assert [d["identifier"] for d in listed["devices"]] == ["dev-orphan"]
    assert views.eligible() == ["dev-live"]
    assert [r.problems for r in rollout.preview(views.deployment) if r.device.pk == orphan.pk] == [["offline"]]
    assert "<b>1</b> online" in views.dashboard()


@pytest.mark.django_db
def test_an_expired_lease_is_closed_out_once_and_spares_devices_that_moved(creds: Credentials) -> None:
    # given: two devices on a process that died, one of which reconnected to a
    # live process since; organization listening for device.offline
    _setup(creds)
    dead, live = _lease(-1), _lease(60)
    stays = _connected_on(dead, creds, "dev-stays")
    moved = _connected_on(dead, creds, "dev-moved")
    services.open_device_connection(Device.objects.select_related("product").get(pk=moved.pk), "chan-new", live.pk)

    # when: two live processes sweep
    first = services.close_out_expired_leases(live.pk)
    second = services.close_out_expired_leases(None)

    # then: the first records the one device left behind, the second nothing
    assert (first, second) == ([stays.pk], [])
    stored = Device.objects.get(pk=stays.pk)
    assert (stored.connection_status, stored.socket_channel, stored.hub_lease_id) == (
        ConnectionStatus.DISCONNECTED,
        "",
        None,
    )
    # the hub did not see the socket close: no close time is claimed for it
    assert stored.disconnected_at is None
    assert Device.objects.get(pk=moved.pk).online
    assert offline_webhooks(stays.pk) == 1 and offline_webhooks(moved.pk) == 0
    # and the dead process, were it only stalled, learns it lost its lease
    assert services.renew_lease(dead.pk) is False
    assert services.renew_lease(live.pk) is True


@pytest.mark.django_db
def test_a_lease_renewed_before_the_sweep_is_left_alone(creds: Credentials) -> None:
    # given: a lease that had expired (its process stalled), renewed since
    lease = _lease(-1)
    device = _connected_on(lease, creds, "dev-late")
    assert not Device.objects.get(pk=device.pk).online
    assert services.renew_lease(lease.pk)

    # when
    gone = services.close_out_expired_leases(None)

    # then
    assert gone == []
    assert Device.objects.get(pk=device.pk).online
    assert HubLease.objects.get(pk=lease.pk).closed_at is None
