"""Business rules for Device CA certificates and device certificates, and the
certificate half of device authentication.

Decisions (docs/certificates.md has the long form):

* A device is named by its certificate's subject CN. A device certificate with
  an empty CN is refused.
* A CA certificate must be a CA (basicConstraints CA=true). When it carries no
  SubjectKeyIdentifier the hub computes one the RFC 5280 way (SHA-1 of the public
  key bits), which is what OpenSSL and `cryptography` put in the AKI of the
  certificates that CA signs.
* A known certificate (matched by SHA-256 fingerprint) is accepted without a
  validity check, like the reference server: a device in the field whose
  certificate expired must still be able to receive the firmware that renews it.
  Revocation is how an operator shuts a certificate out.
* A CA bound to a JITP product only speaks for devices of that product: its
  certificate is refused for an existing device of another product.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509 as cx509
from django.core import signing
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from certificates import x509
from certificates.models import CACertificate, DeviceCertificate
from devices import publish
from devices.models import Device
from devices.services import create_device
from nerveshub.tenancy.models import Organization, Product
from nerveshub.tenancy.services import Actor, audit

logger = logging.getLogger(__name__)

VERIFICATION_SALT = "nerveshub.certificates.ca-verification"
VERIFICATION_MAX_AGE = 3600  # seconds a verification code stays valid
VERIFICATION_URI_PREFIX = "urn:nerveshub:verify:"
LAST_USED_INTERVAL = dt.timedelta(minutes=1)  # at most one last_used write per certificate per minute


class CertificateError(ValueError):
    """A user-supplied certificate cannot be registered; the message says why."""


class CertificateRefused(Exception):
    """A connecting device's certificate is refused. `status` is the HTTP status
    the websocket upgrade answers with; `reason` is for logs and the audit trail,
    not for the device."""

    def __init__(self, reason: str, status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


# --- CA certificates ------------------------------------------------------------


def verification_code(org: Organization) -> str:
    """A hub-signed code bound to `org`, valid for VERIFICATION_MAX_AGE seconds.
    Short enough (about 50 characters) to be a certificate CN."""
    return signing.TimestampSigner(salt=VERIFICATION_SALT).sign(str(org.pk))


def _check_verification_code(org: Organization, code: str) -> None:
    try:
        value = signing.TimestampSigner(salt=VERIFICATION_SALT).unsign(code, max_age=VERIFICATION_MAX_AGE)
    except signing.SignatureExpired:
        raise CertificateError("the verification code has expired; ask for a new one") from None
    except signing.BadSignature:
        raise CertificateError("the verification certificate does not carry a valid verification code") from None
    if value != str(org.pk):
        raise CertificateError("the verification code was issued for another organization")


def _verify_possession(org: Organization, ca: cx509.Certificate, verification_pem: str | bytes) -> None:
    try:
        proof = x509.load_one(verification_pem)
    except x509.BadCertificate as exc:
        raise CertificateError(f"verification certificate: {exc}") from None
    if not x509.signed_by(proof, ca):
        raise CertificateError("the verification certificate is not signed by this CA")
    candidates = [x509.common_name(proof)]
    candidates += [u.removeprefix(VERIFICATION_URI_PREFIX) for u in x509.uri_sans(proof)]
    signer = signing.TimestampSigner(salt=VERIFICATION_SALT)
    code = next((c for c in candidates if c and signer.sep in c), None)
    if code is None:
        raise CertificateError("the verification certificate carries no verification code (CN or SAN URI)")
    _check_verification_code(org, code)


@transaction.atomic
def register_ca_certificate(
    actor: Actor,
    org: Organization,
    pem: str | bytes,
    *,
    description: str,
    jitp_product: Product | None = None,
    jitp_tags: Sequence[str] = (),
    jitp_description: str = "",
    verification_pem: str | bytes | None = None,
    check_expiration: bool = True,
) -> CACertificate:
    """Register a Device CA for `org`. With `verification_pem`, also require proof
    that the caller holds the CA's key: a certificate signed by the CA whose CN
    or SAN URI (`urn:nerveshub:verify:<code>`) is `verification_code(org)`."""
    try:
        cert = x509.load_one(pem)
    except x509.BadCertificate as exc:
        raise CertificateError(str(exc)) from None
    if not x509.is_ca(cert):
        raise CertificateError("not a CA certificate (basicConstraints CA=true is missing)")
    now = timezone.now()
    if check_expiration and x509.not_after(cert) < now:
        raise CertificateError("the CA certificate has expired")
    ski = x509.ski(cert) or x509.computed_ski(cert)
    if CACertificate.objects.filter(ski=ski).exists():
        raise CertificateError("a CA certificate with this subject key identifier is already registered")
    if jitp_product is not None and jitp_product.org_id != org.pk:
        raise CertificateError("the JITP product belongs to another organization")
    if verification_pem:
        _verify_possession(org, cert, verification_pem)
    tags = [t.strip() for t in jitp_tags if t.strip()]
    ca = CACertificate(
        org=org,
        description=description,
        subject=cert.subject.rfc4514_string()[:500],
        serial=str(cert.serial_number),
        ski=ski,
        aki=x509.aki(cert) or "",
        not_before=x509.not_before(cert),
        not_after=x509.not_after(cert),
        check_expiration=check_expiration,
        der=x509.der(cert),
        jitp_product=jitp_product,
        jitp_tags=tags,
        jitp_description=jitp_description,
    )
    ca.full_clean(exclude=["der"])
    try:
        with transaction.atomic():
            ca.save()
    except IntegrityError:
        raise CertificateError("a CA certificate with this subject key identifier is already registered") from None
    audit(
        actor,
        "ca_certificate.registered",
        ca,
        details={
            "subject": ca.subject,
            "ski": ski,
            "proof_of_possession": bool(verification_pem),
            "jitp_product": jitp_product.name if jitp_product else None,
        },
    )
    return ca


def delete_ca_certificates(actor: Actor, cas: Iterable[CACertificate]) -> int:
    """Delete CAs. Devices already recorded keep connecting with their recorded
    certificates; new certificates from the CA are refused."""
    count = 0
    with transaction.atomic():
        for ca in cas:
            deleted, _ = CACertificate.objects.filter(pk=ca.pk).delete()
            if deleted:
                count += 1
                audit(actor, "ca_certificate.deleted", ca, details={"subject": ca.subject, "ski": ca.ski})
    return count


# --- Device certificates ----------------------------------------------------------


def _record(actor: Actor, device: Device, cert: cx509.Certificate, action: str) -> DeviceCertificate:
    row = DeviceCertificate(
        org_id=device.org_id,
        device=device,
        serial=str(cert.serial_number),
        subject=cert.subject.rfc4514_string()[:500],
        ski=x509.ski(cert) or "",
        aki=x509.aki(cert) or "",
        fingerprint=x509.fingerprint(cert),
        public_key_fingerprint=x509.public_key_fingerprint(cert),
        not_before=x509.not_before(cert),
        not_after=x509.not_after(cert),
        der=x509.der(cert),
    )
    with transaction.atomic():
        row.save()
        audit(actor, action, row, details={"device": device.identifier, "serial": row.serial, "subject": row.subject})
    return row


def _check_key_owner(device: Device, cert: cx509.Certificate) -> None:
    owner = (
        DeviceCertificate.objects.filter(public_key_fingerprint=x509.public_key_fingerprint(cert))
        .exclude(device=device)
        .values_list("device__identifier", flat=True)
        .first()
    )
    if owner is not None:
        raise CertificateError("this public key already belongs to another device")


@transaction.atomic
def register_device_certificate(actor: Actor, device: Device, pem: str | bytes) -> DeviceCertificate:
    """Record an uploaded certificate for `device`. It need not come from a
    registered CA (self-signed and manufacturer certificates are fine): the
    device is then recognised by the certificate's fingerprint."""
    try:
        cert = x509.load_one(pem)
    except x509.BadCertificate as exc:
        raise CertificateError(str(exc)) from None
    if x509.is_ca(cert):
        raise CertificateError("this is a CA certificate, not a device certificate")
    if device.is_deleted:
        raise CertificateError("the device is deleted")
    if DeviceCertificate.objects.filter(fingerprint=x509.fingerprint(cert)).exists():
        raise CertificateError("this certificate is already registered")
    aki = x509.aki(cert)
    if aki and CACertificate.objects.filter(ski=aki).exclude(org_id=device.org_id).exists():
        raise CertificateError("the certificate was issued by a CA of another organization")
    _check_key_owner(device, cert)
    try:
        return _record(actor, device, cert, "device_certificate.registered")
    except IntegrityError:
        raise CertificateError(
            "this certificate (or its serial number for this device) is already registered"
        ) from None


