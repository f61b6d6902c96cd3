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
* CA ownership is proven, not first-come: registration needs a verification
  certificate signed by the CA carrying the org's code, and one key has at most
  one verified CA hub-wide. An unverified CA (registered before proof was
  required) provisions and authenticates nothing, and never blocks a verified one.
* A certificate's issuer is the verified CA whose key signed it (the AKI and
  issuer name only narrow the search), and a certificate is only accepted on a
  device of its issuer's organization, recorded or not.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509 as cx509
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from certificates import x509
from certificates.models import CACertificate, DeviceCertificate
from devices import publish
from devices.models import Device, validate_identifier
from devices.services import create_device
from nerveshub.lib.validation import refuse_unless_valid
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


def _load_ca(pem: str | bytes, *, check_expiration: bool) -> cx509.Certificate:
    try:
        cert = x509.load_one(pem)
    except x509.BadCertificate as exc:
        raise CertificateError(str(exc)) from None
    if not x509.is_ca(cert):
        raise CertificateError("not a CA certificate (basicConstraints CA=true is missing)")
    if check_expiration and x509.not_after(cert) < timezone.now():
        raise CertificateError("the CA certificate has expired")
    return cert


def _check_key_not_owned(org: Organization, key_fingerprint: str, *, exclude_pk: int | None = None) -> None:
    owner = CACertificate.objects.filter(public_key_fingerprint=key_fingerprint, verified_at__isnull=False)
    if exclude_pk is not None:
        owner = owner.exclude(pk=exclude_pk)
    owner_org = owner.values_list("org_id", flat=True).first()
    if owner_org == org.pk:
        raise CertificateError("this organization already has a verified CA certificate with this key")
    if owner_org is not None:
        raise CertificateError("a CA certificate with this key is already verified by another organization")


@transaction.atomic
def register_ca_certificate(
    actor: Actor,
    org: Organization,
    pem: str | bytes,
    *,
    description: str,
    verification_pem: str | bytes | None,
    jitp_product: Product | None = None,
    jitp_tags: Sequence[str] = (),
    jitp_description: str = "",
    check_expiration: bool = True,
) -> CACertificate:
    """Register a Device CA for `org`, verified. A CA certificate is public, so
    pasting one proves nothing: `verification_pem` must be a certificate signed
    by the CA whose CN or SAN URI (`urn:nerveshub:verify:<code>`) is
    `verification_code(org)`, which only the holder of the CA's key can make.
    Every path that registers a CA (admin, org pages, API, CLI) comes here."""
    cert = _load_ca(pem, check_expiration=check_expiration)
    if jitp_product is not None and jitp_product.org_id != org.pk:
        raise CertificateError("the JITP product belongs to another organization")
    if not verification_pem:
        raise CertificateError(
            "proof of possession is required: a verification certificate signed by the CA "
            "whose CN is the organization's verification code"
        )
    _verify_possession(org, cert, verification_pem)
    ski = x509.ski(cert) or x509.computed_ski(cert)
    same = CACertificate.objects.filter(org=org, ski=ski).only("verified_at").first()
    if same is not None:
        hint = "" if same.is_verified else " (unverified: submit the verification certificate to verify it)"
        raise CertificateError(f"this organization already has a CA certificate with this key identifier{hint}")
    key_fingerprint = x509.public_key_fingerprint(cert)
    _check_key_not_owned(org, key_fingerprint)
    now = timezone.now()
    tags = [t.strip() for t in jitp_tags if t.strip()]
    ca = CACertificate(
        org=org,
        description=description,
        subject=cert.subject.rfc4514_string()[:500],
        subject_hash=x509.name_hash(cert.subject),
        serial=str(cert.serial_number),
        ski=ski,
        aki=x509.aki(cert) or "",
        public_key_fingerprint=key_fingerprint,
        verified_at=now,
        not_before=x509.not_before(cert),
        not_after=x509.not_after(cert),
        check_expiration=check_expiration,
        der=x509.der(cert),
        jitp_product=jitp_product,
        jitp_tags=tags,
        jitp_description=jitp_description,
    )
    ca.full_clean(exclude=["der"], validate_constraints=False)
    try:
        with transaction.atomic():
            ca.save()
    except IntegrityError:
        # A concurrent registration of the same key (or SKI in this org) won.
        raise CertificateError("a CA certificate with this key is already registered") from None
    audit(
        actor,
        "ca_certificate.registered",
        ca,
        details={
            "subject": ca.subject,
            "ski": ski,
            "proof_of_possession": True,
            "jitp_product": jitp_product.name if jitp_product else None,
        },
    )
    return ca


def verify_ca_certificate(actor: Actor, ca: CACertificate, verification_pem: str | bytes) -> CACertificate:
    """Verify a CA registered without proof of possession (before proof was
    required): the same verification certificate as at registration. From then
    on it provisions and authenticates devices. Verifying a verified CA changes
    nothing. Refused when another organization has proven it holds the key."""
    if ca.verified_at is not None:
        return ca
    if not verification_pem:
        raise CertificateError("send the verification certificate")
    cert = x509.load_one(bytes(ca.der))
    _verify_possession(ca.org, cert, verification_pem)
    with transaction.atomic():
        _check_key_not_owned(ca.org, ca.public_key_fingerprint, exclude_pk=ca.pk)
        now = timezone.now()
        try:
            with transaction.atomic():
                changed = CACertificate.objects.filter(pk=ca.pk, verified_at__isnull=True).update(verified_at=now)
        except IntegrityError:
            raise CertificateError(
                "a CA certificate with this key is already verified by another organization"
            ) from None
        if changed:
            audit(actor, "ca_certificate.verified", ca, details={"subject": ca.subject, "ski": ca.ski})
    ca.refresh_from_db(fields=["verified_at"])
    return ca


