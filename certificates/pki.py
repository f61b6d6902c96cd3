"""Make Device CA and device certificates (P-256, `cryptography`): the engine of
`manage.py devicecert` and of the tests' certificate fixtures.

Everything here is pure: keys and certificates in, keys and certificates out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from ipaddress import ip_address

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certificates import nerves_key
from certificates.x509 import ca_builder, key_usage


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def create_ca(
    cn: str,
    *,
    days: int = 3650,
    key: ec.EllipticCurvePrivateKey | None = None,
    not_before: dt.datetime | None = None,
    nerves_key_signer: bool = False,
) -> Issued:
    """A self-signed Device CA: basicConstraints CA (path length 0), keyCertSign,
    SKI. With `nerves_key_signer`, shaped to fit the ATECC508A/608A compressed
    signer-certificate template (see certificates/nerves_key.py)."""
    key = key or new_key()
    if nerves_key_signer:
        return nerves_key.create_signer(cn, key=key, days=days, not_before=not_before)
    start = not_before or _now() - dt.timedelta(minutes=5)
    cert = ca_builder(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
        key.public_key(),
        serial=x509.random_serial_number(),
        not_before=start,
        not_after=start + dt.timedelta(days=days),
        key_id=x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest,
    ).sign(key, hashes.SHA256())
    return Issued(cert=cert, key=key)


def _authority_key_id(ca: Issued) -> x509.AuthorityKeyIdentifier:
    # The AKI repeats the issuer's SKI, however the issuer computed it (NervesKey
    # signers hash the whole SubjectPublicKeyInfo, not RFC 5280's method 1).
    try:
        ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _leaf_builder(
    cn: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, start: dt.datetime, end: dt.datetime
) -> x509.CertificateBuilder:
    """What every end-entity certificate here starts with: CN, issuer, a random
    serial, validity, and basicConstraints CA:false (critical)."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )


def sign_device(
    ca: Issued,
    serial: str,
    *,
    days: int = 3650,
    key: ec.EllipticCurvePrivateKey | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    san_uri: str | None = None,
) -> Issued:
    """A device certificate signed by `ca`: CN = the device's serial number (its
    identifier in the hub), clientAuth, SKI and AKI."""
    key = key or new_key()
    start = not_before or _now() - dt.timedelta(minutes=5)
    end = not_after or start + dt.timedelta(days=days)
    builder = (
        _leaf_builder(serial, ca.cert.subject, key, start, end)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_id(ca), critical=False)
    )
    if san_uri:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(san_uri)]), critical=False
        )
    return Issued(cert=builder.sign(ca.key, hashes.SHA256()), key=key)


def sign_verification(ca: Issued, code: str, *, days: int = 1) -> Issued:
    """The proof that registers `ca` with an organization: a short-lived
    certificate signed by the CA whose CN is the org's verification code
    (`certificates.services.verification_code`)."""
    key = new_key()
    start = _now() - dt.timedelta(minutes=5)
    cert = (
        _leaf_builder(code, ca.cert.subject, key, start, start + dt.timedelta(days=days))
        .add_extension(_authority_key_id(ca), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert=cert, key=key)


def sign_server(ca: Issued, hostnames: list[str], *, days: int = 365) -> Issued:
    """A TLS server certificate for the proxy in front of the hub (tests, demos)."""
    key = new_key()
    start = _now() - dt.timedelta(minutes=5)
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        _leaf_builder(hostnames[0], ca.cert.subject, key, start, start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_authority_key_id(ca), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert=cert, key=key)


def self_signed_device(serial: str, *, days: int = 365) -> Issued:
    """A self-signed device certificate (no CA): only accepted once uploaded."""
    key = new_key()
    start = _now() - dt.timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, serial)])
    cert = (
        _leaf_builder(serial, name, key, start, start + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert=cert, key=key)


def load_issued(cert_pem: bytes, key_pem: bytes) -> Issued:
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an EC private key")
    if cert.public_key() != key.public_key():
        raise ValueError("the CA key does not match the CA certificate")
    return Issued(cert=cert, key=key)
