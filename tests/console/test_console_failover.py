"""A server process dies (SIGKILL) while it relays a console. What the device and
the operator see, and that the session carries on through the processes that
are left."""

from __future__ import annotations

import asyncio
import signal

import pytest

from devices import services as device_services
from devices.models import Device
from tests.console.conftest import PROMPT, IExDevice, open_console
from tests.devices.conftest import Credentials, run, wait_until
from tests.support.hub import HubLauncher, HubProcess


def _kill(hub: HubProcess) -> None:
    hub.process.send_signal(signal.SIGKILL)
    hub.process.wait(10)


@pytest.mark.services
def test_the_operator_reopens_on_another_process_when_theirs_dies(
    live_hub: HubLauncher, creds: Credentials, iex_device: IExDevice
) -> None:
    # given: the device on one process, the operator's console on another
    device_hub, operator_hub = live_hub(), live_hub()
    row = device_services.create_device("test", creds.tenant.product, "dev-kept")
    device, iex = iex_device(device_hub.ws_url, "dev-kept")

    async def scenario() -> tuple[str, int | None, str, str]:
        await device.connect()
        iex.start()
        operator = await open_console(operator_hub.ws_url, row.pk, creds.tenant.admin)
        await operator.next("status", connected=True)
        await operator.send("dn", {"data": "1 + 1\r"})
        before = await operator.output_until(PROMPT)
        # when: the operator's process is killed mid-session
        _kill(operator_hub)
        await asyncio.wait_for(operator.ws.wait_closed(), 10)
        lost = operator.ws.close_code
        # then: the browser reopens on the process that is left; the device never noticed
        again = await open_console(device_hub.ws_url, row.pk, creds.tenant.admin)
        scrollback = await again.output_until(PROMPT)
        await again.next("status", connected=True)
        await again.send("dn", {"data": "2 + 2\r"})
        after = await again.output_until('"2 + 2"')
        await again.ws.close()
        await iex.stop()
        await device.close()
        return before, lost, scrollback, after

    before, lost, scrollback, after = run(scenario())
    assert '"1 + 1"' in before
    assert lost != 1000  # an abnormal close: the page shows it and reconnects
    assert '"1 + 1"' in scrollback  # the device's process kept the scrollback
    assert '"2 + 2"' in after
    assert device.rejoins == 0
    device.assert_no_violations()


@pytest.mark.services
def test_the_console_resumes_when_the_device_comes_back_through_another_process(
    live_hub: HubLauncher, creds: Credentials, iex_device: IExDevice
) -> None:
    # given: the device on one process, the operator's console on another
    device_hub, operator_hub = live_hub(), live_hub({"CONSOLE_DEVICE_CHECK_SECONDS": "1"})
    row = device_services.create_device("test", creds.tenant.product, "dev-moved")
    device, iex = iex_device(device_hub.ws_url, "dev-moved")

    async def scenario() -> tuple[str, str]:
        await device.connect()
        iex.start()
        operator = await open_console(operator_hub.ws_url, row.pk, creds.tenant.admin)
        await operator.next("status", connected=True)
        await operator.send("dn", {"data": "1 + 1\r"})
        before = await operator.output_until(PROMPT)
        # when: the device's process is killed; the device reconnects, the load
        # balancer sending it to the process that is left
        _kill(device_hub)
        await iex.stop()
        assert device.ws is not None  # connected above
        await asyncio.wait_for(device.ws.wait_closed(), 10)
        device.url = operator_hub.ws_url
        await device.connect()
        iex.start()
        # then: the operator's console, still open, follows the device to its new socket
        await operator.next("status", connected=True)
        await operator.send("dn", {"data": "3 + 3\r"})
        after = await operator.output_until('"3 + 3"')
        await operator.ws.close()
        await iex.stop()
        await device.close()
        return before, after

    before, after = run(scenario())
    assert '"1 + 1"' in before and '"3 + 3"' in after
    # the new socket replaced the dead process's (never closed) one, and its own
    # close is recorded
    wait_until(lambda: not Device.objects.get(pk=row.pk).socket_channel)
    device.assert_no_violations()
