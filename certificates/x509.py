"""X.509 helpers without models: parsing what users upload and what proxies
forward, and the few facts about a certificate the hub stores or matches on.

Identifiers are lower-case hex without separators: `ski`/`aki` are the key
identifiers, `fingerprint` is SHA-256 of the DER, `public_key_fingerprint` is
SHA-256 of the DER SubjectPublicKeyInfo.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


class BadCertificate(ValueError):
    """The bytes are not a certificate (or chain) we can read."""


def load_certificates(data: bytes | str) -> list[x509.Certificate]:
    """Every certificate in `data`: one or more PEM blocks, a URL-escaped PEM
    (nginx's $ssl_client_escaped_cert), or a single DER certificate."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    # Only text can be URL-escaped. DER is binary and may hold the bytes "%0A"
    # anywhere in its key, serial or signature (about one certificate in
    # 20,000): unescaping it would corrupt a good certificate.
    if raw.isascii() and (b"%2D" in raw[:32] or b"%0A" in raw or b"%20" in raw):
        raw = unquote(raw.decode("ascii")).encode()
    blocks = _PEM_BLOCK.findall(raw)
    try:
        if blocks:
            # nginx's legacy $ssl_client_cert indents continuation lines with a tab.
            return [x509.load_pem_x509_certificate(b"\n".join(ln.strip() for ln in b.splitlines())) for b in blocks]
        if raw.strip():
            return [x509.load_der_x509_certificate(raw)]
    except ValueError as exc:
        raise BadCertificate(f"not a readable X.509 certificate: {exc}") from None
    raise BadCertificate("no certificate found (expected PEM or DER)")


def load_one(data: bytes | str) -> x509.Certificate:
    certs = load_certificates(data)
    if len(certs) != 1:
        raise BadCertificate(f"expected exactly one certificate, found {len(certs)}")
    return certs[0]


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(der(cert)).hexdigest()


def public_key_fingerprint(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def name_hash(name: x509.Name) -> str:
    """SHA-256 of a Name's DER: a CA's subject and the issuer of what it signs
    hash alike, so the issuer can be looked up without trusting an AKI."""
    return hashlib.sha256(name.public_bytes()).hexdigest()


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def ski(cert: x509.Certificate) -> str | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except x509.ExtensionNotFound:
        return None


def computed_ski(cert: x509.Certificate) -> str:
    """RFC 5280 §4.2.1.2 method 1 (SHA-1 of the subjectPublicKey bits): what
    OpenSSL and `cryptography` put in SKI and in the AKI of certificates they sign."""
    return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest.hex()


def aki(cert: x509.Certificate) -> str | None:
    try:
        key_id = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None
    return key_id.hex() if key_id else None


def common_name(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        return ""
    value = values[0].value
    return value.decode() if isinstance(value, bytes) else value


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    return signed_by(cert, cert)


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True if `issuer` names and signed `cert` (RSA, EC or Ed25519 signatures)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def not_before(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_before_utc


def not_after(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_after_utc


def key_usage(*, ca: bool) -> x509.KeyUsage:
    """digitalSignature, plus keyCertSign and cRLSign for a CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def ca_builder(
    name: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    *,
    serial: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
    key_id: bytes,
    extended_key_usage: list[ObjectIdentifier] | None = None,
) -> x509.CertificateBuilder:
    """A self-signed Device CA, unsigned: basicConstraints CA with path length 0
    and keyUsage digitalSignature+keyCertSign+cRLSign (both critical), the
    extended key usages if any, then subjectKeyIdentifier and
    authorityKeyIdentifier (key id only), both `key_id`. The order is fixed: a
    NervesKey rebuilds its signer certificate with the extensions in this order
    (certificates/nerves_key.py)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
    )
    if extended_key_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(extended_key_usage), critical=False)
    return builder.add_extension(x509.SubjectKeyIdentifier(key_id), critical=False).add_extension(
        x509.AuthorityKeyIdentifier(
            key_identifier=key_id, authority_cert_issuer=None, authority_cert_serial_number=None
        ),
        critical=False,
    )
