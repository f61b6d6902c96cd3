"""NervesKey signer certificates: a Device CA that fits the ATECC508A/608A
compressed-certificate format, so a NervesKey can store it (72 bytes) and
rebuild it byte for byte.

A NervesKey keeps no X.509 certificate, only 72 bytes per certificate plus the
public keys, and rebuilds the certificate from a fixed template when the device
connects (nerves_key `signer_cert/2`, `device_cert/2`). A signer certificate is
compatible only if everything outside those 72 bytes is exactly what the
template produces. What this module enforces (docs/certificates.md repeats it):

* subject and issuer are exactly `CN=Signer` (UTF8String): the device rebuilds
  the signer, and the issuer of its own certificate, with that name whatever the
  CA was called;
* P-256 key, ecdsa-with-SHA256 signature;
* validity: issued on a whole hour (minutes and seconds zero), in 2000-2031;
  expires exactly 1-31 whole years later at the same month, day and hour (the
  3-byte date encoding: year-2000 (5 bits), month (4), day (5), hour (5),
  years valid (5));
* serial number: SHA-256(raw public key x||y ‖ the 3 encoded date bytes), first
  16 bytes, top two bits set to 01 (serial source 0xA, "public key hash");
* extensions, in this order: basicConstraints CA:true pathlen 0 (critical),
  keyUsage digitalSignature+keyCertSign+cRLSign (critical), extendedKeyUsage
  serverAuth+clientAuth, subjectKeyIdentifier, authorityKeyIdentifier (keyid
  only). The key identifier is SHA-1 of the DER SubjectPublicKeyInfo (what the
  Elixir x509 library computes), not RFC 5280 method 1;
* the signature's r and s each have a non-zero top byte, so that the raw 64-byte
  r||s the chip stores turns back into the identical DER signature (≤ 72 bytes);
  a signature that would not is re-drawn.

`compress` and `decompress_signer` implement the format so the tests can check
the round trip. What could not be checked here: a real chip, and the Elixir code
path end to end (no Elixir toolchain on this machine).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certificates.x509 import ca_builder

if TYPE_CHECKING:
    from certificates.pki import Issued

SIGNER_CN = "Signer"
ERA = 2000
LAST_ISSUE_YEAR = ERA + 31
MAX_YEARS = 31
SIGNER_TEMPLATE_ID = 1
SN_SOURCE_PUBLIC_KEY = 0xA
# DER AlgorithmIdentifier for ecdsa-with-SHA256 (1.2.840.10045.4.3.2), no parameters.
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")


class NervesKeyError(ValueError):
    """The requested signer cannot be represented in the compressed format."""


def signer_name() -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SIGNER_CN)])


def years_for_days(days: int) -> int:
    years = math.ceil(days / 365)
    if not 1 <= years <= MAX_YEARS:
        raise NervesKeyError(f"a NervesKey signer is valid for 1 to {MAX_YEARS} whole years; {days} days is {years}")
    return years


def compatible_validity(now: dt.datetime, years: int) -> tuple[dt.datetime, dt.datetime]:
    """Issue on the hour, expire `years` later at the same month/day/hour."""
    start = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    if (start.month, start.day) == (2, 29):
        # 29 February plus whole years is not a date; issue an hour before midnight on the 28th.
        start = start.replace(day=28, hour=23)
    if not ERA <= start.year <= LAST_ISSUE_YEAR:
        raise NervesKeyError(f"the compressed format encodes issue years {ERA}-{LAST_ISSUE_YEAR} only")
    if not 1 <= years <= MAX_YEARS:
        raise NervesKeyError(f"years valid must be 1 to {MAX_YEARS}")
    return start, start.replace(year=start.year + years)


def encode_dates(not_before: dt.datetime, years: int) -> bytes:
    value = (not_before.year - ERA) << 19 | not_before.month << 15 | not_before.day << 10
    value |= not_before.hour << 5 | years
    return value.to_bytes(3, "big")


def decode_dates(encoded: bytes) -> tuple[dt.datetime, dt.datetime]:
    value = int.from_bytes(encoded, "big")
    year, month, day = (value >> 19) + ERA, (value >> 15) & 0xF, (value >> 10) & 0x1F
    hour, years = (value >> 5) & 0x1F, value & 0x1F
    start = dt.datetime(year, month, day, hour, tzinfo=dt.UTC)
    if years == 0:  # "no expiration" (RFC 5280 §4.1.2.5)
        return start, dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    return start, start.replace(year=year + years)


def raw_public_key(public_key: ec.EllipticCurvePublicKey) -> bytes:
    point = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return point[1:]  # x || y, without the 0x04 prefix


def serial_from_public_key(public_key: ec.EllipticCurvePublicKey, encoded_dates: bytes) -> int:
    digest = hashlib.sha256(raw_public_key(public_key) + encoded_dates).digest()[:16]
    value = int.from_bytes(digest, "big")
    return (value & ((1 << 126) - 1)) | (1 << 126)  # top two bits 01: positive, never shortened


def key_identifier(public_key: ec.EllipticCurvePublicKey) -> bytes:
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha1(spki).digest()  # noqa: S324 - an identifier, not a security function


def _signer_builder(
    public_key: ec.EllipticCurvePublicKey, not_before: dt.datetime, not_after: dt.datetime, years: int
) -> x509.CertificateBuilder:
    return ca_builder(
        signer_name(),
        public_key,
        serial=serial_from_public_key(public_key, encode_dates(not_before, years)),
        not_before=not_before,
        not_after=not_after,
        key_id=key_identifier(public_key),
        extended_key_usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )


def signature_is_stable(signature_der: bytes) -> bool:
    """True if r and s both fill 32 bytes, so r||s turns back into these bytes."""
    r, s = decode_dss_signature(signature_der)
    return r.bit_length() > 248 and s.bit_length() > 248


def create_signer(
    cn: str, *, key: ec.EllipticCurvePrivateKey, days: int, not_before: dt.datetime | None = None
) -> Issued:
    from certificates.pki import Issued

    if cn != SIGNER_CN:
        raise NervesKeyError(
            f"a NervesKey rebuilds its signer certificate with the name CN={SIGNER_CN}, so the CA must have "
            f"exactly that name (got CN={cn}); use --cn {SIGNER_CN} and tell signers apart by file name"
        )
    if not isinstance(key.curve, ec.SECP256R1):
        raise NervesKeyError("a NervesKey signer key must be P-256")
    years = years_for_days(days)
    start, end = compatible_validity(not_before or dt.datetime.now(dt.UTC), years)
    builder = _signer_builder(key.public_key(), start, end, years)
    # ECDSA signatures are randomised: about 1 in 128 has a short r or s; draw again.
    for _ in range(64):
        cert = builder.sign(key, hashes.SHA256())
        if signature_is_stable(cert.signature):
            return Issued(cert=cert, key=key)
    raise NervesKeyError("could not draw a compressible signature")  # pragma: no cover - 2^-448 odds


def check_signer(cert: x509.Certificate) -> list[str]:
    """Why `cert` is not a NervesKey-compatible signer (empty when it is): it
    must be exactly what `decompress_signer(compress(cert))` rebuilds."""
    try:
        rebuilt = decompress_signer(compress(cert), cert.public_key())  # type: ignore[arg-type]
    except (NervesKeyError, ValueError, TypeError) as exc:
        return [str(exc)]
    if rebuilt.public_bytes(serialization.Encoding.DER) != cert.public_bytes(serialization.Encoding.DER):
        return ["the certificate differs from what a NervesKey rebuilds from its compressed form"]
    return []


# --- The compressed format (72 bytes) -------------------------------------------------


def compress(cert: x509.Certificate, *, signer_id: int = 0) -> bytes:
    """r||s (64) ‖ encoded dates (3) ‖ signer id (2) ‖ template id, chain id (1)
    ‖ serial source, format version (1) ‖ reserved (1)."""
    r, s = decode_dss_signature(cert.signature)
    if r.bit_length() > 256 or s.bit_length() > 256:
        raise NervesKeyError("not a P-256 signature")
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    years = end.year - start.year
    if (start.minute, start.second) != (0, 0) or not 1 <= years <= MAX_YEARS:
        raise NervesKeyError("validity is not on the hour with 1-31 whole years")
    if end != start.replace(year=start.year + years):
        raise NervesKeyError("expiry is not whole years after issue")
    if not ERA <= start.year <= LAST_ISSUE_YEAR:
        raise NervesKeyError(f"issue year outside {ERA}-{LAST_ISSUE_YEAR}")
    return (
        r.to_bytes(32, "big")
        + s.to_bytes(32, "big")
        + encode_dates(start, years)
        + signer_id.to_bytes(2, "big")
        + bytes([SIGNER_TEMPLATE_ID << 4 | 0, SN_SOURCE_PUBLIC_KEY << 4 | 0, 0])
    )


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(32, "big")
    if body[0] & 0x80:
        body = b"\x00" + body
    return _der(0x02, body)


def decompress_signer(data: bytes, public_key: ec.EllipticCurvePublicKey) -> x509.Certificate:
    """Rebuild the signer certificate from its 72 bytes and public key, the way
    the device does (signer template, names CN=Signer)."""
    if len(data) != 72 or data[71] != 0:
        raise NervesKeyError("a compressed certificate is 72 bytes ending in a zero byte")
    if data[69] >> 4 != SIGNER_TEMPLATE_ID or data[70] >> 4 != SN_SOURCE_PUBLIC_KEY or data[70] & 0xF:
        raise NervesKeyError("not a signer certificate (template 1, serial from public key, format 0)")
    encoded = data[64:67]
    start, end = decode_dates(encoded)
    years = end.year - start.year
    # The TBS does not depend on the signing key: build it with a throw-away one.
    tbs = _signer_builder(public_key, start, end, years).sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    signature = _der(
        0x30, _der_integer(int.from_bytes(data[:32], "big")) + _der_integer(int.from_bytes(data[32:64], "big"))
    )
    der = _der(0x30, tbs.tbs_certificate_bytes + _ECDSA_SHA256 + _der(0x03, b"\x00" + signature))
    return x509.load_der_x509_certificate(der)
