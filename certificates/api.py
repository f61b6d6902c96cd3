"""REST endpoints for Device CA certificates (/orgs/{org}/ca_certificates/…) and
device certificates (/orgs/{org}/products/{product}/devices/{identifier}/certificates/…).

Registering a CA decides who may add devices (through just-in-time
provisioning), so CAs need the `admin` role and proof that the caller holds the
CA's key (`verification_pem`); a device's own certificates need `manage`, like
the device itself. The rules live in certificates/services.py.
"""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.http import HttpRequest
from ninja import Router, Schema, Status
from ninja.errors import HttpError
from pydantic import ConfigDict, Field

from certificates import services, x509
from certificates.models import CACertificate, DeviceCertificate
from devices.fields import normalise_tags
from devices.models import Device, validate_tags
from nerveshub.apihelpers import actor, require_org, require_product
from nerveshub.tenancy.models import Organization, Product, Role

router = Router(tags=["certificates"])
CAS = "/orgs/{org}/ca_certificates"
DEVICE_CERTS = "/orgs/{org}/products/{product}/devices/{identifier}/certificates"
PEM_MAX = 65_536  # a certificate chain is a few kilobytes; anything larger is not one


class JitpIn(Schema):
    model_config = ConfigDict(extra="forbid")
    product: str = Field(min_length=1, max_length=100, description="Product unknown devices are created in")
    tags: list[str] = []
    description: str = Field("", max_length=200)


class CAIn(Schema):
    model_config = ConfigDict(extra="forbid")
    pem: str = Field(min_length=1, max_length=PEM_MAX, description="The CA certificate, PEM")
    description: str = Field("", max_length=200)
    verification_pem: str = Field(
        min_length=1,
        max_length=PEM_MAX,
        description="Proof of possession (required): a certificate signed by the CA whose CN (or SAN URI "
        "urn:nerveshub:verify:<code>) is the code from GET ca_certificates/verification_code",
    )
    check_expiration: bool = True
    jitp: JitpIn | None = None


class CAVerifyIn(Schema):
    model_config = ConfigDict(extra="forbid")
    verification_pem: str = Field(
        min_length=1,
        max_length=PEM_MAX,
        description="A certificate signed by the CA whose CN is the code from GET ca_certificates/verification_code",
    )


class CAPatch(Schema):
    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(None, max_length=200)
    check_expiration: bool | None = None
    jitp: JitpIn | None = Field(None, description="Just-in-time provisioning settings; see `clear_jitp` to remove")
    clear_jitp: bool = False


class JitpOut(Schema):
    product: str
    tags: list[str]
    description: str


class CAOut(Schema):
    ski: str
    serial: str
    subject: str
    description: str
    not_before: datetime
    not_after: datetime
    check_expiration: bool
    verified: bool = Field(description="The org proved it holds the CA key; unverified CAs authenticate no device")
    verified_at: datetime | None
    jitp: JitpOut | None
    pem: str
    created_at: datetime
    last_used_at: datetime | None


class VerificationCodeOut(Schema):
    code: str
    valid_seconds: int


class DeviceCertIn(Schema):
    model_config = ConfigDict(extra="forbid")
    pem: str = Field(min_length=1, max_length=PEM_MAX, description="The device certificate, PEM")


class DeviceCertOut(Schema):
    serial: str
    subject: str
    fingerprint: str
    public_key_fingerprint: str
    ski: str
    aki: str
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None
    created_at: datetime
    last_used_at: datetime | None
    pem: str


def _pem(der: bytes | memoryview) -> str:
    return x509.pem(x509.load_one(bytes(der)))


def _ca_out(ca: CACertificate) -> CAOut:
    product = ca.jitp_product
    return CAOut(
        ski=ca.ski,
        serial=ca.serial,
        subject=ca.subject,
        description=ca.description,
        not_before=ca.not_before,
        not_after=ca.not_after,
        check_expiration=ca.check_expiration,
        verified=ca.is_verified,
        verified_at=ca.verified_at,
        jitp=JitpOut(product=product.name, tags=list(ca.jitp_tags), description=ca.jitp_description)
        if product is not None
        else None,
        pem=_pem(ca.der),
        created_at=ca.created_at,
        last_used_at=ca.last_used_at,
    )


