"""Access to an open console follows the person's membership and session, from
the side of someone who should have lost it: a member removed or lowered to the
view role, a session signed out, a password changed. Real hub processes, real
console sockets, and the changes made the ways they are made: the org pages of
the same hub, the password reset pages, or another process (a worker, the
admin of another hub process, a shell).

CONSOLE_ACCESS_CHECK_SECONDS is set to an hour where a test shows that the
change itself (its event, or the check before a write) ends the access, not
the periodic check."""

from __future__ import annotations

import asyncio
from typing import Any

from django.contrib.auth.models import User
from django.contrib.auth.tokens import default_token_generator
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from websockets.exceptions import ConnectionClosed

from devices import services as device_services
from nerveshub.tenancy import redaction
from nerveshub.tenancy import services as tenancy_services
from nerveshub.tenancy.models import AuditEvent, Membership, Role
from tests.console.conftest import (
    PROMPT,
    FakeIEx,
    HubBrowser,
    IExDevice,
    Operator,
    hub_request,
    in_thread,
    open_console,
    session_cookie,
)
from tests.devices.conftest import Credentials, run, wait_until
from tests.support.hub import HubLauncher

NO_POLL = {"CONSOLE_ACCESS_CHECK_SECONDS": "3600"}


def _audit(action: str, device_id: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, subject_id=str(device_id)).order_by("id"))


def _typed(iex: FakeIEx) -> str:
    return "".join(m[4].get("data", "") for m in iex.pushed if m[3] == "dn")


async def _closed_with(operator: Operator, timeout: float = 15.0) -> tuple[dict[str, object], int | None]:
    """The console's last word ("closed") and the socket's close code."""
    closed = await operator.next("closed", timeout=timeout)
    await asyncio.wait_for(operator.ws.wait_closed(), timeout)
    return closed, operator.ws.close_code


async def _still_typing(operator: Operator, text: str) -> None:
    """Keep sending keystrokes while the hub lets the socket stay open."""
    try:
        for _ in range(20):
            await operator.send("dn", {"data": text})
            await asyncio.sleep(0.1)
    except ConnectionClosed:
        pass


def test_it_refuses_the_keystrokes_of_a_member_removed_elsewhere(
    live_hub: HubLauncher, creds: Credentials, iex_device: IExDevice
) -> None:
    # given: the manager's console is open and working; no periodic check
    hub = live_hub(NO_POLL)
    row = device_services.create_device("test", creds.tenant.product, "dev-removed")
    device, iex = iex_device(hub.ws_url, "dev-removed")
    membership = Membership.objects.get(user=creds.tenant.manager, org=creds.tenant.org)

    async def scenario() -> tuple[dict[str, object], int | None]:
        await device.connect()
        iex.start()
        manager = await open_console(hub.ws_url, row.pk, creds.tenant.manager)
        await manager.next("status", connected=True)
        await manager.send("dn", {"data": "1 + 1\r"})
        await manager.output_until(PROMPT)
        # when: an admin removes the manager from another process (a shell, the
        # admin of another hub process), and the manager keeps typing
        await in_thread(tenancy_services.remove_member, creds.tenant.admin, membership)
        await _still_typing(manager, "halt()\r")
        closed, code = await _closed_with(manager)
        await asyncio.sleep(0.5)
        await iex.stop()
        await device.close()
        return closed, code

    closed, code = run(scenario())
    # then: nothing typed after the removal reached the device; the console ended
    assert "halt()" not in _typed(iex)
    assert code == 4003
    assert "access ended" in str(closed["reason"])
    wait_until(lambda: any("access ended" in e.details["reason"] for e in _audit("console.closed", row.pk)))


