"""Registering a Device CA needs proof of possession: these helpers make the
verification certificate a real CA owner would, with the org's code as CN."""

from __future__ import annotations

from typing import Any

from certificates import pki, services, x509
from certificates.models import CACertificate
from nerveshub.tenancy.models import Organization


def verification_pem(ca: pki.Issued, org: Organization) -> bytes:
    """A certificate signed by `ca` carrying `org`'s verification code."""
    return pki.sign_verification(ca, services.verification_code(org)).cert_pem


def register_ca(
    actor: Any, org: Organization, ca: pki.Issued, *, description: str = "", **kwargs: Any
) -> CACertificate:
    """Register `ca` for `org` the way its owner does: with the proof."""
    return services.register_ca_certificate(
        actor, org, ca.cert_pem, description=description, verification_pem=verification_pem(ca, org), **kwargs
    )


def add_unverified_ca(org: Organization, ca: pki.Issued, **kwargs: Any) -> CACertificate:
    """A CA row as registration left it before proof was required (the
    migration marks such rows unverified): the first-come claim of whoever
    pasted the public certificate."""
    cert = ca.cert
    fields: dict[str, Any] = {
        "subject": cert.subject.rfc4514_string(),
        "subject_hash": x509.name_hash(cert.subject),
        "serial": str(cert.serial_number),
        "ski": x509.ski(cert) or x509.computed_ski(cert),
        "public_key_fingerprint": x509.public_key_fingerprint(cert),
        "not_before": x509.not_before(cert),
        "not_after": x509.not_after(cert),
        "der": x509.der(cert),
    }
    return CACertificate.objects.create(org=org, **{**fields, **kwargs})