def _cert_out(cert: DeviceCertificate) -> DeviceCertOut:
    return DeviceCertOut(
        serial=cert.serial,
        subject=cert.subject,
        fingerprint=cert.fingerprint,
        public_key_fingerprint=cert.public_key_fingerprint,
        ski=cert.ski,
        aki=cert.aki,
        not_before=cert.not_before,
        not_after=cert.not_after,
        revoked_at=cert.revoked_at,
        created_at=cert.created_at,
        last_used_at=cert.last_used_at,
        pem=_pem(cert.der),
    )


def _tags(value: list[str]) -> list[str]:
    tags = normalise_tags(value)
    try:
        validate_tags(tags)
    except ValidationError as exc:
        raise HttpError(422, "; ".join(exc.messages)) from None
    return tags


def _jitp_product(org: Organization, name: str) -> Product:
    product = Product.objects.filter(org=org, name=name).first()
    if product is None:
        raise HttpError(422, f"jitp.product: no product {name!r} in {org.name}")
    return product


def _ca(request: HttpRequest, org: str, ski: str, role: str = Role.VIEW) -> CACertificate:
    organization = require_org(request, org, role)
    ca = CACertificate.objects.select_related("jitp_product").filter(org=organization, ski=ski.lower()).first()
    if ca is None:
        raise HttpError(404, f"CA certificate {ski!r} not found")
    return ca


# --- CA certificates ------------------------------------------------------------


@router.get(CAS, response=list[CAOut])
def list_cas(request: HttpRequest, org: str) -> list[CAOut]:
    organization = require_org(request, org)
    rows = CACertificate.objects.filter(org=organization).select_related("jitp_product").order_by("-created_at")
    return [_ca_out(ca) for ca in rows]


@router.get(CAS + "/verification_code", response=VerificationCodeOut)
def verification_code(request: HttpRequest, org: str) -> VerificationCodeOut:
    """A code to put in the CN of a certificate signed by the CA, sent as
    `verification_pem` to prove that the caller holds the CA's private key."""
    organization = require_org(request, org, Role.ADMIN)
    return VerificationCodeOut(
        code=services.verification_code(organization), valid_seconds=services.VERIFICATION_MAX_AGE
    )


@router.post(CAS, response={201: CAOut})
def register_ca(request: HttpRequest, org: str, payload: CAIn) -> Status[CAOut]:
    organization = require_org(request, org, Role.ADMIN)
    jitp = payload.jitp
    product = _jitp_product(organization, jitp.product) if jitp is not None else None
    try:
        ca = services.register_ca_certificate(
            actor(request),
            organization,
            payload.pem,
            description=payload.description,
            jitp_product=product,
            jitp_tags=_tags(jitp.tags) if jitp is not None else (),
            jitp_description=jitp.description if jitp is not None else "",
            verification_pem=payload.verification_pem,
            check_expiration=payload.check_expiration,
        )
    except services.CertificateError as exc:
        raise HttpError(422, str(exc)) from None
    return Status(201, _ca_out(ca))


@router.get(CAS + "/{ski}", response=CAOut)
def get_ca(request: HttpRequest, org: str, ski: str) -> CAOut:
    return _ca_out(_ca(request, org, ski))


@router.post(CAS + "/{ski}/verify", response=CAOut)
def verify_ca(request: HttpRequest, org: str, ski: str, payload: CAVerifyIn) -> CAOut:
    """Verify a CA registered before proof of possession was required: until
    then it provisions and authenticates no device. A verified CA is answered
    as it is."""
    ca = _ca(request, org, ski, Role.ADMIN)
    try:
        ca = services.verify_ca_certificate(actor(request), ca, payload.verification_pem)
    except services.CertificateError as exc:
        raise HttpError(422, str(exc)) from None
    return _ca_out(ca)


