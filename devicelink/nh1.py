"""NH1 shared-secret signatures: the pure cryptography, no database.

nerves_hub_link signs its identifier with Plug.Crypto.sign/4 (docs/device-protocol.md
§2.2 to §2.3): PBKDF2 derives a key from the shared secret and a salt built from the
x-nh-* headers, and the token is `PROTECTED.b64url(ETF payload).b64url(HMAC)`.
This module is the exact inverse, plus a signer for tests and benchmarks.

The ETF decoder below accepts only the few shapes Plug.Crypto writes and never
builds atoms or functions: a token is attacker-controlled input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache

SALT_HEADER = "NH1:device-socket:shared-secret:connect\n\n"
DEFAULT_ALG = "NH1-HMAC-sha256-1000-32"
# Plug.Crypto embeds its default max_age; the server ignores it and applies its own.
EMBEDDED_MAX_AGE = 86400

# The protected header chooses the MAC, independently of the PBKDF2 digest.
_MACS = {"SFMyNTY": "sha256", "SFMzODQ": "sha384", "SFM1MTI": "sha512"}
_PBKDF2_DIGESTS = frozenset({"sha", "sha1", "sha224", "sha256", "sha384", "sha512"})
# Absolute bounds on what a device may ask PBKDF2 to do; the hub's own, tighter
# range comes from settings (NH1_*) through `parse_alg`'s arguments. The caller
# picks the parameters and the hub derives before it can check anything, so an
# unbounded iteration count would let one request burn a core for minutes.
MAX_ITERATIONS = 100_000
MAX_KEY_LENGTH = 128
# The caller also picks the derived key's length, which is the HMAC key: with a
# 1-byte key a forger tries 256 tokens and one verifies, whatever the secret.
# 16 bytes puts guessing out of reach; nerves_hub_link derives 32.
MIN_KEY_LENGTH = 16
# Longer digit strings are refused before int() reads them (its cost grows
# with the length, and past 4300 digits it raises).
_MAX_DIGITS = 9


class NH1Error(ValueError):
    """The headers or the token are malformed or do not verify."""


@dataclass(frozen=True)
class Alg:
    digest: str
    iterations: int
    length: int


@dataclass(frozen=True)
class Claims:
    identifier: str
    signed_at_ms: int


def _number(text: str) -> int | None:
    if not (text.isascii() and text.isdigit() and len(text) <= _MAX_DIGITS):
        return None
    return int(text)


def parse_alg(
    alg: str,
    *,
    digests: Collection[str] = _PBKDF2_DIGESTS,
    max_iterations: int = MAX_ITERATIONS,
    max_length: int = MAX_KEY_LENGTH,
) -> Alg:
    """`NH1-HMAC-<digest>-<iterations>-<length>`; the digest is case-insensitive.
    Refuses (NH1Error) anything outside `digests`, 1..max_iterations and
    MIN_KEY_LENGTH..max_length: this runs before any key derivation."""
    prefix = "NH1-HMAC-"
    if not alg.startswith(prefix):
        raise NH1Error("unsupported signature algorithm")
    parts = alg[len(prefix) :].split("-")
    if len(parts) != 3:
        raise NH1Error("malformed x-nh-alg")
    digest = parts[0].lower()
    if digest not in _PBKDF2_DIGESTS:
        raise NH1Error("unknown digest")
    iterations, length = _number(parts[1]), _number(parts[2])
    if iterations is None or length is None:
        raise NH1Error("malformed x-nh-alg numbers")
    parsed = Alg("sha1" if digest == "sha" else digest, iterations, length)
    if digest not in digests and parsed.digest not in digests:
        raise NH1Error(f"digest {digest} is not accepted (accepted: {', '.join(sorted(digests))})")
    if not 1 <= iterations <= min(max_iterations, MAX_ITERATIONS):
        raise NH1Error(f"iterations must be 1 to {min(max_iterations, MAX_ITERATIONS)}")
    if not MIN_KEY_LENGTH <= length <= min(max_length, MAX_KEY_LENGTH):
        raise NH1Error(f"key length must be {MIN_KEY_LENGTH} to {min(max_length, MAX_KEY_LENGTH)}")
    return parsed


def parse_time(value: str) -> int:
    # Erlang's String.to_integer: optional sign, digits, nothing else.
    body = value[1:] if value[:1] in "+-" else value
    # 20 digits hold any 64-bit time; more is not a time (and int() of a long
    # string costs, then raises past 4300 digits).
    if not body or not (body.isascii() and body.isdigit()) or len(body) > 20:
        raise NH1Error("malformed x-nh-time")
    return int(value)


def build_salt(alg: str, key: str, time: str) -> str:
    return f"{SALT_HEADER}x-nh-alg={alg}\nx-nh-key={key}\nx-nh-time={time}\n"


@lru_cache(maxsize=4096)
def derive_key(secret: str, salt: str, digest: str, iterations: int, length: int) -> bytes:
    # Cached like Plug.Crypto's key cache: a device reconnecting with the same
    # headers (a retry inside the same second) does not pay PBKDF2 twice.
    return hashlib.pbkdf2_hmac(digest, secret.encode(), salt.encode(), iterations, length)


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    if not text.isascii():
        raise NH1Error("token is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise NH1Error("token is not base64url") from None


def verify_token(token: str, key: bytes) -> bytes:
    """Check the MAC in constant time and return the decoded payload bytes."""
    parts = token.split(".")
    if len(parts) != 3:
        raise NH1Error("token must have three parts")
    protected, payload, mac = parts
    digest = _MACS.get(protected)
    if digest is None:
        raise NH1Error("unsupported token protection")
    expected = hmac.new(key, f"{protected}.{payload}".encode("ascii", "replace"), digest).digest()
    if not hmac.compare_digest(expected, b64url_decode(mac)):
        raise NH1Error("signature mismatch")
    return b64url_decode(payload)


# --- External Term Format: the only shapes Plug.Crypto writes ------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise NH1Error("truncated payload")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]


def _read_term(r: _Reader, depth: int = 0) -> object:
    if depth > 2:
        raise NH1Error("payload nested too deeply")
    tag = r.byte()
    if tag == 97:  # SMALL_INTEGER_EXT
        return r.byte()
    if tag == 98:  # INTEGER_EXT
        return int(struct.unpack(">i", r.take(4))[0])
    if tag == 110:  # SMALL_BIG_EXT
        n, sign = r.byte(), r.byte()
        if n > 16:
            raise NH1Error("integer too large")
        value = int.from_bytes(r.take(n), "little")
        return -value if sign else value
    if tag == 109:  # BINARY_EXT
        (length,) = struct.unpack(">I", r.take(4))
        return r.take(length)
    if tag == 104:  # SMALL_TUPLE_EXT
        return tuple(_read_term(r, depth + 1) for _ in range(r.byte()))
    if tag == 116:  # MAP_EXT
        (arity,) = struct.unpack(">I", r.take(4))
        if arity > 4:
            raise NH1Error("map too large")
        return {_read_key(r): _read_term(r, depth + 1) for _ in range(arity)}
    raise NH1Error("unexpected term in payload")


def _read_key(r: _Reader) -> str:
    # Map keys are atoms (`%{data: ..., signed: ...}`); read them as plain text.
    tag = r.byte()
    if tag in (100, 118):  # ATOM_EXT, ATOM_UTF8_EXT: 2-byte length
        (length,) = struct.unpack(">H", r.take(2))
    elif tag in (115, 119):  # SMALL_ATOM_EXT, SMALL_ATOM_UTF8_EXT: 1-byte length
        length = r.byte()
    else:
        raise NH1Error("unexpected map key in payload")
    return r.take(length).decode("utf-8", "replace")


def decode_payload(payload: bytes) -> Claims:
    """{identifier, signed_at_ms, max_age}, legacy {identifier, signed_at_ms} or
    legacy %{data: identifier, signed: signed_at_ms}."""
    r = _Reader(payload)
    if r.byte() != 131:
        raise NH1Error("not an external term")
    term = _read_term(r)
    if r.pos != len(payload):
        raise NH1Error("trailing bytes in payload")
    data: object
    signed: object
    if isinstance(term, tuple) and len(term) in (2, 3):
        data, signed = term[0], term[1]
        if len(term) == 3 and not isinstance(term[2], int):
            raise NH1Error("max age is not an integer")
    elif isinstance(term, dict) and set(term) == {"data", "signed"}:
        data, signed = term["data"], term["signed"]
    else:
        raise NH1Error("unexpected payload shape")
    if not isinstance(data, bytes) or not isinstance(signed, int):
        raise NH1Error("unexpected payload types")
    try:
        identifier = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NH1Error("identifier is not UTF-8") from None
    return Claims(identifier=identifier, signed_at_ms=signed)


# --- Signing (tests, benchmarks, tools) ------------------------------------------


def _etf_int(n: int) -> bytes:
    if 0 <= n <= 255:
        return bytes([97, n])
    if -(2**31) <= n < 2**31:
        return b"\x62" + struct.pack(">i", n)
    magnitude = abs(n)
    digits = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
    return bytes([110, len(digits), 1 if n < 0 else 0]) + digits


def encode_payload(identifier: str, signed_at_ms: int, max_age: int = EMBEDDED_MAX_AGE) -> bytes:
    ident = identifier.encode()
    return b"\x83\x68\x03\x6d" + struct.pack(">I", len(ident)) + ident + _etf_int(signed_at_ms) + _etf_int(max_age)


def sign_headers(
    key: str, secret: str, identifier: str, signed_at: int, alg: str = DEFAULT_ALG
) -> list[tuple[str, str]]:
    """The four x-nh-* headers nerves_hub_link sends, in its order."""
    parsed = parse_alg(alg)
    time = str(signed_at)
    derived = derive_key(secret, build_salt(alg, key, time), parsed.digest, parsed.iterations, parsed.length)
    signing_input = "SFMyNTY." + b64url_encode(encode_payload(identifier, signed_at * 1000))
    mac = hmac.new(derived, signing_input.encode(), hashlib.sha256).digest()
    return [
        ("x-nh-alg", alg),
        ("x-nh-key", key),
        ("x-nh-time", time),
        ("x-nh-signature", signing_input + "." + b64url_encode(mac)),
    ]
