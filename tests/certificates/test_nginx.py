"""Certificate authentication end to end, as users deploy it: a device speaks TLS
1.2 with its client certificate to a real nginx (the shipped
deploy/nginx/nerveshub.conf), which forwards the certificate to a real hub
process, whose device socket accepts or refuses the join.

Skipped without an nginx binary, unless NERVESHUB_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import websockets
from django.db import connection

from certificates import pki, services, x509
from certificates.models import CACertificate, DeviceCertificate
from certificates.pki import Issued
from deployments.models import Deployment
from devices.models import Device
from devices.services import create_device
from nerveshub.tenancy import services as tenancy
from tests.certificates.nginx import (
    JOIN,
    Nginx,
    Outcome,
    device_tls_context,
    join_device,
    nginx_binary,
    start_nginx,
)
from tests.certificates.proof import register_ca
from tests.conftest import REQUIRE_SERVICES, Tenant
from tests.deployments.conftest import make_firmware
from tests.support.hub import HubLauncher, HubProcess, free_port
from tests.support.poll_client import DEFAULT_META, PollingDevice, check_update_shape

NOW = dt.datetime.now(dt.UTC)
OK = {"status": "ok", "response": {}}


@dataclass
class Front:
    nginx: Nginx
    hub: HubProcess
    tmp: Path

    def join(self, device: pki.Issued | None) -> Outcome:
        context = device_tls_context(self.nginx.server_ca, device, self.tmp)
        return asyncio.run(join_device(self.nginx.port, context))


@pytest.fixture
def front(live_hub: HubLauncher, tmp_path: Path) -> Iterator[Front]:
    binary = nginx_binary()
    if binary is None:
        if REQUIRE_SERVICES:
            pytest.fail("nginx is required (NERVESHUB_REQUIRE_SERVICES=1): apt-get install -y nginx-light")
        pytest.skip("nginx not installed: apt-get install -y nginx-light")
    # nginx reaches the hub from 127.0.0.1; other loopback addresses (127.0.0.2)
    # stand for the rest of the network.
    hub = live_hub({"TRUSTED_PROXIES": "127.0.0.1/32"})
    nginx = start_nginx(binary, tmp_path / "nginx", free_port(), hub.port)
    yield Front(nginx=nginx, hub=hub, tmp=tmp_path)
    nginx.stop()


def _register(tenant: Tenant, ca: pki.Issued, **kwargs: Any) -> CACertificate:
    return register_ca(tenant.admin, tenant.org, ca, description="fleet", **kwargs)


def _assert_refused_by_hub(front: Front, outcome: Outcome, reason: str) -> None:
    assert (outcome.status, outcome.reason, outcome.join_reply) == (401, "certificate refused", None), outcome
    # The device is told nothing specific; the operator's log says why.
    assert reason in front.hub.log()


def _assert_refused_by_nginx(outcome: Outcome) -> None:
    # Even with optional_no_ca nginx answers 400 "The SSL certificate error" to
    # a certificate outside its validity window: the request never reaches the hub.
    assert (outcome.status, outcome.join_reply) == (400, None), outcome


# --- Accepted ---------------------------------------------------------------------------


def test_it_provisions_a_device_just_in_time_and_knows_it_next_time(
    front: Front, tenant: Tenant, device_ca: Issued
) -> None:
    # given
    _register(tenant, device_ca, jitp_product=tenant.product, jitp_tags=["jitp", "field"])
    leaf = pki.sign_device(device_ca, "NK-0001")
    # when
    first = front.join(leaf)
    # then
    assert first.join_reply == OK, (first, front.hub.log())
    device = Device.objects.get(identifier="NK-0001")
    assert (device.product, device.tags) == (tenant.product, ["jitp", "field"])
    cert = DeviceCertificate.objects.get(device=device)
    assert cert.fingerprint == x509.fingerprint(leaf.cert)
    # when it connects again
    second = front.join(leaf)
    # then the recorded certificate is found: no second device, no second row
    assert second.join_reply == OK
    assert Device.objects.count() == 1
    assert DeviceCertificate.objects.count() == 1


def test_it_accepts_a_registered_device_with_a_certificate_from_its_ca(
    front: Front, tenant: Tenant, device_ca: Issued
) -> None:
    # given
    _register(tenant, device_ca)
    create_device("test", tenant.product, "NK-0002")
    # when
    outcome = front.join(pki.sign_device(device_ca, "NK-0002"))
    # then
    assert outcome.join_reply == OK, (outcome, front.hub.log())
    assert DeviceCertificate.objects.get().device.identifier == "NK-0002"


def test_it_accepts_a_nerves_key_chain_of_device_and_signer(front: Front, tenant: Tenant) -> None:
    # given a NervesKey-shaped signer registered as the org's Device CA
    signer = pki.create_ca("Signer", days=365, nerves_key_signer=True)
    _register(tenant, signer, jitp_product=tenant.product)
    leaf = pki.sign_device(signer, "NK-CHAIN")
    # when the device sends its certificate and the signer's (OTP :ssl builds the
    # chain from cacerts = [signer | ...])
    chained = pki.Issued(cert=leaf.cert, key=leaf.key)
    context = device_tls_context(front.nginx.server_ca, chained, front.tmp)
    chain_file = front.tmp / "chain.pem"
    chain_file.write_bytes(leaf.cert_pem + signer.cert_pem)
    context.load_cert_chain(chain_file, front.tmp / "device-key.pem")
    outcome = asyncio.run(join_device(front.nginx.port, context))
    # then nginx forwards the leaf and the hub provisions the device
    assert outcome.join_reply == OK, (outcome, front.hub.log())
    assert DeviceCertificate.objects.get().device.identifier == "NK-CHAIN"


# --- Refused ------------------------------------------------------------------------------


def test_it_refuses_a_certificate_from_an_unknown_ca(
    front: Front, tenant: Tenant, device_ca: Issued, other_ca: Issued
) -> None:
    _register(tenant, device_ca, jitp_product=tenant.product)
    _assert_refused_by_hub(front, front.join(pki.sign_device(other_ca, "NK-0003")), "unknown CA")
    assert not Device.objects.exists()


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (NOW - dt.timedelta(days=10), NOW - dt.timedelta(days=1)),  # expired
        (NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=10)),  # not yet valid
    ],
    ids=["expired", "not-yet-valid"],
)
def test_it_refuses_a_certificate_outside_its_validity(
    front: Front, tenant: Tenant, device_ca: Issued, start: dt.datetime, end: dt.datetime
) -> None:
    _register(tenant, device_ca, jitp_product=tenant.product)
    _assert_refused_by_nginx(front.join(pki.sign_device(device_ca, "NK-0004", not_before=start, not_after=end)))
    assert not Device.objects.exists()


# The revocation is made in this process and reaches the hub process's socket
# through the channel layer: that needs Redis.
@pytest.mark.services
def test_it_disconnects_and_then_refuses_a_revoked_certificate(front: Front, tenant: Tenant, device_ca: Issued) -> None:
    # given a connected device
    _register(tenant, device_ca, jitp_product=tenant.product)
    leaf = pki.sign_device(device_ca, "NK-0005")
    context = device_tls_context(front.nginx.server_ca, leaf, front.tmp)

    def revoke() -> None:
        services.revoke_device_certificates(tenant.admin, DeviceCertificate.objects.all())
        connection.close()  # this thread's own database connection

    async def connected_then_revoked() -> tuple[dict[str, object], int | None, float]:
        from websockets.asyncio.client import connect

        url = f"wss://127.0.0.1:{front.nginx.port}/socket/websocket?vsn=2.0.0"
        async with connect(url, ssl=context) as ws:
            await ws.send(json.dumps(["1", "1", "device", "phx_join", JOIN]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))[4]
            # when the certificate is revoked
            await asyncio.to_thread(revoke)
            revoked_at = time.monotonic()
            try:
                while True:  # pushes sent after the join may come first
                    await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed:
                # 1000 within seconds: the hub's "disconnect", not a crash (1011) or an idle timeout.
                return reply, ws.close_code, time.monotonic() - revoked_at

    reply, code, seconds = asyncio.run(connected_then_revoked())
    # then the socket was closed, and the certificate is refused from now on
    assert (reply, code) == (OK, 1000), front.hub.log()[-2000:]
    assert seconds < 3
    _assert_refused_by_hub(front, front.join(leaf), "certificate revoked")


def test_it_refuses_a_ca_of_another_org(
    front: Front, tenant: Tenant, other_tenant: Tenant, device_ca: Issued, other_ca: Issued
) -> None:
    # given the device exists only in acme, the CA is globex's
    create_device("test", tenant.product, "NK-0006")
    register_ca(tenant.outsider, other_tenant.org, other_ca)
    # when / then
    _assert_refused_by_hub(front, front.join(pki.sign_device(other_ca, "NK-0006")), "device not registered")
    assert not DeviceCertificate.objects.exists()


def test_it_refuses_a_self_signed_certificate(front: Front, tenant: Tenant, device_ca: Issued) -> None:
    _register(tenant, device_ca, jitp_product=tenant.product)
    _assert_refused_by_hub(front, front.join(pki.self_signed_device("NK-0007")), "self-signed")
    assert not Device.objects.exists()


def test_it_refuses_a_cn_clash_with_a_device_of_another_product(
    front: Front, tenant: Tenant, device_ca: Issued
) -> None:
    # given
    gizmo, _ = tenancy.get_or_create_product("test", tenant.org, "gizmo")
    create_device("test", gizmo, "NK-0008")
    _register(tenant, device_ca, jitp_product=tenant.product)
    # when / then
    _assert_refused_by_hub(front, front.join(pki.sign_device(device_ca, "NK-0008")), "another product")
    assert not DeviceCertificate.objects.exists()


def test_it_refuses_no_certificate_even_with_a_smuggled_header(front: Front, tenant: Tenant, device_ca: Issued) -> None:
    # given a valid device certificate, known to the hub
    _register(tenant, device_ca, jitp_product=tenant.product)
    leaf = pki.sign_device(device_ca, "NK-0009")
    assert front.join(leaf).join_reply == OK
    # when someone without the key sends that certificate as a header through nginx
    context = device_tls_context(front.nginx.server_ca, None, front.tmp)

    async def smuggle() -> Outcome:
        from websockets.asyncio.client import connect

        header = {"X-SSL-Client-Cert": quote(leaf.cert_pem.decode())}
        try:
            async with connect(
                f"wss://127.0.0.1:{front.nginx.port}/socket/websocket?vsn=2.0.0",
                ssl=context,
                additional_headers=header,
            ):
                return Outcome(status=101)
        except Exception as exc:
            return Outcome(status=getattr(getattr(exc, "response", None), "status_code", 0))

    # then nginx replaced the header: the hub saw no certificate
    assert asyncio.run(smuggle()).status == 401


def test_it_refuses_the_header_sent_straight_to_the_hub(front: Front, tenant: Tenant, device_ca: Issued) -> None:
    # given a valid, known device certificate
    _register(tenant, device_ca, jitp_product=tenant.product)
    leaf = pki.sign_device(device_ca, "NK-0010")
    assert front.join(leaf).join_reply == OK
    # when a peer that is not the proxy sends it to the hub process itself
    request = (
        "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{front.hub.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"X-SSL-Client-Cert: {quote(leaf.cert_pem.decode())}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", front.hub.port), timeout=10, source_address=("127.0.0.2", 0)) as sock:
        sock.sendall(request.encode())
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    # then
    assert status_line.startswith(b"HTTP/1.1 401"), status_line
    assert "not in TRUSTED_PROXIES" in front.hub.log()


@pytest.mark.filterwarnings("ignore:The asyncore module is deprecated:DeprecationWarning")
def test_it_fails_the_handshake_when_the_key_does_not_match_the_certificate(
    front: Front, tenant: Tenant, device_ca: Issued
) -> None:
    # given a device certificate, and a client holding another key (Python's ssl
    # refuses to load such a pair, tlslite-ng does not check)
    try:
        import tlslite
    except ImportError:
        if REQUIRE_SERVICES:
            raise
        pytest.skip("tlslite-ng not installed (requirements-dev.txt)")
    _register(tenant, device_ca, jitp_product=tenant.product)
    leaf = pki.sign_device(device_ca, "NK-0011")

    def handshake(key_pem: bytes) -> str:
        chain = tlslite.X509CertChain()
        chain.parsePemList(leaf.cert_pem.decode())
        key = tlslite.parsePEMKey(key_pem.decode(), private=True)
        settings = tlslite.HandshakeSettings()
        settings.minVersion = settings.maxVersion = (3, 3)  # TLS 1.2
        with socket.create_connection(("127.0.0.1", front.nginx.port), timeout=10) as sock:
            connection = tlslite.TLSConnection(sock)
            try:
                connection.handshakeClientCert(chain, key, settings=settings)
                connection.write(b"GET /status/alive HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                # tlslite is untyped: read() gives bytes.
                answer: bytes = connection.read(max=4096)
                return answer.decode(errors="replace").split("\r\n", 1)[0]
            except (tlslite.TLSError, OSError) as exc:
                return f"handshake failed: {exc!r}"

    # when / then: the control with the right key gets an HTTP answer
    assert handshake(leaf.key_pem).startswith("HTTP/1.1 200")
    # and with the wrong key nginx ends the handshake
    assert handshake(pki.sign_device(device_ca, "NK-0011").key_pem).startswith("handshake failed")


# --- Polling devices (docs/polling.md) -------------------------------------------------


def test_a_polling_device_gets_its_update_through_nginx_and_one_without_a_certificate_403(
    front: Front, tenant: Tenant, device_ca: Issued
) -> None:
    # given: a registered device on firmware A, an active deployment to B
    _register(tenant, device_ca)
    create_device("test", tenant.product, "NK-POLL")
    a, b = make_firmware(tenant.product, "1.0.0"), make_firmware(tenant.product, "2.0.0")
    deployment = Deployment.objects.create(
        org=tenant.org, product=tenant.product, name="poll", firmware=b, is_active=True
    )
    meta = {**DEFAULT_META, "uuid": a.uuid or "", "version": "1.0.0", "vcs_identifier": "v-underscored"}
    context = device_tls_context(front.nginx.server_ca, pki.sign_device(device_ca, "NK-POLL"), front.tmp)
    device = PollingDevice("127.0.0.1", front.nginx.port, meta=meta, tls=context)
    # when
    me, update = device.me(), device.poll()
    # then
    assert (me.status, me.body) == (200, {"data": {"identifier": "NK-POLL"}}), (me, front.hub.log())
    data = check_update_shape(update.body)
    assert (data["update_available"], data["deployment_id"]) == (True, deployment.pk), update
    assert data["firmware_meta"]["uuid"] == b.uuid
    # the underscored header crossed nginx (underscores_in_headers on)
    assert Device.objects.get(identifier="NK-POLL").firmware_vcs_identifier == "v-underscored"
    # when a device presents no certificate, or smuggles one as a header
    for smuggled in ([], [("X-SSL-Client-Cert", quote(pki.sign_device(device_ca, "NK-POLL").cert_pem.decode()))]):
        anonymous = PollingDevice(
            "127.0.0.1",
            front.nginx.port,
            meta=meta,
            tls=device_tls_context(front.nginx.server_ca, None, front.tmp),
            extra_headers=list(smuggled),
        )
        refused = anonymous.poll()
        # then
        assert (refused.status, refused.body) == (403, {"status": "forbidden"}), refused