def test_it_ends_the_console_of_a_member_removed_on_the_org_pages_at_once(
    live_hub: HubLauncher, creds: Credentials, iex_device: IExDevice
) -> None:
    # given: a manager watching a console without typing; no periodic check
    hub = live_hub(NO_POLL)
    row = device_services.create_device("test", creds.tenant.product, "dev-watched")
    membership = Membership.objects.get(user=creds.tenant.manager, org=creds.tenant.org)
    admin_cookie = session_cookie(creds.tenant.admin)

    async def scenario() -> tuple[int, dict[str, object], int | None, float]:
        manager = await open_console(hub.ws_url, row.pk, creds.tenant.manager)
        await manager.next("metadata")
        # when: the admin removes the manager on the members page
        status, _, _ = await in_thread(hub_request, hub, f"/org/acme/members/{membership.pk}/remove/", admin_cookie, {})
        started = asyncio.get_running_loop().time()
        closed, code = await _closed_with(manager)
        return status, closed, code, asyncio.get_running_loop().time() - started

    status, closed, code, seconds = run(scenario())
    # then: the console ended within seconds, though it never wrote
    assert status == 200
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert code == 4003 and "access ended" in str(closed["reason"])
    assert seconds < 10


def test_it_lowers_a_member_made_viewer_to_watching(
    live_hub: HubLauncher, creds: Credentials, iex_device: IExDevice
) -> None:
    # given: the manager types into the console; no periodic check
    hub = live_hub(NO_POLL)
    row = device_services.create_device("test", creds.tenant.product, "dev-lowered")
    device, iex = iex_device(hub.ws_url, "dev-lowered")
    membership = Membership.objects.get(user=creds.tenant.manager, org=creds.tenant.org)
    admin_cookie = session_cookie(creds.tenant.admin)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], str]:
        await device.connect()
        iex.start()
        manager = await open_console(hub.ws_url, row.pk, creds.tenant.manager)
        await manager.next("status", connected=True)
        await manager.send("dn", {"data": "1 + 1\r"})
        await manager.output_until(PROMPT)
        # when: the admin lowers the manager to the view role on the members page
        await in_thread(hub_request, hub, f"/org/acme/members/{membership.pk}/role/", admin_cookie, {"role": "view"})
        access = await manager.next("access", timeout=10)
        await manager.send("dn", {"data": "halt()\r"})
        refusal = await manager.next("error")
        # then: still watching: the device's output keeps coming
        await iex.up("still here\r\n")
        watched = await manager.output_until("still here")
        await manager.ws.close()
        await iex.stop()
        await device.close()
        return access, refusal, watched

    access, refusal, watched = run(scenario())
    assert access == {"role": "view", "can_write": False}
    assert "read-only" in str(refusal["message"])
    assert "halt()" not in _typed(iex)
    assert "still here" in watched


