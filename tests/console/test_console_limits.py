"""What a faulty (or hostile) device and a foreign page can do to the console:
output without newlines, a scrollback larger than one websocket message, and a
socket opened from another origin. Real hub processes and real sockets; the
operators' client keeps the websockets library's 1 MiB message limit, the size
daphne refuses to send."""

from __future__ import annotations

import pytest
from websockets.exceptions import InvalidStatus

from devices import services as device_services
from tests.console.conftest import PROMPT, IExDevice, Operator, open_console
from tests.devices.conftest import Credentials, run
from tests.support.hub import HubLauncher

MiB = 1024 * 1024
FRAME_CHARS = 200_000  # under DEVICE_MAX_FRAME_BYTES (256 KiB) with the frame around it


async def _replay(operator: Operator, marker: str) -> list[str]:
    """The `up` messages a new page receives until `marker`, and any soon after."""
    chunks: list[str] = []
    while marker not in "".join(chunks[-2:]):
        chunks.append(str((await operator.next("up", timeout=20))["data"]))
    try:
        while True:
            chunks.append(str((await operator.next("up", timeout=1))["data"]))
    except TimeoutError:
        pass
    return chunks


def test_it_keeps_a_bounded_tail_of_output_that_never_ends_a_line(
    live_hub: HubLauncher, creds: Credentials, iex_device: IExDevice
) -> None:
    # given: an operator watching; the default bounds (128 KiB + a 16 KiB line)
    hub = live_hub()
    row = device_services.create_device("test", creds.tenant.product, "dev-noeol")
    device, iex = iex_device(hub.ws_url, "dev-noeol")
    frames = (5 * MiB) // FRAME_CHARS + 1

    async def scenario() -> tuple[str, list[str], str]:
        await device.connect()
        watching = await open_console(hub.ws_url, row.pk, creds.tenant.admin)
        await watching.next("status", connected=True)
        # when: the device prints 5 MiB without a newline
        for index in range(frames):
            await device.push("console", "up", {"data": "x" * (FRAME_CHARS - 4) + f"{index:04d}"})
        await device.push("console", "up", {"data": "END-OF-OUTPUT"})
        live = await watching.output_until("END-OF-OUTPUT", timeout=60)
        # when: another operator opens the console
        late = await open_console(hub.ws_url, row.pk, creds.tenant.manager)
        replay = await _replay(late, "END-OF-OUTPUT")
        # then: the first operator is still connected and may type
        iex.start()
        await watching.send("dn", {"data": "\r"})
        echoed = await watching.output_until(PROMPT)
        await watching.ws.close()
        await late.ws.close()
        await iex.stop()
        await device.close()
        return live, replay, echoed

    live, replay, echoed = run(scenario())
    # then: watchers got everything; the hub kept only a bounded tail, the newest
    assert len(live) >= frames * FRAME_CHARS
    kept = "".join(replay)
    assert len(kept.encode()) <= 131_072 + 16_384
    assert kept.endswith(f"{frames - 1:04d}END-OF-OUTPUT")
    assert PROMPT in echoed


def test_it_replays_a_scrollback_over_1_mib_in_messages_the_socket_takes(
    live_hub: HubLauncher, creds: Credentials, iex_device: IExDevice
) -> None:
    # given: a hub keeping up to 4 MiB of scrollback, and a device that filled it
    # with 1024 lines of 3000 characters (3 MiB)
    hub = live_hub({"CONSOLE_SCROLLBACK_BYTES": str(4 * MiB)})
    row = device_services.create_device("test", creds.tenant.product, "dev-chatty")
    device, iex = iex_device(hub.ws_url, "dev-chatty")
    line = "y" * 2999 + "\n"

    async def scenario() -> tuple[list[list[str]], list[str], list[int | None]]:
        await device.connect()
        iex.start()
        watching = await open_console(hub.ws_url, row.pk, creds.tenant.admin)
        await watching.next("status", connected=True)
        for _ in range(16):
            await device.push("console", "up", {"data": line * 64})
        await device.push("console", "up", {"data": "LAST"})
        await watching.output_until("LAST", timeout=60)
        # when: two more operators open the console
        late = [await open_console(hub.ws_url, row.pk, user) for user in (creds.tenant.manager, creds.tenant.viewer)]
        replays = [await _replay(operator, "LAST") for operator in late]
        # then: every console is still open: the first one types, all see the echo
        await watching.send("dn", {"data": "1 + 1\r"})
        outputs = [await operator.output_until('"1 + 1"') for operator in (watching, *late)]
        codes = [operator.ws.close_code for operator in (watching, *late)]
        for operator in (watching, *late):
            await operator.ws.close()
        await iex.stop()
        await device.close()
        return replays, outputs, codes

    replays, outputs, codes = run(scenario())
    for replay in replays:
        assert len(replay) > 1  # in several messages
        assert sum(len(chunk) for chunk in replay) > MiB
        assert max(len(chunk) for chunk in replay) < MiB
        assert "".join(replay).endswith(line + "LAST")
    assert all('"1 + 1"' in output for output in outputs)
    assert codes == [None, None, None]


def test_it_refuses_an_origin_that_differs_in_scheme_or_port(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    hub = live_hub()
    row = device_services.create_device("test", creds.tenant.product, "dev-origin")
    foreign = [
        f"https://127.0.0.1:{hub.port}",  # another scheme
        f"http://127.0.0.1:{hub.port + 1}",  # another port
        "http://127.0.0.1",  # the default port
        f"http://127.0.0.1.evil.example:{hub.port}",  # another host
        "null",
    ]

    async def scenario() -> tuple[dict[str, int], list[bool]]:
        statuses = {}
        for origin in foreign:
            with pytest.raises(InvalidStatus) as refused:
                await open_console(hub.ws_url, row.pk, creds.tenant.admin, origin=origin)
            statuses[origin] = refused.value.response.status_code
        # and the hub's own origins are let in: PUBLIC_URL's, and the page's own
        # under another allowed host name
        opened = []
        for base in (hub.ws_url, f"ws://localhost:{hub.port}"):
            origin = base.replace("ws://", "http://")
            operator = await open_console(base, row.pk, creds.tenant.admin, origin=origin)
            opened.append((await operator.next("metadata"))["can_write"])
            await operator.ws.close()
        return statuses, opened

    statuses, opened = run(scenario())
    # then
    assert statuses == dict.fromkeys(foreign, 403)
    assert opened == [True, True]
