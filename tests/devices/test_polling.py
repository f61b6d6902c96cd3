"""Polling devices (docs/polling.md) from the device's side: a client written
from the HTTPS contract (tests/support/poll_client.py) against a real hub
process that trusts this test as its TLS proxy. The same routes behind the
shipped nginx: tests/certificates/test_nginx.py."""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone
from pytest_django.fixtures import Settings

from certificates import pki
from certificates.models import DeviceCertificate
from certificates.services import revoke_device_certificates
from deployments import rollout
from deployments.models import Deployment, DeviceUpdate, UpdateStatus
from devices.models import ConnectionStatus, Device
from firmware import services as firmware_services
from firmware.models import Firmware, FirmwareStatus, SigningKey
from nerveshub.tenancy.models import AuditEvent
from tests.certificates.proof import register_ca
from tests.conftest import Tenant
from tests.devices.conftest import Credentials, wait_until
from tests.support.fwup import FirmwareSpec, KeyPair, build_firmware, generate_keypair
from tests.support.hub import HubLauncher, HubProcess
from tests.support.nhl_client import DEFAULT_FW
from tests.support.poll_client import DEFAULT_META, PollingDevice, check_update_shape, download

FORBIDDEN = {"status": "forbidden"}


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.create_ca("Acme Polling CA")


@pytest.fixture(scope="module")
def other_ca() -> pki.Issued:
    return pki.create_ca("Globex Polling CA")


@dataclass
class Fleet:
    hub: HubProcess
    tenant: Tenant
    ca: pki.Issued
    keypair: KeyPair
    firmware_root: Path

    def device(
        self, identifier: str, *, ca: pki.Issued | None = None, meta: dict[str, str] | None = None
    ) -> PollingDevice:
        leaf = pki.sign_device(ca or self.ca, identifier)
        return PollingDevice(
            "127.0.0.1", self.hub.port, meta={**DEFAULT_META, **(meta or {})}, forwarded_cert=leaf.cert_pem
        )

    def firmware(self, version: str) -> tuple[Firmware, bytes]:
        """A real fwup file, uploaded and validated as a worker would."""
        data = build_firmware(FirmwareSpec(product="widget", version=version, key=self.keypair))
        firmware = firmware_services.upload_firmware(
            self.tenant.admin, self.tenant.product, io.BytesIO(data), f"{version}.fw"
        )
        firmware_services.validate_firmware(firmware.pk)
        firmware.refresh_from_db()
        assert firmware.status == FirmwareStatus.VALID, firmware.rejected_reason
        return firmware, data

    def deployment(self, firmware: Firmware, **fields: object) -> Deployment:
        return Deployment.objects.create(
            org=self.tenant.org,
            product=self.tenant.product,
            name=f"to-{firmware.version}",
            firmware=firmware,
            is_active=True,
            **fields,
        )


@pytest.fixture
def fleet(live_hub: HubLauncher, tenant: Tenant, ca: pki.Issued, tmp_path: Path, settings: Settings) -> Iterator[Fleet]:
    root = tmp_path / "firmware-store"
    root.mkdir()
    settings.STORAGES = {
        **settings.STORAGES,
        "firmware": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root), "base_url": None},
        },
    }
    keypair = generate_keypair()
    SigningKey.objects.create(org=tenant.org, name="release", key=keypair.public)
    register_ca(tenant.admin, tenant.org, ca, jitp_product=tenant.product)
    # 127.0.0.1 is this test acting as the TLS proxy; 127.0.0.2 is anybody else.
    hub = live_hub({"TRUSTED_PROXIES": "127.0.0.1/32", "FIRMWARE_ROOT": str(root)})
    yield Fleet(hub=hub, tenant=tenant, ca=ca, keypair=keypair, firmware_root=root)


def _uuid_meta(firmware: Firmware) -> dict[str, str]:
    return {"uuid": firmware.uuid or "", "version": firmware.version}


# --- Authentication -------------------------------------------------------------------


