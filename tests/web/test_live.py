"""The organization pages' live socket (nerveshub.web.live): a device's change
reaches an open page of its organization, in bounded messages, and nobody
else's. Real hub processes with a real device client where the device's side
matters; the ASGI app through Channels' communicator for the bounds."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from pytest_django.fixtures import Settings
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from devices import pagefeed, publish
from devices import services as device_services
from nerveshub.asgi import application
from nerveshub.tenancy.models import Membership
from nerveshub.web.access import org_slug
from tests.conftest import Tenant
from tests.console.conftest import hub_request, in_thread, session_cookie
from tests.devices.conftest import Credentials, creds, run  # noqa: F401 (fixture re-export)
from tests.support.hub import HubLauncher
from tests.web.conftest import client_for

FAST = {"LIVE_FLUSH_MS": "200", "LIVE_ACCESS_CHECK_SECONDS": "1"}


async def _open_page_socket(hub: Any, slug: str, cookie: str | None) -> ClientConnection:
    """Raises InvalidStatus when the handshake is refused."""
    headers = [("Cookie", f"sessionid={cookie}")] if cookie else []
    return await connect(
        f"{hub.ws_url}/org/{slug}/live/socket",
        additional_headers=headers,
        origin=hub.http_url,
        open_timeout=10,
    )


async def _next_change(ws: ClientConnection, device_id: int, field: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next row about `device_id` that carries `field`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        message = json.loads(await asyncio.wait_for(ws.recv(), max(0.01, remaining)))
        for row in message.get("devices", []):
            if row["id"] == device_id and field in row:
                return dict(row)


async def _extensions_attached(device: Any) -> None:
    # The device attaches geo and health; each attach is answered by a request.
    await device.next_event("extensions:get")
    await device.next_event("extensions")
    await device.next_event("extensions")


# --- a device's socket reaches the page -----------------------------------------------


def test_it_shows_a_device_connecting_and_leaving_on_an_open_page(live_hub: HubLauncher, creds: Credentials) -> None:  # noqa: F811
    # given: a viewer's page of the organization is open
    hub = live_hub(FAST)
    row = device_services.create_device("test", creds.tenant.product, "dev-live")
    slug = org_slug(creds.tenant.org)
    device = creds.device(hub.ws_url, "dev-live")

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        cookie = await in_thread(session_cookie, creds.tenant.viewer)
        page = await _open_page_socket(hub, slug, cookie)
        # when: the device connects on the device socket, reports health, leaves
        await device.connect()
        online = await _next_change(page, row.pk, "presence")
        await _extensions_attached(device)
        report = {"metrics": {"cpu_usage_percent": 95.0}, "alarms": {}}
        await device.push("extensions", "health:report", {"value": report})
        health = await _next_change(page, row.pk, "health")
        await device.close()
        offline = await _next_change(page, row.pk, "presence")
        await page.close()
        return online, health, offline

    online, health, offline = run(scenario())

    # then
    assert online["presence"] == "connected" and online["seen"]
    assert health["health"] == "unhealthy"
    assert offline["presence"] == "disconnected"


# --- refusals --------------------------------------------------------------------------


def test_it_refuses_an_anonymous_page_and_an_outsider(live_hub: HubLauncher, creds: Credentials) -> None:  # noqa: F811
    # given
    hub = live_hub(FAST)
    slug = org_slug(creds.tenant.org)

    async def attempt(user: User | None, origin_ok: bool = True) -> int:
        cookie = await in_thread(session_cookie, user) if user is not None else None
        try:
            ws = await _open_page_socket(hub, slug, cookie)
        except InvalidStatus as exc:
            return exc.response.status_code
        await ws.close()
        return 101

    # when / then: no session, another organization's admin
    assert run(attempt(None)) == 403
    assert run(attempt(creds.tenant.outsider)) == 403
    # and the viewer is let in
    assert run(attempt(creds.tenant.viewer)) == 101


def test_it_refuses_another_site_with_the_members_cookie(live_hub: HubLauncher, creds: Credentials) -> None:  # noqa: F811
    # given
    hub = live_hub(FAST)
    slug = org_slug(creds.tenant.org)

    async def attempt() -> int:
        cookie = await in_thread(session_cookie, creds.tenant.viewer)
        try:
            ws = await connect(
                f"{hub.ws_url}/org/{slug}/live/socket",
                additional_headers=[("Cookie", f"sessionid={cookie}")],
                origin="http://evil.example",  # type: ignore[arg-type]
                open_timeout=10,
            )
        except InvalidStatus as exc:
            return exc.response.status_code
        await ws.close()
        return 101

    # when / then
    assert run(attempt()) == 403


def test_it_stops_a_member_removed_while_the_page_is_open(live_hub: HubLauncher, creds: Credentials) -> None:  # noqa: F811
    # given: the viewer's page is open and receiving
    hub = live_hub(FAST)
    row = device_services.create_device("test", creds.tenant.product, "dev-removed")
    slug = org_slug(creds.tenant.org)
    device = creds.device(hub.ws_url, "dev-removed")

    async def scenario() -> tuple[list[dict[str, Any]], int | None, float]:
        cookie = await in_thread(session_cookie, creds.tenant.viewer)
        page = await _open_page_socket(hub, slug, cookie)
        await device.connect()
        await _next_change(page, row.pk, "presence")
        await _extensions_attached(device)
        # when: the membership is deleted by another process (no access event
        # reaches this hub), and the device keeps changing
        await in_thread(lambda: Membership.objects.filter(user=creds.tenant.viewer, org=creds.tenant.org).delete())
        removed_at = asyncio.get_running_loop().time()
        after: list[dict[str, Any]] = []
        try:
            for n in range(40):
                await device.push("extensions", "health:report", {"value": {"metrics": {"cpu_temp": float(n)}}})
                try:
                    after.append(json.loads(await asyncio.wait_for(page.recv(), 0.2)))
                except TimeoutError:
                    pass
        except ConnectionClosed:
            pass
        await asyncio.wait_for(page.wait_closed(), 10)
        elapsed = asyncio.get_running_loop().time() - removed_at
        await device.close()
        return after, page.close_code, elapsed

    after, code, elapsed = run(scenario())

    # then: the page is told why and closed within the stated time
    assert code == 4003
    assert after[-1] == {"type": "closed", "reason": "no longer a member of the organization"}
    assert elapsed < 1 + 3  # LIVE_ACCESS_CHECK_SECONDS plus scheduling slack


def test_it_stops_a_member_removed_on_the_org_pages_at_once(live_hub: HubLauncher, creds: Credentials) -> None:  # noqa: F811
    # given: the viewer's page is open; no periodic check within the test
    hub = live_hub({"LIVE_FLUSH_MS": "200", "LIVE_ACCESS_CHECK_SECONDS": "3600"})
    slug = org_slug(creds.tenant.org)
    membership = Membership.objects.get(user=creds.tenant.viewer, org=creds.tenant.org)
    admin_cookie = session_cookie(creds.tenant.admin)

    async def scenario() -> tuple[int, dict[str, Any], int | None, float]:
        cookie = await in_thread(session_cookie, creds.tenant.viewer)
        page = await _open_page_socket(hub, slug, cookie)
        # when: the admin removes the viewer on the members page of the same hub
        remove = f"/org/{slug}/members/{membership.pk}/remove/"
        status, _, _ = await in_thread(hub_request, hub, remove, admin_cookie, {})
        started = asyncio.get_running_loop().time()
        closed = json.loads(await asyncio.wait_for(page.recv(), 10))
        await asyncio.wait_for(page.wait_closed(), 10)
        return status, closed, page.close_code, asyncio.get_running_loop().time() - started

    status, closed, code, seconds = run(scenario())

    # then: the access event ended the feed, not the hour-long timer
    assert status == 200
    assert closed == {"type": "closed", "reason": "no longer a member of the organization"}
    assert code == 4003 and seconds < 5


def test_it_stops_a_page_whose_session_signs_out(live_hub: HubLauncher, creds: Credentials) -> None:  # noqa: F811
    # given: the viewer's page is open; no periodic check within the test
    hub = live_hub({"LIVE_FLUSH_MS": "200", "LIVE_ACCESS_CHECK_SECONDS": "3600"})
    slug = org_slug(creds.tenant.org)

    async def scenario() -> tuple[int, dict[str, Any], int | None]:
        cookie = await in_thread(session_cookie, creds.tenant.viewer)
        page = await _open_page_socket(hub, slug, cookie)
        # when: the same session signs out on the hub
        status, _, _ = await in_thread(hub_request, hub, "/accounts/logout/", cookie, {})
        closed = json.loads(await asyncio.wait_for(page.recv(), 10))
        await asyncio.wait_for(page.wait_closed(), 10)
        return status, closed, page.close_code

    status, closed, code = run(scenario())

    # then
    assert status == 200
    assert closed == {"type": "closed", "reason": "signed out"}
    assert code == 4003


# --- coalescing bounds ---------------------------------------------------------------


def _changes(org_id: int, second: int) -> None:
    for n in range(500):
        device_id = 10_000 + second * 500 + n
        publish.page_device_connected(org_id, device_id)
        publish.page_device_update(device_id, "downloading", n % 100, 7)
    if second == 0:
        publish.page_device_health(10_000, "warning")


@pytest.mark.django_db(transaction=True)
def test_it_bounds_the_messages_a_page_gets_for_a_thousand_changes(tenant: Tenant, settings: Settings) -> None:
    # given: one page open; 1,000 devices change in one second, one of them 5 times
    settings.LIVE_FLUSH_MS = 300
    settings.LIVE_MAX_ROWS = 100
    cookie = client_for(tenant.viewer).cookies["sessionid"].value
    slug = org_slug(tenant.org)
    org_id = tenant.org.pk
    origin = settings.PUBLIC_URL.rstrip("/")

    async def scenario() -> list[dict[str, Any]]:
        page = WebsocketCommunicator(
            application,
            f"/org/{slug}/live/socket",
            headers=[(b"cookie", f"sessionid={cookie}".encode()), (b"origin", origin.encode())],
        )
        connected, _ = await page.connect(timeout=10)
        assert connected
        layer = get_channel_layer()
        loop = asyncio.get_running_loop()
        start = loop.time()
        for second in range(2):
            # when: the publisher's own functions, as domain code calls them
            await in_thread(_changes, org_id, second)
            await pagefeed.flush(layer)
            await asyncio.sleep(0.5)
        messages: list[dict[str, Any]] = []
        # (receive_nothing first: a receive that times out cancels the app)
        while loop.time() - start < 3 and not await page.receive_nothing(timeout=0.5):
            messages.append(json.loads(await page.receive_from(timeout=1)))
        await page.disconnect()
        return messages

    messages = asyncio.run(scenario())

    # then: one message per flush interval at most, each within the cap, the
    # rest counted so the page refetches its counts
    assert 1 <= len(messages) <= 3
    for message in messages:
        assert message["type"] == "changes"
        assert len(message["devices"]) <= 100
        assert message["counts"] is True
        assert message["deployments"] == [7]
    assert sum(len(m["devices"]) + m["more"] for m in messages) == 1000
    first = messages[0]["devices"][0]
    assert first == {"id": 10_000, "presence": "connected", "seen": first["seen"], "update": "downloading",
                     "progress": 0, "deployment": 7, "health": "warning"}  # fmt: skip
    assert max(len(json.dumps(m)) for m in messages) < 16_000


@pytest.mark.django_db
def test_it_coalesces_a_devices_changes_in_the_feed(tenant: Tenant, settings: Settings) -> None:
    # given
    settings.LIVE_MAX_ROWS = 2
    feed = pagefeed.Feed()

    # when: one device changes four times, two more devices pass the cap
    feed.device(1, 10, {"presence": "connected"}, counts=True)
    feed.device(1, 10, {"progress": 10})
    feed.device(1, 10, {"progress": 40})
    feed.device(1, 10, {"presence": "disconnected"})
    feed.device(1, 11, {"fw": "1.0.1"})
    feed.device(1, 12, {"fw": "1.0.1"})
    feed.device(1, 13, {"fw": "1.0.1"})
    feed.deployment(2, 5)
    batches = dict(feed.take())

    # then: the latest value of each field per device; one batch per org
    assert batches[1]["devices"] == [{"id": 10, "presence": "disconnected", "progress": 40}, {"id": 11, "fw": "1.0.1"}]
    assert batches[1]["more"] == 2 and batches[1]["counts"] is True
    assert batches[2]["deployments"] == [5] and batches[2]["devices"] == []
    assert feed.take() == []


@pytest.mark.django_db
def test_it_answers_counts_to_members_only(tenant: Tenant) -> None:
    # given
    device_services.create_device("test", tenant.product, "dev-count")
    url = f"/org/{org_slug(tenant.org)}/live/counts.json"

    # when
    member = client_for(tenant.viewer).get(url)
    outsider = client_for(tenant.outsider).get(url)

    # then
    assert member.status_code == 200
    assert member.json() == {
        "total": 1,
        "total_more": False,
        "online": 0,
        "online_more": False,
        "offline": 1,
        "updating": 0,
        "updating_more": False,
    }
    assert outsider.status_code == 404


@pytest.mark.services
def test_it_reaches_a_page_on_another_server_process(live_hub: HubLauncher, creds: Credentials) -> None:  # noqa: F811
    # given: two hub processes sharing Redis; the page is open on the second
    hub_a, hub_b = live_hub(FAST), live_hub(FAST)
    row = device_services.create_device("test", creds.tenant.product, "dev-on-a")
    slug = org_slug(creds.tenant.org)
    device = creds.device(hub_a.ws_url, "dev-on-a")

    async def scenario() -> dict[str, Any]:
        cookie = await in_thread(session_cookie, creds.tenant.viewer)
        page = await _open_page_socket(hub_b, slug, cookie)
        # when: the device connects to the first
        await device.connect()
        online = await _next_change(page, row.pk, "presence")
        await device.close()
        await page.close()
        return online

    # then
    assert run(scenario())["presence"] == "connected"