def ca_errors(org_id: int, jitp_product: Product | None) -> dict[str, list[str]]:
    """What is wrong with a CA's settings, by field (empty: nothing). The admin's
    change form runs it on its cleaned data; update_ca_certificate runs it too."""
    if jitp_product is not None and jitp_product.org_id != org_id:
        return {"jitp_product": ["The JITP product must belong to the CA's organization."]}
    return {}


def update_ca_certificate(actor: Actor, ca: CACertificate, changes: dict[str, Any], *, via: str) -> CACertificate:
    """Change a CA's description, expiry check or just-in-time provisioning
    settings: check, save and audit in one transaction. Raises ValidationError
    (field -> messages) and writes nothing when the CA may not be saved so."""
    for name, value in changes.items():
        setattr(ca, name, value)
    # The certificate itself never changes here (and full_clean would re-read it).
    refuse_unless_valid(ca, ca_errors(ca.org_id, ca.jitp_product), exclude=["der"])
    details = {k: (v.name if isinstance(v, Product) else v) for k, v in changes.items()}
    with transaction.atomic():
        ca.save(update_fields=list(changes) or None)
        audit(actor, "ca_certificate.changed", ca, details={"via": via, **details})
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
    # By signature, not by AKI: a certificate need not carry one, and another
    # org's device certificate (public) uploaded here would capture that device.
    issuer = _signer(cert, _candidate_cas(cert))
    if issuer is not None and issuer.is_verified and issuer.org_id != device.org_id:
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


def _candidate_cas(cert: cx509.Certificate) -> list[CACertificate]:
    """Registered CAs, of any organization, that may have signed `cert`: those
    its issuer name or its AKI points at. Both are written by whoever made the
    certificate, so they only narrow the search; the signature decides
    (`_signer`). A signature only verifies under a CA whose subject is the
    certificate's issuer, so the name alone finds every possible signer."""
    return list(CACertificate.objects.select_related("jitp_product").filter(_candidate_match(cert)))


def _candidate_match(cert: cx509.Certificate) -> Q:
    match = Q(subject_hash=x509.name_hash(cert.issuer))
    aki = x509.aki(cert)
    if aki:
        match |= Q(ski=aki)
    return match


def _signer(cert: cx509.Certificate, candidates: Iterable[CACertificate]) -> CACertificate | None:
    """The candidate whose key signed `cert`, a verified one first (a key has at
    most one verified owner hub-wide), else an unverified one, else None."""
    for ca in sorted(candidates, key=lambda c: c.verified_at is None):
        if x509.signed_by(cert, x509.load_one(bytes(ca.der))):
            return ca
    return None


def _check_known_issuer(known: DeviceCertificate, leaf: cx509.Certificate) -> None:
    """Refuse a recorded certificate whose issuer, by signature, is a verified CA
    of another organization (the certificate was recorded for a device of an org
    that does not own its CA: pasted, or provisioned by a CA registered without
    proof), or an unverified CA of the device's own organization (it
    authenticates nothing until verified). Unverified CAs of other orgs are
    ignored: anybody can paste a CA certificate, so they prove nothing."""
    org_id = known.device.org_id
    # The usual case, the org's own verified CA, costs one lean read (no
    # certificate bytes) and no signature check.
    owners = CACertificate.objects.filter(_candidate_match(leaf)).values_list("org_id", "verified_at")
    if not any(
        (verified is not None and ca_org != org_id) or (verified is None and ca_org == org_id)
        for ca_org, verified in owners
    ):
        return
    candidates = _candidate_cas(leaf)
    issuer = _signer(leaf, candidates)
    if issuer is None:
        return
    if issuer.is_verified and issuer.org_id != org_id:
        raise CertificateRefused("certificate issued by a CA of another organization than its device's")
    if not issuer.is_verified and issuer.org_id == org_id:
        raise CertificateRefused("certificate issued by a CA that is not verified")


def _known(peer: _Peer) -> Device | None:
    known = DeviceCertificate.objects.select_related("device").filter(fingerprint=peer.fingerprint).first()
    if known is None:
        return None
    if known.revoked_at is not None:
        raise CertificateRefused("certificate revoked")
    if known.device.is_deleted:
        raise CertificateRefused("device deleted")
    _check_known_issuer(known, peer.leaf)
    # Decided on the row just read, so a device that polls or reconnects often
    # costs no statement here; the conditional UPDATE keeps racing ones to one write.
    if known.last_used_at is None or known.last_used_at < timezone.now() - LAST_USED_INTERVAL:
        _touch(DeviceCertificate, known.pk)
    return known.device


def _issuing_ca(leaf: cx509.Certificate) -> CACertificate:
    """The verified CA whose key signed `leaf`: the AKI is not trusted (it may be
    absent or name another org's CA), the signature is."""
    candidates = _candidate_cas(leaf)
    issuer = _signer(leaf, candidates)
    if issuer is None:
        if candidates:
            raise CertificateRefused("certificate signature does not verify with the registered CA")
        raise CertificateRefused("certificate issued by an unknown CA")
    if not issuer.is_verified:
        raise CertificateRefused("certificate issued by a CA that is not verified (no proof of possession yet)")
    return issuer


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
    try:
        # The rule every identifier follows (API, admin, NH1), checked before
        # any query: a NUL in a CN must not reach the database.
        validate_identifier(identifier)
    except ValidationError as exc:
        reason = "the certificate's CN is not a valid device identifier: " + " ".join(exc.messages)
        raise CertificateRefused(reason) from None
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