def test_it_refuses_devices_without_a_certificate_it_accepts(fleet: Fleet, other_ca: pki.Issued) -> None:
    # given: a device provisioned on its first poll, whose certificate is then revoked
    revoked = fleet.device("POLL-REVOKED")
    assert revoked.me().status == 200
    revoke_device_certificates("test", DeviceCertificate.objects.filter(device__identifier="POLL-REVOKED"))
    bare = fleet.device("POLL-BARE")
    bare.forwarded_cert = None
    unknown = fleet.device("POLL-UNKNOWN", ca=other_ca)  # a CA nobody registered
    self_signed = fleet.device("POLL-SELF")
    self_signed.forwarded_cert = pki.create_ca("POLL-SELF").cert_pem
    # a certificate the hub would accept, from an address that is not its proxy
    spoofed = fleet.device("POLL-SPOOF")
    spoofed.source = "127.0.0.2"
    for device in (bare, unknown, self_signed, revoked, spoofed):
        for path in ("/device/update", "/device/me"):
            # when
            result = device.get(path)
            # then
            assert (result.status, result.body) == (403, FORBIDDEN), (device.meta, path, result)
    assert not Device.objects.filter(identifier__in=["POLL-UNKNOWN", "POLL-SELF", "POLL-SPOOF"]).exists()


def test_a_first_poll_provisions_the_device_and_me_names_it(fleet: Fleet, client: Client) -> None:
    # given: the CA has a JITP product, the device was never seen
    device = fleet.device("POLL-JITP-1", meta={"vcs_identifier": "", "vcs-identifier": "abc123"})
    # when
    me = device.me()
    update = device.poll()
    # then
    assert (me.status, me.body) == (200, {"data": {"identifier": "POLL-JITP-1"}})
    assert update.status == 200
    assert check_update_shape(update.body) == {
        "update_available": False,
        "firmware_url": None,
        "firmware_meta": None,
        "deployment_id": None,
    }
    stored = Device.objects.select_related("product").get(identifier="POLL-JITP-1")
    assert stored.product == fleet.tenant.product
    assert (stored.firmware_uuid, stored.firmware_version, stored.firmware_platform) == (
        DEFAULT_META["uuid"],
        "0.1.0",
        "rpi4",
    )
    # the dashed spelling, which survives proxies that drop underscored names
    assert (stored.firmware_vcs_identifier, stored.fwup_version) == ("abc123", "1.13.2")
    assert stored.presence == ConnectionStatus.POLLING
    assert stored.get_presence_display() == "Polling"
    assert stored.last_polled_at is not None and stored.first_seen_at is not None
    # the pages say so
    client.force_login(fleet.tenant.viewer)
    listed = client.get("/org/acme/devices/?q=POLL-JITP-1").content.decode()
    page = client.get(f"/org/acme/devices/{stored.pk}/").content.decode()
    assert '<span class="badge polling">Polling</span>' in listed
    assert '<span class="badge polling">Polling</span>' in page and "Last polled" in page
    # when it polls again at once: presence is not written again (throttled)
    first = stored.last_polled_at
    assert device.poll().status == 200
    assert Device.objects.get(pk=stored.pk).last_polled_at == first


# --- Updates ------------------------------------------------------------------------------


def test_a_poll_on_firmware_a_gets_b_and_the_next_poll_on_b_succeeds(fleet: Fleet) -> None:
    # given: devices on A, a deployment to B
    a, _ = fleet.firmware("1.0.0")
    b, b_bytes = fleet.firmware("2.0.0")
    deployment = fleet.deployment(b)
    device = fleet.device("POLL-AB", meta=_uuid_meta(a))
    # when
    first = device.poll()
    # then: B's URL, and the bytes behind it are B's
    data = check_update_shape(first.body)
    assert first.status == 200 and data["update_available"] is True, first
    assert data["deployment_id"] == deployment.pk
    assert data["firmware_meta"]["uuid"] == b.uuid
    assert data["firmware_meta"]["version"] == "2.0.0"
    assert download(data["firmware_url"]) == b_bytes
    update = DeviceUpdate.objects.get(device__identifier="POLL-AB")
    assert (update.status, update.firmware_id, update.attempted_at is not None) == (UpdateStatus.RECEIVED, b.pk, True)
    # when it polls again before it installed it: the same update, no second slot
    again = device.poll()
    assert check_update_shape(again.body)["firmware_meta"]["uuid"] == b.uuid
    assert DeviceUpdate.objects.filter(device__identifier="POLL-AB").count() == 1
    # when it rebooted into B and polls
    device.running(b.uuid or "", "2.0.0")
    done = device.poll()
    # then
    assert check_update_shape(done.body)["update_available"] is False
    update.refresh_from_db()
    assert update.status == UpdateStatus.SUCCEEDED
    assert Device.objects.get(identifier="POLL-AB").firmware_uuid == b.uuid
    actions = list(AuditEvent.objects.filter(subject_id=str(update.device_id)).values_list("action", flat=True))
    assert {"update.requested", "update.started", "update.succeeded", "device.firmware_changed"} <= set(actions)