def revoke_device_certificates(actor: Actor, certs: Iterable[DeviceCertificate]) -> int:
    """Revoke each certificate not yet revoked (compare-and-set). The device's
    socket is closed after commit; reconnecting with a revoked certificate is
    refused."""
    count = 0
    with transaction.atomic():
        for cert in certs:
            changed = DeviceCertificate.objects.filter(pk=cert.pk, revoked_at__isnull=True).update(
                revoked_at=timezone.now()
            )
            if changed:
                count += 1
                audit(actor, "device_certificate.revoked", cert, details={"serial": cert.serial})
                publish.disconnect_device(cert.device_id)
    return count


def delete_device_certificates(actor: Actor, certs: Iterable[DeviceCertificate]) -> int:
    """Forget certificates. Unlike revocation this is not a ban: a certificate
    from a registered CA is recorded again when the device next connects."""
    count = 0
    with transaction.atomic():
        for cert in certs:
            deleted, _ = DeviceCertificate.objects.filter(pk=cert.pk).delete()
            if deleted:
                count += 1
                audit(actor, "device_certificate.deleted", cert, details={"serial": cert.serial})
    return count


# --- Authentication -----------------------------------------------------------------


@dataclass(frozen=True)
class _Peer:
    leaf: cx509.Certificate
    fingerprint: str


