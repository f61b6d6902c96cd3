"""CA ownership is proven, not first-come: tried from the side of an outsider
(admin of globex) who wants acme's devices. acme owns `device_ca` (it holds the
key); its certificate and its devices' certificates are public."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import json
from urllib.parse import quote

import pytest
import websockets
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from django.apps import apps
from pytest_django.fixtures import DjangoAssertNumQueries

from certificates import pki, services, x509
from certificates.models import CACertificate, DeviceCertificate
from certificates.pki import Issued
from certificates.services import CertificateError, CertificateRefused
from devices.models import Device
from devices.services import create_device
from nerveshub.tenancy.models import AuditEvent
from tests.certificates.nginx import JOIN
from tests.certificates.proof import add_unverified_ca, register_ca, verification_pem
from tests.conftest import Tenant
from tests.support.hub import HubLauncher


def _sign_without_aki(ca: pki.Issued, cn: str) -> pki.Issued:
    """A device certificate signed by `ca` that carries no AuthorityKeyIdentifier
    (RFC 5280 only asks CAs for one; plenty of device certificates omit it)."""
    key = pki.new_key()
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        cx509.CertificateBuilder()
        .subject_name(cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(cx509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=365))
        .add_extension(cx509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    assert x509.aki(cert) is None
    return pki.Issued(cert=cert, key=key)


def _record_directly(device: Device, leaf: pki.Issued) -> DeviceCertificate:
    """A certificate recorded for `device` before these rules existed (pasted on
    an upload page, or provisioned by a CA registered without proof)."""
    cert = leaf.cert
    return DeviceCertificate.objects.create(
        org_id=device.org_id,
        device=device,
        serial=str(cert.serial_number),
        subject=cert.subject.rfc4514_string(),
        fingerprint=x509.fingerprint(cert),
        public_key_fingerprint=x509.public_key_fingerprint(cert),
        aki=x509.aki(cert) or "",
        not_before=x509.not_before(cert),
        not_after=x509.not_after(cert),
        der=x509.der(cert),
    )


# --- Registration ---------------------------------------------------------------------


def test_it_refuses_an_outsider_who_registers_acmes_ca_first(
    tenant: Tenant, other_tenant: Tenant, device_ca: Issued
) -> None:
    # given globex pastes acme's (public) CA certificate before acme registers it
    with pytest.raises(CertificateError, match="proof of possession is required"):
        services.register_ca_certificate(
            tenant.outsider,
            other_tenant.org,
            device_ca.cert_pem,
            description="mine now",
            jitp_product=other_tenant.product,
            verification_pem=None,
        )
    # when acme, which holds the key, registers it
    register_ca(tenant.admin, tenant.org, device_ca, jitp_product=tenant.product)
    # then acme's devices are provisioned in acme
    device = services.authenticate_peer_certificate(pki.sign_device(device_ca, "SN-OWN-1").cert_pem)
    assert (device.org_id, device.product) == (tenant.org.pk, tenant.product)
    assert not CACertificate.objects.filter(org=other_tenant.org).exists()


def test_it_refuses_acmes_proof_replayed_by_an_outsider(
    tenant: Tenant, other_tenant: Tenant, device_ca: Issued
) -> None:
    # given a verification certificate acme made (it may leak: it is a certificate)
    proof = verification_pem(device_ca, tenant.org)
    # when / then globex cannot use it: the code inside names acme
    with pytest.raises(CertificateError, match="another organization"):
        services.register_ca_certificate(
            tenant.outsider, other_tenant.org, device_ca.cert_pem, description="", verification_pem=proof
        )


def test_an_outsider_cannot_squat_the_ski_with_a_look_alike_ca(
    tenant: Tenant, other_tenant: Tenant, device_ca: Issued
) -> None:
    # given globex proves possession of its own key in a CA that copies acme's
    # subject and SubjectKeyIdentifier (both are just bytes its author writes)
    key = pki.new_key()
    look_alike = (
        cx509.CertificateBuilder()
        .subject_name(device_ca.cert.subject)
        .issuer_name(device_ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(cx509.random_serial_number())
        .not_valid_before(device_ca.cert.not_valid_before_utc)
        .not_valid_after(device_ca.cert.not_valid_after_utc)
        .add_extension(cx509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(device_ca.cert.extensions.get_extension_for_class(cx509.SubjectKeyIdentifier).value, False)
        .sign(key, hashes.SHA256())
    )
    squatter = register_ca(
        tenant.outsider, other_tenant.org, pki.Issued(cert=look_alike, key=key), jitp_product=other_tenant.product
    )
    assert squatter.ski == x509.ski(device_ca.cert)
    # when acme registers the real CA
    register_ca(tenant.admin, tenant.org, device_ca, jitp_product=tenant.product)
    # then acme's devices go to acme: the signature decides, not the names
    device = services.authenticate_peer_certificate(pki.sign_device(device_ca, "SN-OWN-2").cert_pem)
    assert device.org_id == tenant.org.pk


# --- Unverified CAs (registered before proof was required) ----------------------------------


def test_an_unverified_claim_never_blocks_the_owner(
    tenant: Tenant, other_tenant: Tenant, device_ca: Issued, other_ca: Issued
) -> None:
    # given globex's first-come row for acme's CA, marked unverified by the migration
    claim = add_unverified_ca(other_tenant.org, device_ca, jitp_product=other_tenant.product)
    # when acme registers the CA with proof
    ca = register_ca(tenant.admin, tenant.org, device_ca, jitp_product=tenant.product)
    # then acme owns it and its devices land in acme
    assert ca.is_verified
    device = services.authenticate_peer_certificate(pki.sign_device(device_ca, "SN-OWN-3").cert_pem)
    assert device.org_id == tenant.org.pk
    # and globex cannot verify its claim: it has no key, and the key has an owner
    with pytest.raises(CertificateError, match="not signed by this CA"):
        services.verify_ca_certificate(tenant.outsider, claim, verification_pem(other_ca, other_tenant.org))
    with pytest.raises(CertificateError, match="already verified by another organization"):
        services.verify_ca_certificate(tenant.outsider, claim, verification_pem(device_ca, other_tenant.org))


def test_an_unverified_ca_provisions_no_device_until_verified(tenant: Tenant, device_ca: Issued) -> None:
    # given acme's CA as it was registered before proof was required
    ca = add_unverified_ca(tenant.org, device_ca, jitp_product=tenant.product)
    leaf = pki.sign_device(device_ca, "SN-JITP-U")
    # when / then JITP is refused
    with pytest.raises(CertificateRefused, match="not verified"):
        services.authenticate_peer_certificate(leaf.cert_pem)
    assert not Device.objects.exists()
    # and no existing device is authenticated through it either
    create_device("test", tenant.product, "SN-EXISTING")
    with pytest.raises(CertificateRefused, match="not verified"):
        services.authenticate_peer_certificate(pki.sign_device(device_ca, "SN-EXISTING").cert_pem)
    # when acme submits the verification certificate for the existing row
    services.verify_ca_certificate(tenant.admin, ca, verification_pem(device_ca, tenant.org))
    # then
    ca.refresh_from_db()
    assert ca.is_verified
    assert AuditEvent.objects.filter(action="ca_certificate.verified", org=tenant.org).count() == 1
    assert services.authenticate_peer_certificate(leaf.cert_pem).identifier == "SN-JITP-U"


def test_devices_captured_through_an_unverified_ca_are_refused(
    tenant: Tenant, other_tenant: Tenant, device_ca: Issued
) -> None:
    # given globex's first-come CA provisioned one of acme's devices before the
    # migration: the certificate is recorded on a globex device
    add_unverified_ca(other_tenant.org, device_ca, jitp_product=other_tenant.product)
    leaf = pki.sign_device(device_ca, "SN-CAPTURED")
    _record_directly(create_device("test", other_tenant.product, "SN-CAPTURED"), leaf)
    # when / then it no longer reaches globex, even before acme verifies its CA
    with pytest.raises(CertificateRefused, match="not verified"):
        services.authenticate_peer_certificate(leaf.cert_pem)
    # and once acme has proven ownership the reason is the organization
    register_ca(tenant.admin, tenant.org, device_ca)
    with pytest.raises(CertificateRefused, match="another organization"):
        services.authenticate_peer_certificate(leaf.cert_pem)


# --- Device certificates: issuer by signature, org of the device ------------------------------


def test_it_refuses_to_upload_another_orgs_certificate_without_an_aki(
    tenant: Tenant, other_tenant: Tenant, device_ca: Issued
) -> None:
    # given acme's CA is registered, and one of its device certificates has no AKI
    register_ca(tenant.admin, tenant.org, device_ca)
    leaf = _sign_without_aki(device_ca, "SN-NOAKI")
    globex_device = create_device("test", other_tenant.product, "SN-NOAKI")
    # when / then globex cannot pin it to its own device
    with pytest.raises(CertificateError, match="CA of another organization"):
        services.register_device_certificate(tenant.outsider, globex_device, leaf.cert_pem)
    assert not DeviceCertificate.objects.exists()


def test_it_records_a_certificate_without_an_aki_from_the_orgs_own_ca(tenant: Tenant, device_ca: Issued) -> None:
    # given
    register_ca(tenant.admin, tenant.org, device_ca, jitp_product=tenant.product)
    leaf = _sign_without_aki(device_ca, "SN-NOAKI-OWN")
    # when
    device = services.authenticate_peer_certificate(leaf.cert_pem)
    # then found by the issuer name and the signature
    assert (device.org_id, device.identifier) == (tenant.org.pk, "SN-NOAKI-OWN")


def test_it_refuses_a_device_of_one_org_with_a_certificate_from_anothers_ca(
    tenant: Tenant, other_tenant: Tenant, device_ca: Issued
) -> None:
    # given a globex device holding a certificate of acme's CA, recorded before the
    # upload check (with and without an AKI)
    register_ca(tenant.admin, tenant.org, device_ca)
    with_aki = pki.sign_device(device_ca, "SN-X1")
    without_aki = _sign_without_aki(device_ca, "SN-X2")
    _record_directly(create_device("test", other_tenant.product, "SN-X1"), with_aki)
    _record_directly(create_device("test", other_tenant.product, "SN-X2"), without_aki)
    # when / then authentication refuses both
    for leaf in (with_aki, without_aki):
        with pytest.raises(CertificateRefused, match="another organization"):
            services.authenticate_peer_certificate(leaf.cert_pem)


def test_a_certificate_pasted_before_its_ca_was_verified_stops_working_once_it_is(
    tenant: Tenant, other_tenant: Tenant, device_ca: Issued
) -> None:
    # given globex uploads a certificate from acme's CA, which acme has not registered yet
    leaf = _sign_without_aki(device_ca, "SN-EARLY")
    globex_device = create_device("test", other_tenant.product, "SN-EARLY")
    services.register_device_certificate(tenant.outsider, globex_device, leaf.cert_pem)
    assert services.authenticate_peer_certificate(leaf.cert_pem) == globex_device
    # when acme proves it owns the CA
    register_ca(tenant.admin, tenant.org, device_ca)
    # then the certificate no longer authenticates globex's device
    with pytest.raises(CertificateRefused, match="another organization"):
        services.authenticate_peer_certificate(leaf.cert_pem)


def test_an_unverified_ca_of_another_org_does_not_block_an_uploaded_certificate(
    tenant: Tenant, other_tenant: Tenant, device_ca: Issued
) -> None:
    # given globex's stale claim on acme's CA, which acme never registered
    add_unverified_ca(other_tenant.org, device_ca)
    device = create_device("test", tenant.product, "SN-UP")
    leaf = pki.sign_device(device_ca, "SN-UP")
    # when acme uploads its device's certificate
    services.register_device_certificate(tenant.manager, device, leaf.cert_pem)
    # then the device connects
    assert services.authenticate_peer_certificate(leaf.cert_pem) == device


# --- End to end: the hub's device socket behind a trusted proxy ------------------------------


async def _join_forwarded(port: int, leaf: pki.Issued) -> tuple[int, str]:
    """Join as nginx forwards a device's certificate (the hub trusts 127.0.0.1):
    101 and the join's status, or the refused upgrade's status and reason."""
    headers = {"X-SSL-Client-Cert": quote(leaf.cert_pem.decode())}
    try:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/socket/websocket?vsn=2.0.0", additional_headers=headers, open_timeout=20
        ) as ws:
            await ws.send(json.dumps(["1", "1", "device", "phx_join", JOIN]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 20))
            return 101, reply[4]["status"]
    except websockets.InvalidStatus as exc:
        return exc.response.status_code, exc.response.headers.get("nh-connection-error-reason", "")


def test_the_device_socket_refuses_what_ownership_rules_out(
    live_hub: HubLauncher, tenant: Tenant, other_tenant: Tenant, device_ca: Issued, other_ca: Issued
) -> None:
    # given acme's verified CA, a certificate of it recorded on a globex device,
    # and an unverified CA with JITP in globex
    hub = live_hub({"TRUSTED_PROXIES": "127.0.0.1/32"})
    register_ca(tenant.admin, tenant.org, device_ca, jitp_product=tenant.product)
    captured = _sign_without_aki(device_ca, "SN-E2E-CAPTURED")
    _record_directly(create_device("test", other_tenant.product, "SN-E2E-CAPTURED"), captured)
    add_unverified_ca(other_tenant.org, other_ca, jitp_product=other_tenant.product)
    # when
    own = asyncio.run(_join_forwarded(hub.port, pki.sign_device(device_ca, "SN-E2E-OWN")))
    cross = asyncio.run(_join_forwarded(hub.port, captured))
    unverified = asyncio.run(_join_forwarded(hub.port, pki.sign_device(other_ca, "SN-E2E-JITP")))
    # then acme's device joins, the others are refused and the log says why
    assert own == (101, "ok")
    assert cross == (401, "certificate refused")
    assert unverified == (401, "certificate refused")
    assert "another organization" in hub.log()
    assert "not verified" in hub.log()
    assert not Device.objects.filter(identifier="SN-E2E-JITP").exists()


# --- The migration ------------------------------------------------------------------------


def test_the_migration_marks_cas_unverified_unless_their_proof_was_audited(
    tenant: Tenant, other_tenant: Tenant, device_ca: Issued, other_ca: Issued
) -> None:
    # given two CAs as 0003 left them (no fingerprint yet), one registered with
    # the old optional proof, one without
    proven = add_unverified_ca(tenant.org, device_ca, public_key_fingerprint="", subject_hash="")
    pasted = add_unverified_ca(other_tenant.org, other_ca, public_key_fingerprint="", subject_hash="")
    for ca, proof in ((proven, True), (pasted, False)):
        AuditEvent.objects.create(
            org=ca.org,
            actor="alice",
            action="ca_certificate.registered",
            subject_type="cacertificate",
            subject_id=str(ca.pk),
            details={"proof_of_possession": proof},
        )
    migration = importlib.import_module("certificates.migrations.0004_fill_ca_verification")
    # when
    migration.fill(apps, None)
    # then
    proven.refresh_from_db()
    pasted.refresh_from_db()
    assert proven.verified_at == proven.created_at
    assert pasted.verified_at is None
    assert proven.public_key_fingerprint == x509.public_key_fingerprint(device_ca.cert)
    assert pasted.subject_hash == x509.name_hash(other_ca.cert.subject)


def test_a_known_certificate_of_the_orgs_own_ca_costs_one_more_query(
    tenant: Tenant, device_ca: Issued, django_assert_num_queries: DjangoAssertNumQueries
) -> None:
    # given a device provisioned by acme's verified CA
    register_ca(tenant.admin, tenant.org, device_ca, jitp_product=tenant.product)
    leaf = pki.sign_device(device_ca, "SN-COST")
    services.authenticate_peer_certificate(leaf.cert_pem)
    # when / then reconnecting reads the certificate, the CAs that could have
    # signed it (the issuer check), and touches last_used_at
    with django_assert_num_queries(3):
        assert services.authenticate_peer_certificate(leaf.cert_pem).identifier == "SN-COST"