def test_it_ends_the_consoles_of_a_session_that_signs_out(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: the manager has the console open in two browsers (two sessions)
    hub = live_hub(NO_POLL)
    row = device_services.create_device("test", creds.tenant.product, "dev-signout")
    leaving, staying = session_cookie(creds.tenant.manager), session_cookie(creds.tenant.manager)

    async def scenario() -> tuple[int, dict[str, object], int | None, dict[str, Any]]:
        first = await open_console(hub.ws_url, row.pk, creds.tenant.manager, cookie=leaving)
        second = await open_console(hub.ws_url, row.pk, creds.tenant.manager, cookie=staying)
        await first.next("metadata")
        await second.next("metadata")
        # when: the first browser signs out
        status, _, _ = await in_thread(hub_request, hub, "/accounts/logout/", leaving, {})
        closed, code = await _closed_with(first)
        # then: the other session's console is still open and may type
        await second.send("dn", {"data": "x"})
        offline = await second.next("error")
        await second.ws.close()
        return status, closed, code, offline

    status, closed, code, offline = run(scenario())
    assert status == 200
    assert code == 4003 and "signed out" in str(closed["reason"])
    assert "not connected" in str(offline["message"])  # refused for the device, not for access


def test_it_ends_the_console_when_the_password_is_reset(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: an attacker holds the manager's session with the console open
    hub = live_hub(NO_POLL)
    row = device_services.create_device("test", creds.tenant.product, "dev-reset")
    manager = creds.tenant.manager

    def reset_password() -> int:
        # The owner follows the link of a reset mail (the hub moves the token
        # into a session and redirects to the form) and sets a new password.
        # The token is made now: it is spent by any sign-in, the attacker's too.
        user = User.objects.get(pk=manager.pk)
        link = f"/accounts/password/reset/{urlsafe_base64_encode(force_bytes(user.pk))}/"
        link += default_token_generator.make_token(user) + "/"
        owner = HubBrowser(hub)
        status, body, form = owner.request(link)
        assert status == 200 and "new_password1" in body, body[:500]
        new = "A-much-longer-passphrase-7"
        status, body, _ = owner.request(form, {"new_password1": new, "new_password2": new})
        assert "<h1>password set</h1>" in body.lower(), body[:500]
        return status

    async def scenario() -> tuple[int, dict[str, object], int | None]:
        operator = await open_console(hub.ws_url, row.pk, manager)
        await operator.next("metadata")
        # when
        status = await in_thread(reset_password)
        closed, code = await _closed_with(operator)
        return status, closed, code

    status, closed, code = run(scenario())
    # then
    assert status == 200
    assert code == 4003 and "signed out" in str(closed["reason"])


def test_it_ends_the_console_of_a_password_changed_where_no_event_reaches(
    live_hub: HubLauncher, creds: Credentials
) -> None:
    # given: the periodic check every second
    hub = live_hub({"CONSOLE_ACCESS_CHECK_SECONDS": "1"})
    row = device_services.create_device("test", creds.tenant.product, "dev-passwd")
    manager = creds.tenant.manager

    def change_password() -> None:
        # A raw update (no save(), so no event): only the session's hash tells.
        User.objects.filter(pk=manager.pk).update(password="pbkdf2_sha256$1$salt$changed")

    async def scenario() -> tuple[dict[str, object], int | None]:
        operator = await open_console(hub.ws_url, row.pk, manager)
        await operator.next("metadata")
        # when
        await in_thread(change_password)
        return await _closed_with(operator)

    closed, code = run(scenario())
    # then
    assert code == 4003 and "signed out" in str(closed["reason"])


def test_it_shows_typed_lines_to_admins_only(live_hub: HubLauncher, creds: Credentials, iex_device: IExDevice) -> None:
    # given: the manager types a secret into the shell and restarts IEx
    hub = live_hub()
    row = device_services.create_device("test", creds.tenant.product, "dev-secret")
    device, iex = iex_device(hub.ws_url, "dev-secret")
    secret = "hunter2-s3cr3t-token"

    async def scenario() -> None:
        await device.connect()
        iex.start()
        manager = await open_console(hub.ws_url, row.pk, creds.tenant.manager)
        await manager.next("status", connected=True)
        await manager.send("dn", {"data": f'System.put_env("TOKEN", "{secret}")\r'})
        await manager.output_until(PROMPT)
        await manager.send("restart", {})
        await manager.output_until("Restarting IEx")
        await manager.ws.close()
        await iex.stop()
        await device.close()

    run(scenario())
    wait_until(lambda: bool(_audit("console.restarted", row.pk)))
    typed = _audit("console.input", row.pk)
    assert len(typed) == 1 and secret in typed[0].details["text"]  # kept, for the admins
    pages = [
        "/org/acme/",
        "/org/acme/audit/",
        f"/org/acme/devices/{row.pk}/",
        f"/org/acme/devices/{row.pk}/audit/",
        f"/admin/tenancy/auditevent/{typed[0].pk}/change/",
    ]

    def read(user: User) -> dict[str, tuple[int, str]]:
        cookie = session_cookie(user)
        return {page: hub_request(hub, page, cookie)[:2] for page in pages}

    # when: each role reads the audit log on the org pages and in the admin
    by_role = {user.username: read(user) for user in (creds.tenant.viewer, creds.tenant.manager, creds.tenant.admin)}
    # then: every page answers; only the admin reads the line
    for username, seen in by_role.items():
        for page, (status, body) in seen.items():
            assert status == 200, (username, page, status)
            assert ("s3cr3t" in body) == (username == "alice"), (username, page)
            assert "console.input" in body or page.endswith("/org/acme/"), (username, page)
    assert [e.actor for e in _audit("console.restarted", row.pk)] == ["user:mallory-manager"]
    assert redaction.visible(typed[0], Role.VIEW).details["text"] == redaction.HIDDEN_DETAIL