def _leaf(chain: bytes | str | Sequence[cx509.Certificate]) -> _Peer:
    if isinstance(chain, bytes | str):
        try:
            certs = x509.load_certificates(chain)
        except x509.BadCertificate as exc:
            raise CertificateRefused(str(exc)) from None
    else:
        certs = list(chain)
    # NervesKey devices send their certificate and the signer's; the leaf is the
    # one that is not a CA.
    leaves = [c for c in certs if not x509.is_ca(c)]
    if not leaves:
        raise CertificateRefused("no device certificate in the presented chain")
    return _Peer(leaf=leaves[0], fingerprint=x509.fingerprint(leaves[0]))


def _touch(model: type[DeviceCertificate] | type[CACertificate], pk: int) -> None:
    now = timezone.now()
    model.objects.filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_INTERVAL), pk=pk).update(
        last_used_at=now
    )


def _known(peer: _Peer) -> Device | None:
    known = DeviceCertificate.objects.select_related("device").filter(fingerprint=peer.fingerprint).first()
    if known is None:
        return None
    if known.revoked_at is not None:
        raise CertificateRefused("certificate revoked")
    if known.device.is_deleted:
        raise CertificateRefused("device deleted")
    _touch(DeviceCertificate, known.pk)
    return known.device


def _issuing_ca(leaf: cx509.Certificate) -> CACertificate:
    aki = x509.aki(leaf)
    if aki:
        candidates = list(CACertificate.objects.select_related("org", "jitp_product").filter(ski=aki))
    else:
        # No AKI: fall back to the issuer name; the signature decides.
        candidates = list(
            CACertificate.objects.select_related("org", "jitp_product").filter(subject=leaf.issuer.rfc4514_string())
        )
    for ca in candidates:
        if x509.signed_by(leaf, x509.load_one(bytes(ca.der))):
            return ca
    if candidates:
        raise CertificateRefused("certificate signature does not verify with the registered CA")
    raise CertificateRefused("certificate issued by an unknown CA")


def _check_validity(leaf: cx509.Certificate, ca: CACertificate, now: dt.datetime) -> None:
    if x509.not_before(leaf) > now:
        raise CertificateRefused("certificate not yet valid")
    if x509.not_after(leaf) < now:
        raise CertificateRefused("certificate expired")
    if ca.check_expiration and ca.not_after < now:
        raise CertificateRefused("the issuing CA certificate has expired")


def _device_for(ca: CACertificate, identifier: str) -> Device:
    device = Device.objects.filter(org_id=ca.org_id, identifier=identifier).first()
    if device is not None:
        if device.is_deleted:
            raise CertificateRefused("device deleted")
        if ca.jitp_product_id is not None and device.product_id != ca.jitp_product_id:
            raise CertificateRefused("a device with this identifier exists in another product than the CA's")
        return device
    if ca.jitp_product is None:
        raise CertificateRefused("device not registered and the CA has no JITP product")
    try:
        with transaction.atomic():
            return create_device(
                f"jitp:ca:{ca.pk}",
                ca.jitp_product,
                identifier,
                description=ca.jitp_description,
                tags=list(ca.jitp_tags),
            )
    except IntegrityError:
        # A concurrent first connection of the same device created it.
        return Device.objects.get(org_id=ca.org_id, identifier=identifier)


def authenticate_peer_certificate(chain: bytes | str | Sequence[cx509.Certificate]) -> Device:
    """The device that presented `chain` (PEM, URL-escaped PEM, DER, or parsed
    certificates; leaf plus optional intermediates), recording its certificate on
    first use. Raises CertificateRefused with the reason otherwise."""
    peer = _leaf(chain)
    device = _known(peer)
    if device is not None:
        return device
    leaf = peer.leaf
    if x509.is_self_signed(leaf):
        raise CertificateRefused("self-signed certificate not registered for any device")
    identifier = x509.common_name(leaf).strip()
    if not identifier:
        raise CertificateRefused("certificate has no subject CN to name the device")
    ca = _issuing_ca(leaf)
    now = timezone.now()
    _check_validity(leaf, ca, now)
    try:
        with transaction.atomic():
            device = _device_for(ca, identifier)
            others = DeviceCertificate.objects.filter(device=device).exclude(
                public_key_fingerprint=x509.public_key_fingerprint(leaf)
            )
            if others.exists():
                raise CertificateRefused("the device already has a certificate with another key")
            key_owner = (
                DeviceCertificate.objects.filter(public_key_fingerprint=x509.public_key_fingerprint(leaf))
                .exclude(device=device)
                .exists()
            )
            if key_owner:
                raise CertificateRefused("the certificate's key belongs to another device")
            _record(device, device, leaf, "device_certificate.recorded")
            _touch(CACertificate, ca.pk)
    except IntegrityError:
        # The same certificate recorded by a concurrent connection.
        device = _known(peer)
        if device is None:
            raise CertificateRefused("certificate could not be recorded") from None
    logger.info("device %s authenticated with a new certificate from CA %s", device.identifier, ca.pk)
    return device
