"""The console's rules without sockets: access, scrollback, uploads, attribution."""

from __future__ import annotations

import base64

import pytest

from console import services
from console.services import AUDIT_INPUT_CHARS, InputRecorder, Scrollback, UploadRefused, UploadTracker
from devices import services as device_services
from nerveshub.tenancy.models import Role
from tests.conftest import Tenant


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_it_gives_write_access_to_manage_and_admin_and_watching_to_view(tenant: Tenant) -> None:
    # given
    device = device_services.create_device("test", tenant.product, "dev-roles")
    # when
    roles = {
        name: services.console_access(user, device.pk)
        for name, user in [("admin", tenant.admin), ("manager", tenant.manager), ("viewer", tenant.viewer)]
    }
    # then
    assert {name: (a.role, a.can_write) for name, a in roles.items() if a} == {
        "admin": (Role.ADMIN, True),
        "manager": (Role.MANAGE, True),
        "viewer": (Role.VIEW, False),
    }
    assert services.console_access(tenant.outsider, device.pk) is None


def test_it_hides_deleted_devices_even_from_admins(tenant: Tenant) -> None:
    # given
    device = device_services.create_device("test", tenant.product, "dev-gone")
    device_services.soft_delete("test", type(device).objects.filter(pk=device.pk))
    # when / then
    assert services.console_access(tenant.admin, device.pk) is None


def test_it_keeps_the_last_1024_lines_and_the_unfinished_one() -> None:
    # given
    scrollback = Scrollback()
    # when
    for n in range(1500):
        scrollback.add(f"line {n}\n")
    scrollback.add("iex(1)> ")
    # then
    lines = scrollback.text().split("\n")
    assert len(lines) == 1025
    assert lines[0] == "line 476" and lines[-2] == "line 1499" and lines[-1] == "iex(1)> "


def test_it_refuses_an_upload_that_grows_past_its_size_or_stops_short() -> None:
    # given
    tracker = UploadTracker(max_size=100)
    tracker.start("a.bin", 3)
    # when / then: more than announced
    with pytest.raises(UploadRefused, match="larger than"):
        tracker.chunk("a.bin", 0, _b64(b"abcd"))
    # when / then: stopped before all bytes came
    tracker.abort()
    tracker.start("b.bin", 3)
    tracker.chunk("b.bin", 0, _b64(b"ab"))
    with pytest.raises(UploadRefused, match="stopped at 2 of 3"):
        tracker.stop("b.bin")
    # when / then: a second upload while one runs
    with pytest.raises(UploadRefused, match="still being uploaded"):
        tracker.start("c.bin", 1)


def test_it_attributes_typed_lines_as_a_person_would_read_them() -> None:
    # given
    recorder = InputRecorder()
    # when
    lines = recorder.add("ls -l\x7f\x7fla\r") + recorder.add("\x1b[A\r") + recorder.add("x" * AUDIT_INPUT_CHARS)
    # then: backspaces applied, control characters escaped, long input cut into lines
    assert lines == ["ls la", "\\x1b[A", "x" * AUDIT_INPUT_CHARS]
    assert recorder.add("pending") == [] and recorder.flush() == "pending"


def test_it_bounds_the_scrollback_in_bytes_and_never_cuts_a_character() -> None:
    # given: 4 KiB kept, lines of at most 1000 bytes
    scrollback = Scrollback(max_bytes=4096, max_line_bytes=1000)
    # when: a device prints 1 MB of two- and four-byte characters without a newline
    for _ in range(250):
        scrollback.add("é😀" * 666)
    # then: a bounded tail, every piece whole UTF-8, the newest output kept
    assert scrollback.size <= 4096 + 1000
    assert len(scrollback.text().encode()) == scrollback.size
    assert scrollback.text().endswith("é😀" * 100)
    # when: ordinary lines follow
    scrollback.add("done\niex> ")
    # then
    assert scrollback.text().endswith("é😀done\niex> ")