def test_a_poll_on_the_old_firmware_after_the_lease_counts_as_a_failure(fleet: Fleet) -> None:
    # given: a device that was handed the update, whose lease then ran out
    a, _ = fleet.firmware("1.0.0")
    b, _ = fleet.firmware("2.0.0")
    fleet.deployment(b, inflight_timeout_minutes=5, penalty_attempts=1)
    device = fleet.device("POLL-LEASE", meta=_uuid_meta(a))
    assert check_update_shape(device.poll().body)["update_available"] is True
    DeviceUpdate.objects.filter(device__identifier="POLL-LEASE").update(
        updated_at=timezone.now() - timedelta(minutes=6)
    )
    # when it polls, still on A
    late = device.poll()
    # then: the attempt expired (a failure), the penalty box holds the device
    assert check_update_shape(late.body)["update_available"] is False
    update = DeviceUpdate.objects.get(device__identifier="POLL-LEASE")
    assert update.status == UpdateStatus.EXPIRED
    assert update.reason == rollout.POLL_LEASE_EXPIRED
    stored = Device.objects.get(identifier="POLL-LEASE")
    assert stored.in_penalty_box()
    assert not DeviceUpdate.objects.inflight().filter(device=stored).exists()


def test_polling_and_socket_devices_share_the_concurrency_limit(
    fleet: Fleet, creds: Credentials, settings: Settings
) -> None:
    # given: two slots, two socket devices and two polling devices on A
    a, _ = fleet.firmware("1.0.0")
    b, _ = fleet.firmware("2.0.0")
    deployment = fleet.deployment(b, concurrent_updates=2)
    on_a = {**DEFAULT_FW, "nerves_fw_uuid": a.uuid, "nerves_fw_version": "1.0.0", "nerves_fw_architecture": "arm"}
    sockets = [creds.device(fleet.hub.ws_url, f"SOCK-{i}", firmware=dict(on_a)) for i in (1, 2)]
    pollers = [fleet.device(f"POLL-MIX-{i}", meta=_uuid_meta(a)) for i in (1, 2)]

    def inflight() -> set[str]:
        rows = DeviceUpdate.objects.inflight().filter(deployment=deployment)
        return set(rows.values_list("device__identifier", flat=True))

    async def scenario() -> None:
        for held in sockets:
            await held.connect()
        # the orchestrator fills both slots with the connected devices
        await asyncio.to_thread(
            wait_until, lambda: bool(rollout.run_rollout(deployment.pk)) and inflight() == {"SOCK-1", "SOCK-2"}
        )
        # when the polling devices ask: no free slot
        for poller in pollers:
            assert check_update_shape((await asyncio.to_thread(poller.poll)).body)["update_available"] is False
        assert await asyncio.to_thread(inflight) == {"SOCK-1", "SOCK-2"}
        # when SOCK-1 comes back on B, its slot is free: the first poll takes it
        await sockets[0].close()
        sockets[0].firmware = {**on_a, "nerves_fw_uuid": b.uuid, "nerves_fw_version": "2.0.0"}
        await sockets[0].connect()
        await asyncio.to_thread(wait_until, lambda: inflight() == {"SOCK-2"})
        first, second = [await asyncio.to_thread(p.poll) for p in pollers]
        assert check_update_shape(first.body)["update_available"] is True
        assert check_update_shape(second.body)["update_available"] is False
        assert await asyncio.to_thread(inflight) == {"SOCK-2", "POLL-MIX-1"}
        for held in sockets:
            await held.close()

    asyncio.run(scenario())
    statuses = dict(DeviceUpdate.objects.values_list("device__identifier", "status"))
    assert statuses["SOCK-1"] == UpdateStatus.SUCCEEDED
    assert statuses["POLL-MIX-1"] == UpdateStatus.RECEIVED
    assert "POLL-MIX-2" not in statuses