@router.patch(CAS + "/{ski}", response=CAOut)
def update_ca(request: HttpRequest, org: str, ski: str, payload: CAPatch) -> CAOut:
    """Change the description, the expiry check, or the just-in-time
    provisioning settings (product, tags, description of new devices)."""
    ca = _ca(request, org, ski, Role.ADMIN)
    if payload.jitp is not None and payload.clear_jitp:
        raise HttpError(422, "send either jitp or clear_jitp, not both")
    changes: dict[str, object] = {}
    if payload.description is not None:
        changes["description"] = payload.description
    if payload.check_expiration is not None:
        changes["check_expiration"] = payload.check_expiration
    if payload.jitp is not None:
        changes["jitp_product"] = _jitp_product(ca.org, payload.jitp.product)
        changes["jitp_tags"] = _tags(payload.jitp.tags)
        changes["jitp_description"] = payload.jitp.description
    if payload.clear_jitp:
        changes.update(jitp_product=None, jitp_tags=[], jitp_description="")
    services.update_ca_certificate(actor(request), ca, changes, via="api")
    return _ca_out(ca)


@router.delete(CAS + "/{ski}", response={204: None})
def delete_ca(request: HttpRequest, org: str, ski: str) -> Status[None]:
    ca = _ca(request, org, ski, Role.ADMIN)
    services.delete_ca_certificates(actor(request), [ca])
    return Status(204, None)


# --- Device certificates ----------------------------------------------------------


def _device(request: HttpRequest, org: str, product: str, identifier: str, role: str = Role.VIEW) -> Device:
    found = require_product(request, org, product, role)
    device = Device.objects.filter(product=found, identifier=identifier, deleted_at__isnull=True).first()
    if device is None:
        raise HttpError(404, f"device {identifier!r} not found")
    return device


def _device_cert(
    request: HttpRequest, org: str, product: str, identifier: str, serial: str, role: str = Role.VIEW
) -> DeviceCertificate:
    device = _device(request, org, product, identifier, role)
    cert = DeviceCertificate.objects.select_related("device").filter(device=device, serial=serial).first()
    if cert is None:
        raise HttpError(404, f"certificate {serial!r} not found for {identifier}")
    return cert


@router.get(DEVICE_CERTS, response=list[DeviceCertOut])
def list_device_certs(request: HttpRequest, org: str, product: str, identifier: str) -> list[DeviceCertOut]:
    device = _device(request, org, product, identifier)
    return [_cert_out(c) for c in DeviceCertificate.objects.filter(device=device).order_by("-created_at")]


@router.post(DEVICE_CERTS, response={201: DeviceCertOut})
def register_device_cert(
    request: HttpRequest, org: str, product: str, identifier: str, payload: DeviceCertIn
) -> Status[DeviceCertOut]:
    """Record a certificate for the device, from a registered CA or not (a
    self-signed certificate is then recognised by its fingerprint)."""
    device = _device(request, org, product, identifier, Role.MANAGE)
    try:
        cert = services.register_device_certificate(actor(request), device, payload.pem)
    except services.CertificateError as exc:
        raise HttpError(422, str(exc)) from None
    return Status(201, _cert_out(cert))


@router.get(DEVICE_CERTS + "/{serial}", response=DeviceCertOut)
def get_device_cert(request: HttpRequest, org: str, product: str, identifier: str, serial: str) -> DeviceCertOut:
    return _cert_out(_device_cert(request, org, product, identifier, serial))


@router.post(DEVICE_CERTS + "/{serial}/revoke", response=DeviceCertOut)
def revoke_device_cert(request: HttpRequest, org: str, product: str, identifier: str, serial: str) -> DeviceCertOut:
    """Refuse the certificate for good; a connected device is disconnected."""
    cert = _device_cert(request, org, product, identifier, serial, Role.MANAGE)
    services.revoke_device_certificates(actor(request), [cert])
    cert.refresh_from_db()
    return _cert_out(cert)


@router.delete(DEVICE_CERTS + "/{serial}", response={204: None})
def delete_device_cert(request: HttpRequest, org: str, product: str, identifier: str, serial: str) -> Status[None]:
    """Forget the certificate (not a ban: see revoke)."""
    cert = _device_cert(request, org, product, identifier, serial, Role.MANAGE)
    services.delete_device_certificates(actor(request), [cert])
    return Status(204, None)
