"""The console relay end to end over real sockets: a nerves_hub_link mimic with
remote IEx on the device socket, operators on /console/<id>/socket, both against
real daphne processes (live_hub)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from django.contrib.auth.models import User
from websockets.exceptions import InvalidStatus

from devices import services as device_services
from nerveshub.tenancy.models import AuditEvent
from tests.conftest import Tenant
from tests.console.conftest import PROMPT, IExDevice, eventually, open_console
from tests.devices.conftest import Credentials, run, wait_until
from tests.support.hub import HubLauncher


def _audit(action: str, device_id: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, subject_id=str(device_id)).order_by("id"))


def test_it_relays_keystrokes_output_and_window_size_between_operators_and_the_device(
    live_hub: HubLauncher, creds: Credentials, iex_device: IExDevice
) -> None:
    # given
    hub = live_hub()
    row = device_services.create_device("test", creds.tenant.product, "dev-console")
    device, iex = iex_device(hub.ws_url)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], str, str, dict[str, Any], str, dict[str, Any]]:
        await device.connect()
        iex.start()
        manager = await open_console(hub.ws_url, row.pk, creds.tenant.manager)
        viewer = await open_console(hub.ws_url, row.pk, creds.tenant.viewer)
        metadata = await manager.next("metadata")
        viewer_metadata = await viewer.next("metadata")
        await manager.next("status", connected=True)
        # when: the manager sizes the terminal and types a command
        await manager.send("window_size", {"height": 40, "width": 120})
        await manager.send("dn", {"data": "1 + 1"})
        await manager.send("dn", {"data": "\r"})
        manager_output = await manager.output_until(PROMPT)
        viewer_output = await viewer.output_until(PROMPT)
        # when: the manager restarts IEx and sends something that is no console message
        await manager.send("restart", {})
        restarted = await viewer.output_until("*** Restarting IEx ***")
        await manager.send("bogus", {})
        bogus = await manager.next("error")
        # when: the viewer tries to type
        await viewer.send("dn", {"data": "System.halt()\r"})
        refusal = await viewer.next("error")
        await asyncio.sleep(0.3)
        await manager.ws.close()
        await viewer.ws.close()
        await iex.stop()
        await device.close()
        return metadata, viewer_metadata, manager_output, viewer_output, refusal, restarted, bogus

    metadata, viewer_metadata, manager_output, viewer_output, refusal, restarted, bogus = run(scenario())
    # then: the device got dn and window_size pushes on `console` with the topic's join ref
    console_ref = device.join_refs["console"]
    assert [m[0] for m in iex.pushed] == [console_ref] * len(iex.pushed)
    assert [m[1] for m in iex.pushed] == [None] * len(iex.pushed)
    assert [m[3] for m in iex.pushed] == ["window_size", "dn", "dn", "restart"]
    assert iex.pushed[1][4] == {"data": "1 + 1"}
    assert iex.pushed[3][4] == {}
    assert iex.sizes == [{"height": 40, "width": 120}]
    device.assert_no_violations()
    # then: both operators saw the device's output; only the manager may type
    assert '"1 + 1"' in manager_output and '"1 + 1"' in viewer_output
    assert metadata["can_write"] is True and metadata["files"] is True and metadata["version"] == "2.0.0"
    assert viewer_metadata["can_write"] is False
    assert "read-only" in refusal["message"]
    assert "Restarting IEx" in restarted
    assert bogus["message"].startswith("message refused")
    assert "System.halt" not in "".join(str(m[4]) for m in iex.pushed)
    # then: opening, the typed line and closing are audited with the user
    opened = _audit("console.opened", row.pk)
    assert {e.actor for e in opened} == {"user:mallory-manager", "user:victor"}
    assert [(e.actor, e.details["text"]) for e in _audit("console.input", row.pk)] == [
        ("user:mallory-manager", "1 + 1")
    ]
    wait_until(lambda: len(_audit("console.closed", row.pk)) == 2)


def test_it_refuses_the_outsider_the_anonymous_and_another_site(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    hub = live_hub()
    row = device_services.create_device("test", creds.tenant.product, "dev-private")

    async def refused(user: User | None, origin: str | None = None) -> int:
        with pytest.raises(InvalidStatus) as excinfo:
            await open_console(hub.ws_url, row.pk, user, origin=origin)
        return excinfo.value.response.status_code

    # when / then: an admin of another organization, nobody, a foreign page, a missing device
    assert run(refused(creds.tenant.outsider)) == 403
    assert run(refused(None)) == 403
    assert run(refused(creds.tenant.admin, origin="http://evil.example")) == 403

    async def missing() -> None:
        with pytest.raises(InvalidStatus):
            await open_console(hub.ws_url, row.pk + 1000, creds.tenant.admin)

    run(missing())
    assert not _audit("console.opened", row.pk)


def test_it_refuses_an_admin_the_device_of_another_organization(
    live_hub: HubLauncher, creds: Credentials, other_tenant: Tenant
) -> None:
    # given: a device of globex; alice is admin of acme only
    hub = live_hub()
    foreign = device_services.create_device("test", other_tenant.product, "globex-1")

    async def scenario() -> dict[str, Any]:
        with pytest.raises(InvalidStatus):
            await open_console(hub.ws_url, foreign.pk, creds.tenant.admin)
        # and globex's own admin gets in
        operator = await open_console(hub.ws_url, foreign.pk, other_tenant.admin)
        metadata = await operator.next("metadata")
        await operator.ws.close()
        return metadata

    metadata = run(scenario())
    assert metadata["identifier"] == "globex-1" and metadata["can_write"] is True


def test_it_uploads_a_file_in_order_and_passes_device_files_to_the_browser(
    live_hub: HubLauncher, creds: Credentials, iex_device: IExDevice
) -> None:
    # given
    hub = live_hub()
    row = device_services.create_device("test", creds.tenant.product, "dev-files")
    device, iex = iex_device(hub.ws_url, "dev-files")
    content = bytes(range(256)) * 9  # 2304 bytes: three chunks, the last one short

    async def scenario() -> tuple[
        dict[str, Any],
        dict[str, Any],
        dict[str, Any],
        dict[str, Any],
        tuple[dict[str, Any], dict[str, Any], dict[str, Any]],
    ]:
        await device.connect()
        iex.start()
        operator = await open_console(hub.ws_url, row.pk, creds.tenant.admin)
        await operator.next("status", connected=True)
        # when: the browser uploads
        await operator.send("file-data/start", {"filename": "notes.bin", "size": len(content)})
        for index in range(3):
            chunk = base64.b64encode(content[index * 1024 : (index + 1) * 1024]).decode()
            await operator.send("file-data", {"filename": "notes.bin", "chunk": index, "data": chunk})
        await operator.send("file-data/stop", {"filename": "notes.bin"})
        done = await operator.next("upload_progress", done=True)
        await eventually(lambda: "notes.bin" in iex.finished)
        # when: an out-of-order chunk and an oversized announcement
        await operator.send("file-data/start", {"filename": "bad.bin", "size": 10})
        await operator.send("file-data", {"filename": "bad.bin", "chunk": 1, "data": "AAAA"})
        out_of_order = await operator.next("error")
        await operator.send("file-data/start", {"filename": "big.bin", "size": 10_485_761})
        too_big = await operator.next("error")
        await operator.send("file-data/start", {"filename": "../etc/passwd", "size": 1})
        traversal = await operator.next("error")
        # when: the device sends a file (NervesHubLink.send_file/1)
        await device.push("console", "file-data/start", {"filename": "log.txt"})
        await device.push("console", "file-data", {"filename": "log.txt", "chunk": 0, "data": "aGVsbG8="})
        await device.push("console", "file-data/stop", {"filename": "log.txt"})
        start = await operator.next("file-data/start")
        data = await operator.next("file-data")
        stop = await operator.next("file-data/stop")
        await asyncio.sleep(0.3)
        await operator.ws.close()
        await iex.stop()
        await device.close()
        return done, out_of_order, too_big, traversal, (start, data, stop)

    done, out_of_order, too_big, traversal, from_device = run(scenario())
    # then: the device wrote exactly the bytes, from start to stop, in order
    assert iex.files["notes.bin"] == content
    assert iex.uploaded_by["notes.bin"] == "alice"
    events = [m[3] for m in iex.pushed if m[4].get("filename") == "notes.bin"]
    assert events == ["file-data/start", "file-data", "file-data", "file-data", "file-data/stop"]
    assert [m[4]["chunk"] for m in iex.pushed if m[3] == "file-data" and m[4]["filename"] == "notes.bin"] == [0, 1, 2]
    assert done == {"filename": "notes.bin", "received": 2304, "size": 2304, "done": True}
    # then: the refusals, and nothing of them reached the device's files
    assert "chunk 0 was expected" in out_of_order["message"]
    assert "limit" in too_big["message"]
    assert "file name" in traversal["message"]
    assert set(iex.finished) == {"notes.bin"}
    assert "../etc/passwd" not in iex.files
    # then: the device's file reached the browser unchanged
    assert from_device == (
        {"filename": "log.txt"},
        {"filename": "log.txt", "chunk": 0, "data": "aGVsbG8="},
        {"filename": "log.txt"},
    )
    wait_until(lambda: len(_audit("console.file_received", row.pk)) == 1)
    uploaded = _audit("console.file_uploaded", row.pk)
    assert [(e.actor, e.details) for e in uploaded] == [("user:alice", {"filename": "notes.bin", "bytes": 2304})]
    received = _audit("console.file_received", row.pk)
    assert [(e.actor, e.details) for e in received] == [("user:alice", {"filename": "log.txt", "bytes": 5})]
    assert [e.details["filename"] for e in _audit("console.file_upload_aborted", row.pk)] == ["bad.bin"]


def test_it_refuses_uploads_to_a_console_older_than_2_0_0(
    live_hub: HubLauncher, creds: Credentials, iex_device: IExDevice
) -> None:
    # given: a device whose console cannot take files
    hub = live_hub()
    row = device_services.create_device("test", creds.tenant.product, "dev-old")
    device, iex = iex_device(hub.ws_url, "dev-old", console_version="1.0.0")

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        await device.connect()
        iex.start()
        operator = await open_console(hub.ws_url, row.pk, creds.tenant.admin)
        metadata = await operator.next("metadata")
        # when
        await operator.send("file-data/start", {"filename": "a.txt", "size": 1})
        refusal = await operator.next("error")
        await operator.ws.close()
        await iex.stop()
        await device.close()
        return metadata, refusal

    metadata, refusal = run(scenario())
    # then
    assert metadata["files"] is False and metadata["version"] == "1.0.0"
    assert "does not take files" in refusal["message"]
    assert not [m for m in iex.pushed if m[3].startswith("file-data")]


def test_it_shows_a_device_disconnect_and_resumes_when_it_comes_back(
    live_hub: HubLauncher, creds: Credentials, iex_device: IExDevice
) -> None:
    # given: a late joiner gets the scrollback
    hub = live_hub({"CONSOLE_DEVICE_CHECK_SECONDS": "1"})
    row = device_services.create_device("test", creds.tenant.product, "dev-flaky")
    device, iex = iex_device(hub.ws_url, "dev-flaky")

    async def scenario() -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], str]:
        await device.connect()
        iex.start()
        await iex.up("Interactive Elixir (1.18.0)\r\n" + PROMPT)
        await asyncio.sleep(0.2)
        operator = await open_console(hub.ws_url, row.pk, creds.tenant.manager)
        scrollback = await operator.output_until(PROMPT)
        await operator.next("status", connected=True)
        # when: the device goes away
        await iex.stop()
        await device.close()
        gone = await operator.next("status", connected=False)
        await operator.send("dn", {"data": "x"})
        offline_error = await operator.next("error")
        # when: it comes back
        await device.connect()
        iex.start()
        back = await operator.next("status", connected=True)
        await operator.send("dn", {"data": "\r"})
        after = await operator.output_until('""\r\n')
        await operator.ws.close()
        await iex.stop()
        await device.close()
        return scrollback, gone, offline_error, back, after

    scrollback, gone, offline_error, back, after = run(scenario())
    assert "Interactive Elixir" in scrollback
    assert gone["connected"] is False and back["connected"] is True
    assert "not connected" in offline_error["message"]
    assert '""' in after


def test_it_closes_an_idle_console(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    hub = live_hub({"CONSOLE_IDLE_TIMEOUT": "1"})
    row = device_services.create_device("test", creds.tenant.product, "dev-idle")

    async def scenario() -> tuple[dict[str, Any], int | None]:
        operator = await open_console(hub.ws_url, row.pk, creds.tenant.manager)
        # when: nothing happens
        closed = await operator.next("closed", timeout=10)
        await asyncio.wait_for(operator.ws.wait_closed(), 5)
        return closed, operator.ws.close_code

    closed, code = run(scenario())
    # then
    assert "without input or output" in closed["reason"]
    assert code == 4000
    wait_until(lambda: [e.details["reason"] for e in _audit("console.closed", row.pk)] == ["idle"])


@pytest.mark.services
def test_it_relays_between_two_server_processes_through_redis(
    live_hub: HubLauncher, creds: Credentials, iex_device: IExDevice
) -> None:
    # given: the device on one hub process, the operator on another
    device_hub, operator_hub = live_hub(), live_hub()
    row = device_services.create_device("test", creds.tenant.product, "dev-remote")
    device, iex = iex_device(device_hub.ws_url, "dev-remote")

    async def scenario() -> str:
        await device.connect()
        iex.start()
        operator = await open_console(operator_hub.ws_url, row.pk, creds.tenant.admin)
        await operator.next("status", connected=True)
        # when
        await operator.send("window_size", {"height": 24, "width": 80})
        await operator.send("dn", {"data": "node()\r"})
        output = await operator.output_until(PROMPT)
        await operator.ws.close()
        await iex.stop()
        await device.close()
        return output

    output = run(scenario())
    # then
    assert '"node()"' in output
    assert iex.sizes == [{"height": 24, "width": 80}]
    assert [m[3] for m in iex.pushed] == ["window_size", "dn"]
