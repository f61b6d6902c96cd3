"""certificates.services: CA registration with proof of possession, device
certificate upload, revocation, and authentication of a presented chain."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from django.utils import timezone

from certificates import pki, services, x509
from certificates.models import CACertificate, DeviceCertificate
from certificates.pki import Issued
from certificates.services import CertificateError, CertificateRefused
from devices.models import Device
from devices.services import create_device, soft_delete
from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import AuditEvent
from tests.certificates.proof import register_ca, verification_pem
from tests.conftest import Tenant

NOW = dt.datetime.now(dt.UTC)


def _register(tenant: Tenant, ca: Issued, **kwargs: Any) -> CACertificate:
    kwargs.setdefault("verification_pem", verification_pem(ca, tenant.org))
    return services.register_ca_certificate(tenant.admin, tenant.org, ca.cert_pem, description="fleet CA", **kwargs)


def _actions() -> list[str]:
    return list(AuditEvent.objects.order_by("id").values_list("action", flat=True))


# --- CA registration ---------------------------------------------------------------


def test_it_registers_a_ca_and_audits_it(tenant: Tenant, device_ca: Issued) -> None:
    # when
    ca = _register(tenant, device_ca, jitp_product=tenant.product, jitp_tags=["jitp", "beta"])
    # then
    assert ca.ski == x509.ski(device_ca.cert)
    assert ca.subject == "CN=Acme Device CA"
    assert ca.jitp_tags == ["jitp", "beta"]
    assert bytes(ca.der) == x509.der(device_ca.cert)
    event = AuditEvent.objects.get(action="ca_certificate.registered")
    assert event.org_id == tenant.org.pk
    assert event.actor_user == tenant.admin


def test_it_refuses_a_certificate_that_is_not_a_ca(tenant: Tenant, device_ca: Issued) -> None:
    # given
    leaf = pki.sign_device(device_ca, "SN1")
    # when / then
    with pytest.raises(CertificateError, match="not a CA"):
        _register(tenant, pki.Issued(cert=leaf.cert, key=device_ca.key))
    assert not CACertificate.objects.exists()


def test_it_refuses_an_expired_ca_unless_expiration_is_not_checked(tenant: Tenant) -> None:
    # given
    old = pki.create_ca("Old CA", days=1, not_before=NOW - dt.timedelta(days=10))
    # when / then
    with pytest.raises(CertificateError, match="expired"):
        _register(tenant, old)
    assert _register(tenant, old, check_expiration=False).check_expiration is False


def test_it_refuses_a_ca_registered_twice_even_in_another_org(
    tenant: Tenant, other_tenant: Tenant, device_ca: Issued
) -> None:
    # given
    _register(tenant, device_ca)
    # when / then
    with pytest.raises(CertificateError, match="already has a CA certificate"):
        _register(tenant, device_ca)
    # even by another org holding the key: one key, one verified owner
    with pytest.raises(CertificateError, match="already verified by another organization"):
        register_ca(tenant.outsider, other_tenant.org, device_ca)
    assert CACertificate.objects.count() == 1


def test_it_computes_the_ski_of_a_ca_that_has_none(tenant: Tenant) -> None:
    # given a CA certificate without a SubjectKeyIdentifier extension
    key = pki.new_key()
    name = cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, "Bare CA")])
    bare = (
        cx509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(cx509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    ca = pki.Issued(cert=bare, key=key)
    # when
    row = _register(tenant, ca)
    # then devices it signs (AKI = SHA-1 of the key) find it
    assert row.ski == x509.computed_ski(bare)
    leaf = pki.sign_device(ca, "SN-bare")
    create_device("test", tenant.product, "SN-bare")
    assert services.authenticate_peer_certificate(leaf.cert_pem).identifier == "SN-bare"


def test_a_ca_whose_der_holds_url_escape_bytes_still_signs_its_devices(tenant: Tenant) -> None:
    # given a CA whose DER holds "%0A" and "%20" (here in its serial; a random
    # key or signature does so in about one certificate in 20,000)
    key = pki.new_key()
    name = cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, "Escaped CA")])
    serial = int.from_bytes(b"\x12%0A%20%2D\x34", "big")
    escaped = (
        cx509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(cx509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    assert b"%0A" in x509.der(escaped)
    ca = pki.Issued(cert=escaped, key=key)
    row = _register(tenant, ca, jitp_product=tenant.product)
    # when: the stored DER is read back to check a device's signature
    leaf = pki.sign_device(ca, "SN-escaped")
    device = services.authenticate_peer_certificate(leaf.cert_pem)
    # then
    assert x509.load_one(bytes(row.der)) == escaped
    assert device.identifier == "SN-escaped"


def test_it_refuses_a_jitp_product_of_another_org(tenant: Tenant, other_tenant: Tenant, device_ca: Issued) -> None:
    with pytest.raises(CertificateError, match="another organization"):
        _register(tenant, device_ca, jitp_product=other_tenant.product)


def test_it_accepts_proof_of_possession_in_the_cn(tenant: Tenant, device_ca: Issued) -> None:
    # given
    proof = pki.sign_device(device_ca, services.verification_code(tenant.org))
    # when
    ca = _register(tenant, device_ca, verification_pem=proof.cert_pem)
    # then
    assert AuditEvent.objects.get(action="ca_certificate.registered").details["proof_of_possession"] is True
    assert ca.pk


def test_it_accepts_proof_of_possession_in_a_san_uri(tenant: Tenant, device_ca: Issued) -> None:
    # given
    uri = services.VERIFICATION_URI_PREFIX + services.verification_code(tenant.org)
    proof = pki.sign_device(device_ca, "verification", san_uri=uri)
    # when / then
    assert _register(tenant, device_ca, verification_pem=proof.cert_pem).pk


def test_it_refuses_a_verification_code_of_another_org(tenant: Tenant, other_tenant: Tenant, device_ca: Issued) -> None:
    proof = pki.sign_device(device_ca, services.verification_code(other_tenant.org))
    with pytest.raises(CertificateError, match="another organization"):
        _register(tenant, device_ca, verification_pem=proof.cert_pem)


def test_it_refuses_an_expired_verification_code(
    tenant: Tenant, device_ca: Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given
    proof = pki.sign_device(device_ca, services.verification_code(tenant.org))
    monkeypatch.setattr(services, "VERIFICATION_MAX_AGE", -1)
    # when / then
    with pytest.raises(CertificateError, match="expired"):
        _register(tenant, device_ca, verification_pem=proof.cert_pem)


def test_it_refuses_a_verification_certificate_not_signed_by_the_ca(
    tenant: Tenant, device_ca: Issued, other_ca: Issued
) -> None:
    proof = pki.sign_device(other_ca, services.verification_code(tenant.org))
    with pytest.raises(CertificateError, match="not signed by this CA"):
        _register(tenant, device_ca, verification_pem=proof.cert_pem)


def test_it_refuses_a_verification_certificate_without_a_code(tenant: Tenant, device_ca: Issued) -> None:
    proof = pki.sign_device(device_ca, "just a name")
    with pytest.raises(CertificateError, match="no verification code"):
        _register(tenant, device_ca, verification_pem=proof.cert_pem)


def test_it_deletes_cas_and_audits_each(tenant: Tenant, device_ca: Issued) -> None:
    # given
    ca = _register(tenant, device_ca)
    # when
    count = services.delete_ca_certificates(tenant.admin, [ca, ca])
    # then
    assert count == 1
    assert _actions().count("ca_certificate.deleted") == 1


# --- Authentication ----------------------------------------------------------------


def test_it_provisions_an_unknown_device_just_in_time(tenant: Tenant, device_ca: Issued) -> None:
    # given
    _register(tenant, device_ca, jitp_product=tenant.product, jitp_tags=["jitp"], jitp_description="from CA")
    leaf = pki.sign_device(device_ca, "SN-JITP-1")
    # when
    device = services.authenticate_peer_certificate(leaf.cert_pem)
    # then
    assert (device.identifier, device.product, device.tags) == ("SN-JITP-1", tenant.product, ["jitp"])
    assert device.description == "from CA"
    cert = DeviceCertificate.objects.get(device=device)
    assert cert.fingerprint == x509.fingerprint(leaf.cert)
    assert cert.org_id == tenant.org.pk
    assert "device.created" in _actions()
    assert "device_certificate.recorded" in _actions()
    assert CACertificate.objects.get().last_used_at is not None


@pytest.mark.parametrize("cn", ["SN 0001", "SN\x000001", "SN\u202e1000", "SN\t1"])
def test_it_refuses_a_cn_that_is_not_a_valid_identifier_before_any_lookup(
    tenant: Tenant, device_ca: Issued, cn: str
) -> None:
    # given: a JITP CA and a certificate whose CN breaks the identifier rule
    _register(tenant, device_ca, jitp_product=tenant.product)
    leaf = pki.sign_device(device_ca, cn)
    # when / then: a refusal with the rule, not a database or validation error
    with pytest.raises(CertificateRefused, match="not a valid device identifier"):
        services.authenticate_peer_certificate(leaf.cert_pem)
    assert not Device.objects.exists()


def test_it_recognises_the_recorded_certificate_on_the_next_connection(tenant: Tenant, device_ca: Issued) -> None:
    # given
    _register(tenant, device_ca, jitp_product=tenant.product)
    leaf = pki.sign_device(device_ca, "SN-2")
    first = services.authenticate_peer_certificate(leaf.cert_pem)
    # when
    second = services.authenticate_peer_certificate(x509.der(leaf.cert))
    # then
    assert second == first
    assert DeviceCertificate.objects.count() == 1
    assert DeviceCertificate.objects.get().last_used_at is not None


def test_it_records_a_certificate_for_an_existing_device_without_jitp(tenant: Tenant, device_ca: Issued) -> None:
    # given
    _register(tenant, device_ca)
    existing = create_device("test", tenant.product, "SN-3")
    # when
    device = services.authenticate_peer_certificate(pki.sign_device(device_ca, "SN-3").cert_pem)
    # then
    assert device == existing


def test_it_refuses_an_unknown_device_when_the_ca_has_no_jitp(tenant: Tenant, device_ca: Issued) -> None:
    _register(tenant, device_ca)
    with pytest.raises(CertificateRefused, match="not registered"):
        services.authenticate_peer_certificate(pki.sign_device(device_ca, "SN-4").cert_pem)
    assert not Device.objects.exists()


def test_it_refuses_a_certificate_of_an_unknown_ca(tenant: Tenant, device_ca: Issued, other_ca: Issued) -> None:
    _register(tenant, device_ca, jitp_product=tenant.product)
    with pytest.raises(CertificateRefused, match="unknown CA"):
        services.authenticate_peer_certificate(pki.sign_device(other_ca, "SN-5").cert_pem)


@pytest.mark.parametrize(
    ("start", "end", "reason"),
    [
        (NOW - dt.timedelta(days=10), NOW - dt.timedelta(days=1), "expired"),
        (NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=10), "not yet valid"),
    ],
)
def test_it_refuses_a_new_certificate_outside_its_validity(
    tenant: Tenant, device_ca: Issued, start: dt.datetime, end: dt.datetime, reason: str
) -> None:
    _register(tenant, device_ca, jitp_product=tenant.product)
    leaf = pki.sign_device(device_ca, "SN-6", not_before=start, not_after=end)
    with pytest.raises(CertificateRefused, match=reason):
        services.authenticate_peer_certificate(leaf.cert_pem)


def test_it_checks_ca_expiry_only_when_asked(tenant: Tenant) -> None:
    # given a CA that expired after signing a still-valid device certificate
    old = pki.create_ca("Old CA", days=2, not_before=NOW - dt.timedelta(days=3))
    ca = _register(tenant, old, jitp_product=tenant.product, check_expiration=False)
    leaf = pki.sign_device(old, "SN-7", not_before=NOW - dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=9))
    # when / then
    assert services.authenticate_peer_certificate(leaf.cert_pem).identifier == "SN-7"
    CACertificate.objects.filter(pk=ca.pk).update(check_expiration=True)
    other = pki.sign_device(old, "SN-8", not_before=NOW - dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=9))
    with pytest.raises(CertificateRefused, match="CA certificate has expired"):
        services.authenticate_peer_certificate(other.cert_pem)


def test_it_refuses_a_revoked_certificate(tenant: Tenant, device_ca: Issued) -> None:
    # given
    _register(tenant, device_ca, jitp_product=tenant.product)
    leaf = pki.sign_device(device_ca, "SN-9")
    services.authenticate_peer_certificate(leaf.cert_pem)
    # when
    revoked = services.revoke_device_certificates(tenant.admin, DeviceCertificate.objects.all())
    # then
    assert revoked == 1
    assert services.revoke_device_certificates(tenant.admin, DeviceCertificate.objects.all()) == 0
    assert _actions().count("device_certificate.revoked") == 1
    with pytest.raises(CertificateRefused, match="revoked"):
        services.authenticate_peer_certificate(leaf.cert_pem)


def test_it_refuses_a_deleted_device(tenant: Tenant, device_ca: Issued) -> None:
    _register(tenant, device_ca, jitp_product=tenant.product)
    leaf = pki.sign_device(device_ca, "SN-10")
    services.authenticate_peer_certificate(leaf.cert_pem)
    soft_delete("test", Device.objects.all())
    with pytest.raises(CertificateRefused, match="deleted"):
        services.authenticate_peer_certificate(leaf.cert_pem)


def test_it_refuses_a_self_signed_certificate(tenant: Tenant, device_ca: Issued) -> None:
    _register(tenant, device_ca, jitp_product=tenant.product)
    with pytest.raises(CertificateRefused, match="self-signed"):
        services.authenticate_peer_certificate(pki.self_signed_device("SN-11").cert_pem)


def test_it_refuses_a_ca_of_another_org_for_a_device_of_this_org(
    tenant: Tenant, other_tenant: Tenant, device_ca: Issued, other_ca: Issued
) -> None:
    # given the device exists only in acme; globex registered the CA that signed it
    create_device("test", tenant.product, "SN-12")
    register_ca(tenant.outsider, other_tenant.org, other_ca)
    # when / then
    with pytest.raises(CertificateRefused, match="not registered"):
        services.authenticate_peer_certificate(pki.sign_device(other_ca, "SN-12").cert_pem)


def test_it_refuses_a_cn_clash_with_a_device_of_another_product(tenant: Tenant, device_ca: Issued) -> None:
    # given
    other_product, _ = tenancy.get_or_create_product("test", tenant.org, "gizmo")
    create_device("test", other_product, "SN-13")
    _register(tenant, device_ca, jitp_product=tenant.product)
    # when / then
    with pytest.raises(CertificateRefused, match="another product"):
        services.authenticate_peer_certificate(pki.sign_device(device_ca, "SN-13").cert_pem)
    assert not DeviceCertificate.objects.exists()


def test_it_refuses_a_second_key_for_a_device(tenant: Tenant, device_ca: Issued) -> None:
    # given
    _register(tenant, device_ca, jitp_product=tenant.product)
    services.authenticate_peer_certificate(pki.sign_device(device_ca, "SN-14").cert_pem)
    # when / then
    with pytest.raises(CertificateRefused, match="another key"):
        services.authenticate_peer_certificate(pki.sign_device(device_ca, "SN-14").cert_pem)


def test_it_accepts_a_renewed_certificate_with_the_same_key(tenant: Tenant, device_ca: Issued) -> None:
    # given
    _register(tenant, device_ca, jitp_product=tenant.product)
    first = pki.sign_device(device_ca, "SN-15")
    device = services.authenticate_peer_certificate(first.cert_pem)
    # when
    renewed = pki.sign_device(device_ca, "SN-15", key=first.key)
    # then
    assert services.authenticate_peer_certificate(renewed.cert_pem) == device
    assert DeviceCertificate.objects.filter(device=device).count() == 2


def test_it_takes_the_leaf_from_a_chain_with_the_signer(tenant: Tenant, device_ca: Issued) -> None:
    # given the chain a NervesKey device sends: signer first, then its own certificate
    _register(tenant, device_ca, jitp_product=tenant.product)
    leaf = pki.sign_device(device_ca, "SN-16")
    # when
    device = services.authenticate_peer_certificate(device_ca.cert_pem + leaf.cert_pem)
    # then
    assert device.identifier == "SN-16"


def test_it_refuses_a_certificate_naming_a_registered_ca_it_was_not_signed_by(
    tenant: Tenant, device_ca: Issued, other_ca: Issued
) -> None:
    # given a certificate whose issuer and AKI name the registered CA, signed by another key
    _register(tenant, device_ca, jitp_product=tenant.product)
    forged = pki.sign_device(pki.Issued(cert=device_ca.cert, key=other_ca.key), "SN-17")
    assert x509.aki(forged.cert) == x509.ski(device_ca.cert)
    # when / then
    with pytest.raises(CertificateRefused, match="signature does not verify"):
        services.authenticate_peer_certificate(forged.cert_pem)
    assert not Device.objects.exists()


def test_it_refuses_a_chain_without_a_device_certificate(tenant: Tenant, device_ca: Issued) -> None:
    with pytest.raises(CertificateRefused, match="no device certificate"):
        services.authenticate_peer_certificate(device_ca.cert_pem)


def test_it_refuses_garbage(db: None) -> None:
    with pytest.raises(CertificateRefused):
        services.authenticate_peer_certificate(b"not a certificate")


# --- Uploaded device certificates ------------------------------------------------------


def test_it_accepts_an_uploaded_self_signed_certificate(tenant: Tenant) -> None:
    # given
    device = create_device("test", tenant.product, "SN-20")
    leaf = pki.self_signed_device("SN-20")
    # when
    row = services.register_device_certificate(tenant.manager, device, leaf.cert_pem)
    # then
    assert row.device == device
    assert services.authenticate_peer_certificate(leaf.cert_pem) == device
    assert "device_certificate.registered" in _actions()


def test_it_refuses_to_upload_a_ca_or_a_duplicate(tenant: Tenant, device_ca: Issued) -> None:
    device = create_device("test", tenant.product, "SN-21")
    with pytest.raises(CertificateError, match="CA certificate"):
        services.register_device_certificate(tenant.manager, device, device_ca.cert_pem)
    leaf = pki.sign_device(device_ca, "SN-21")
    services.register_device_certificate(tenant.manager, device, leaf.cert_pem)
    with pytest.raises(CertificateError, match="already registered"):
        services.register_device_certificate(tenant.manager, device, leaf.cert_pem)


def test_it_refuses_an_upload_from_a_ca_of_another_org(tenant: Tenant, other_tenant: Tenant, other_ca: Issued) -> None:
    register_ca(tenant.outsider, other_tenant.org, other_ca)
    device = create_device("test", tenant.product, "SN-22")
    with pytest.raises(CertificateError, match="another organization"):
        services.register_device_certificate(tenant.manager, device, pki.sign_device(other_ca, "SN-22").cert_pem)


def test_it_refuses_a_key_that_belongs_to_another_device(tenant: Tenant) -> None:
    first = create_device("test", tenant.product, "SN-23")
    second = create_device("test", tenant.product, "SN-24")
    leaf = pki.self_signed_device("SN-23")
    services.register_device_certificate(tenant.manager, first, leaf.cert_pem)
    same_key = pki.sign_device(pki.Issued(cert=leaf.cert, key=leaf.key), "SN-24", key=leaf.key)
    with pytest.raises(CertificateError, match="another device"):
        services.register_device_certificate(tenant.manager, second, same_key.cert_pem)


def test_it_deletes_certificates_so_a_ca_signed_one_is_recorded_again(tenant: Tenant, device_ca: Issued) -> None:
    # given
    _register(tenant, device_ca, jitp_product=tenant.product)
    leaf = pki.sign_device(device_ca, "SN-25")
    services.authenticate_peer_certificate(leaf.cert_pem)
    # when
    assert services.delete_device_certificates(tenant.admin, DeviceCertificate.objects.all()) == 1
    # then
    assert services.authenticate_peer_certificate(leaf.cert_pem).identifier == "SN-25"
    assert _actions().count("device_certificate.deleted") == 1
    assert timezone.now()