def test_a_device_of_another_org_gets_nothing_of_this_orgs_firmware(
    fleet: Fleet, other_tenant: Tenant, other_ca: pki.Issued
) -> None:
    # given: an active deployment here; a device of the other org claims to run this org's firmware
    a, _ = fleet.firmware("1.0.0")
    b, _ = fleet.firmware("2.0.0")
    fleet.deployment(b)
    register_ca(other_tenant.admin, other_tenant.org, other_ca, jitp_product=other_tenant.product)
    outsider = fleet.device("GLOBEX-1", ca=other_ca, meta=_uuid_meta(a))
    # when
    result = outsider.poll()
    # then
    data = check_update_shape(result.body)
    assert data == {"update_available": False, "firmware_url": None, "firmware_meta": None, "deployment_id": None}
    stored = Device.objects.get(identifier="GLOBEX-1")
    assert (stored.org, stored.deployment_id) == (other_tenant.org, None)
    assert not DeviceUpdate.objects.filter(device=stored).exists()
    assert (b.uuid or "?") not in result.raw.decode()


# --- Hostile requests ---------------------------------------------------------------------


def _raw_status(port: int, header: bytes) -> int:
    """The status a request with `header` gets, read off the socket (a client
    library may give up writing once the server closed); 0: closed unanswered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        try:
            conn.sendall(b"GET /device/update HTTP/1.1\r\nHost: hub\r\n" + header + b"\r\n\r\n")
            answer = conn.recv(1024)
        except ConnectionResetError:
            return 0
    return int(answer.split(b" ", 2)[1]) if answer else 0


def test_hostile_headers_get_a_4xx_with_a_reason_never_a_5xx(fleet: Fleet) -> None:
    # given: an accepted device
    device = fleet.device("POLL-HOSTILE")
    assert device.me().status == 200
    cases: list[tuple[str, list[tuple[str, str | bytes]], dict[str, str], str, int]] = [
        ("missing uuid", [], {"uuid": ""}, "X-NervesHub-uuid is missing", 400),
        ("latin-1 bytes", [("X-NervesHub-author", b"Jos\xe9")], {}, "not UTF-8", 400),
        ("an escape character", [("X-NervesHub-misc", "a\x1b[2Jb")], {}, "control characters", 400),
        ("a uuid that is no uuid", [], {"uuid": "x" * 37}, "not a firmware uuid", 400),
        ("a long value", [("X-NervesHub-description", "d" * 5000)], {}, "longer than", 400),
    ]
    for name, extra, meta, reason, status in cases:
        device.extra_headers = extra
        # the device sends the hostile value instead of its own
        replaced = {header.removeprefix("X-NervesHub-") for header, _ in extra}
        device.meta = {k: v for k, v in {**DEFAULT_META, **meta}.items() if k not in replaced and (v or k != "uuid")}
        # when
        result = device.poll()
        # then
        assert result.status == status and result.body is not None, (name, result)
        assert result.body["status"] == "bad request" and reason in result.body["reason"], (name, result.body)
    # a NUL, a header block past what the server reads at all: refused by the
    # HTTP server before the hub's code
    device.meta = {k: v for k, v in DEFAULT_META.items() if k != "misc"}
    device.extra_headers = [("X-NervesHub-misc", "a\x00b")]
    assert device.poll().status == 400
    # many headers over the server's 16 KiB: 400; one line over it: closed unanswered
    many = b"\r\n".join(b"X-NervesHub-misc-%d: %s" % (i, b"m" * 1000) for i in range(20))
    assert _raw_status(fleet.hub.port, many) == 400
    assert _raw_status(fleet.hub.port, b"X-NervesHub-misc: " + b"m" * 20_000) == 0
    # other methods
    device.extra_headers = []
    assert device.get("/device/update", method="POST").status == 405
    # /device/me needs no firmware headers, and nothing hostile reached the row
    device.extra_headers, device.meta = [], {}
    assert device.me().status == 200
    stored = Device.objects.get(identifier="POLL-HOSTILE")
    assert "\x00" not in stored.firmware_misc and stored.firmware_uuid == DEFAULT_META["uuid"]
