"""Device downloads: signed expiring URLs, Range as nerves_hub_link uses it, the
X-Accel-Redirect option, and the `update` payload."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import io
import random
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pytest_django.fixtures import Settings

from firmware import services
from firmware.downloads import FirmwareDownloadApp, parse_range, signed_path
from firmware.models import FirmwareStatus
from tests.conftest import Tenant
from tests.firmware.conftest import Uploader
from tests.support.fwup import FirmwareSpec, KeyPair, build_firmware
from tests.support.hub import HubLauncher

pytestmark = pytest.mark.django_db

PAYLOAD = random.Random(7).randbytes(3 * 1024 * 1024 + 123)


@pytest.fixture
def stored(firmware_root: Path) -> tuple[str, str]:
    (firmware_root / "1").mkdir()
    (firmware_root / "1" / "abc.fw").write_bytes(PAYLOAD)
    return "1/abc.fw", "0b6c6a37-4f0b-5c3e-9d7e-2b1f0a9c8d77"


async def _inner(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 299, "headers": []})
    await send({"type": "http.response.body", "body": b"django"})


def call(path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    sent: list[MutableMapping[str, Any]] = []

    async def run() -> None:
        requested = False
        forever = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await forever.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        await FirmwareDownloadApp(_inner)(scope, receive, send)

    asyncio.run(run())
    start = sent[0]
    assert start["type"] == "http.response.start"
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert not sent[-1].get("more_body", False)
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def test_it_serves_the_whole_file_with_accept_ranges(stored: tuple[str, str]) -> None:
    # given
    name, uuid = stored
    # when
    status, headers, body = call(signed_path(name, uuid))
    # then
    assert status == 200
    assert body == PAYLOAD
    assert headers["accept-ranges"] == "bytes"
    assert headers["content-length"] == str(len(PAYLOAD))


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, len(PAYLOAD) - 1),
        # nerves_hub_link resumes with an end one past the last byte: clamped.
        (f"bytes=1000-{len(PAYLOAD)}", 1000, len(PAYLOAD) - 1),
        (f"bytes=0-{len(PAYLOAD) * 2}", 0, len(PAYLOAD) - 1),
        ("bytes=-500", len(PAYLOAD) - 500, len(PAYLOAD) - 1),
        ("bytes=10-19, 30-39", 10, 19),  # only the first range is served
    ],
)
def test_it_answers_ranges_with_206(stored: tuple[str, str], header: str, first: int, last: int) -> None:
    # given
    name, uuid = stored
    # when
    status, headers, body = call(signed_path(name, uuid), {"Range": header})
    # then
    assert status == 206  # never 200 to a ranged request, even bytes=0-<size>
    assert headers["content-range"] == f"bytes {first}-{last}/{len(PAYLOAD)}"
    assert headers["content-length"] == str(last - first + 1)
    assert body == PAYLOAD[first : last + 1]


@pytest.mark.parametrize("header", [f"bytes={len(PAYLOAD)}-", "bytes=50-10", "bytes=-0", "items=0-1", "bytes=x-y"])
def test_it_answers_unsatisfiable_ranges_with_416(stored: tuple[str, str], header: str) -> None:
    # given
    name, uuid = stored
    # when
    status, headers, _ = call(signed_path(name, uuid), {"Range": header})
    # then
    assert status == 416
    assert headers["content-range"] == f"bytes */{len(PAYLOAD)}"


def test_it_ignores_range_when_if_range_does_not_match(stored: tuple[str, str]) -> None:
    # given
    name, uuid = stored
    # when
    status, _, body = call(signed_path(name, uuid), {"Range": "bytes=0-9", "If-Range": '"other"'})
    matching = call(signed_path(name, uuid), {"Range": "bytes=0-9", "If-Range": f'"{uuid}"'})
    # then
    assert status == 200 and body == PAYLOAD
    assert matching[0] == 206


def test_it_answers_head_without_a_body(stored: tuple[str, str]) -> None:
    # given
    name, uuid = stored
    # when
    status, headers, body = call(signed_path(name, uuid), method="HEAD")
    # then
    assert status == 200 and body == b"" and headers["content-length"] == str(len(PAYLOAD))


def test_it_refuses_expired_tampered_and_mismatched_links(stored: tuple[str, str]) -> None:
    # given
    name, uuid = stored
    expired = signed_path(name, uuid, ttl=-1)
    good = signed_path(name, uuid)
    token = good.split("/")[2]
    tampered = good.replace(token, token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    other_name = good.replace(f"{uuid}.fw", "ffffffff-0000-5000-8000-000000000000.fw")
    # when
    statuses = [call(path)[0] for path in (expired, tampered, other_name, "/firmware/nonsense/x.fw")]
    # then
    assert statuses == [403, 403, 403, 403]


def test_it_answers_404_when_the_file_is_gone_and_405_for_posts(stored: tuple[str, str], firmware_root: Path) -> None:
    # given
    name, uuid = stored
    path = signed_path(name, uuid)
    # when
    posted = call(path, method="POST")[0]
    (firmware_root / name).unlink()
    gone = call(path)[0]
    # then
    assert (posted, gone) == (405, 404)


def test_it_passes_other_paths_to_django(stored: tuple[str, str]) -> None:
    # when
    status, _, body = call("/admin/")
    # then
    assert (status, body) == (299, b"django")


def test_it_answers_with_x_accel_redirect_when_configured(stored: tuple[str, str], settings: Settings) -> None:
    # given
    settings.FIRMWARE_X_ACCEL_REDIRECT = "/protected-firmware/"
    name, uuid = stored
    # when
    status, headers, body = call(signed_path(name, uuid), {"Range": "bytes=5-"})
    # then: nginx does the Range part itself
    assert status == 200 and body == b""
    assert headers["x-accel-redirect"] == "/protected-firmware/1/abc.fw"
    assert headers["accept-ranges"] == "bytes"


def test_it_parses_ranges_like_rfc_9110() -> None:
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("bytes = 2 - 4", 10) == (2, 4)
    assert parse_range("bytes=-20", 10) == (0, 9)


def test_it_builds_the_update_payload(spec: FirmwareSpec, upload: Uploader, settings: Settings) -> None:
    # given
    settings.PUBLIC_URL = "https://hub.example.com"
    firmware = upload(spec)
    assert firmware.status == FirmwareStatus.VALID
    # when
    payload = services.update_payload(firmware, deployment_id=42)
    # then
    assert payload["firmware_url"].startswith("https://hub.example.com/firmware/")
    assert payload["firmware_url"].endswith(f"/{firmware.uuid}.fw")
    assert payload["firmware_meta"] == {
        "architecture": "arm",
        "author": "The Nerves Team",
        "description": "",
        "misc": "",
        "platform": "rpi4",
        "product": "widget",
        "uuid": firmware.uuid,
        "vcs_identifier": "",
        "version": "1.0.0",
    }
    assert payload["size"] == firmware.size
    assert payload["checksum"] == firmware.sha256.upper()
    assert payload["partials_checksums"] == [p.upper() for p in firmware.partial_sha256]
    assert payload["deployment_id"] == 42


def test_it_refuses_urls_for_firmware_that_is_not_valid(spec: FirmwareSpec, upload: Uploader) -> None:
    # given
    spec.key = None
    firmware = upload(spec)
    # then
    with pytest.raises(ValueError):
        services.download_url(firmware)


def _device_get(host: str, port: int, path: str, retry: int, range_header: str | None) -> http.client.HTTPResponse:
    # Headers in the order nerves_hub_link's downloader sends them (docs/device-protocol.md §6.4).
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.putrequest("GET", path, skip_accept_encoding=True)
    connection.putheader("user-agent", "NHL/2.12.0")
    connection.putheader("x-retry-number", str(retry))
    if range_header:
        connection.putheader("range", range_header)
    connection.putheader("content-type", "application/octet-stream")
    connection.endheaders()
    return connection.getresponse()


def test_it_resumes_a_device_download_from_a_real_hub(
    live_hub: HubLauncher,
    tenant: Tenant,
    keypair: KeyPair,
    spec: FirmwareSpec,
    firmware_root: Path,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given: a valid firmware of a few MiB and a hub process on the same storage
    spec.resources = {"rootfs.img": random.Random(3).randbytes(5 * 1024 * 1024)}
    data = build_firmware(spec)
    # Committed data means on_commit runs now; validate here, not through a broker.
    monkeypatch.setattr(services, "_dispatch_validation", lambda firmware_id: None)
    firmware = services.upload_firmware(tenant.admin, tenant.product, io.BytesIO(data), "a.fw")
    services.validate_firmware(firmware.pk)
    firmware.refresh_from_db()
    assert firmware.status == FirmwareStatus.VALID
    hub = live_hub({"FIRMWARE_ROOT": str(firmware_root), "SECRET_KEY": settings.SECRET_KEY})
    settings.PUBLIC_URL = hub.http_url
    url = urlsplit(services.update_payload(firmware)["firmware_url"])
    # when: the first attempt breaks off after 1 MiB + 5 bytes
    first = _device_get(url.hostname or "", url.port or 80, url.path, 0, None)
    content_length = int(first.headers["content-length"])
    received = first.read(1024 * 1024 + 5)
    first.close()
    # ... and the device resumes with its off-by-one end (resume_from + content_length)
    second = _device_get(url.hostname or "", url.port or 80, url.path, 1, f"bytes={len(received)}-{content_length}")
    rest = second.read()
    # then
    assert first.status == 200 and first.headers["accept-ranges"] == "bytes"
    assert content_length == len(data)
    assert second.status == 206
    assert second.headers["content-range"] == f"bytes {len(received)}-{len(data) - 1}/{len(data)}"
    whole = received + rest
    assert hashlib.sha256(whole).hexdigest() == firmware.sha256
    assert whole == data


def _rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status").read().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_it_does_not_buffer_the_file_for_a_slow_device(
    live_hub: HubLauncher, firmware_root: Path, settings: Settings
) -> None:
    # given: a 48 MB file and a device that reads 1 MiB and then stalls
    (firmware_root / "9").mkdir()
    (firmware_root / "9" / "slow.fw").write_bytes(bytes(48 * 1024 * 1024))
    hub = live_hub({"FIRMWARE_ROOT": str(firmware_root), "SECRET_KEY": settings.SECRET_KEY})
    path = signed_path("9/slow.fw", "11111111-2222-5333-8444-555555555555")
    warm = _device_get("127.0.0.1", hub.port, path, 0, "bytes=0-10")
    warm.read()
    baseline = _rss(hub.process.pid)
    # when
    response = _device_get("127.0.0.1", hub.port, path, 0, None)
    response.read(1024 * 1024)
    time.sleep(1.5)
    stalled = _rss(hub.process.pid) - baseline
    rest = response.read()
    # then: daphne alone would hold the unsent ~40 MB in its write buffer
    assert stalled < 16 * 1024 * 1024, stalled
    assert len(rest) == 47 * 1024 * 1024
