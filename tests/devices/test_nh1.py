"""devicelink.nh1: the two reference test vectors and the payload decoder."""

from __future__ import annotations

from typing import Any

import pytest

from devicelink import nh1
from tests.support.nhl_client import nh1_headers

VECTOR_1: dict[str, Any] = {
    "key": "nhp_example_product_key",
    "secret": "example-product-secret",
    "identifier": "nh-test-0001",
    "time": 1700000000,
    "derived": "550d20bbf09264993ea48b30652ba83b780c85d80af37af2dc1c76e44a8505d9",
    "payload": "8368036d0000000c6e682d746573742d303030316e06000068e5cf8b016200015180",
    "signature": "SFMyNTY.g2gDbQAAAAxuaC10ZXN0LTAwMDFuBgAAaOXPiwFiAAFRgA.uzFxm6qPFi2YdBITwPhWFHbRiVIg5COb5mIBMhkyGF0",
}
VECTOR_2: dict[str, Any] = {
    "key": "nhp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/abcde",
    "secret": "s3cr3t-Example-Secret-Value-For-Docs-000000",
    "identifier": "abc123",
    "time": 1735689600,
    "derived": "11f235d77901f820b2328260637f68e3163d546941462c1171dfe1a759f35f60",
    "payload": "8368036d000000066162633132336e0600007c291f940162" + "00015180",
    "signature": "SFMyNTY.g2gDbQAAAAZhYmMxMjNuBgAAfCkflAFiAAFRgA.W_uZuesyzw11IVuExjajI2w-fmayBsge212tjd5_ZZ4",
}


@pytest.mark.parametrize("vector", [VECTOR_1, VECTOR_2], ids=["device-protocol", "server-behaviour"])
def test_it_verifies_the_reference_vectors(vector: dict[str, Any]) -> None:
    # given
    alg = nh1.parse_alg("NH1-HMAC-sha256-1000-32")
    salt = nh1.build_salt("NH1-HMAC-sha256-1000-32", vector["key"], str(vector["time"]))
    # when
    derived = nh1.derive_key(vector["secret"], salt, alg.digest, alg.iterations, alg.length)
    payload = nh1.verify_token(vector["signature"], derived)
    claims = nh1.decode_payload(payload)
    # then
    assert derived.hex() == vector["derived"]
    assert payload.hex() == vector["payload"]
    assert claims == nh1.Claims(vector["identifier"], vector["time"] * 1000)


@pytest.mark.parametrize("vector", [VECTOR_1, VECTOR_2], ids=["device-protocol", "server-behaviour"])
def test_it_signs_like_plug_crypto(vector: dict[str, Any]) -> None:
    # when
    ours = nh1.sign_headers(vector["key"], vector["secret"], vector["identifier"], vector["time"])
    clients = nh1_headers(vector["key"], vector["secret"], vector["identifier"], vector["time"])
    # then
    assert ours == clients
    assert ours[3] == ("x-nh-signature", vector["signature"])


def test_it_accepts_hs384_and_hs512_protection() -> None:
    # given
    import hashlib
    import hmac

    key = b"k" * 32
    body = nh1.b64url_encode(nh1.encode_payload("dev", 1_700_000_000_000))
    for protected, digest in (("SFMzODQ", hashlib.sha384), ("SFM1MTI", hashlib.sha512)):
        mac = hmac.new(key, f"{protected}.{body}".encode(), digest).digest()
        # when
        payload = nh1.verify_token(f"{protected}.{body}.{nh1.b64url_encode(mac)}", key)
        # then
        assert nh1.decode_payload(payload).identifier == "dev"


def test_it_decodes_the_legacy_shapes() -> None:
    # given: {data, signed_at} and %{data: ..., signed: ...} (atoms as SMALL_ATOM_UTF8_EXT)
    two_tuple = b"\x83\x68\x02\x6d\x00\x00\x00\x03abc\x62\x00\x00\x01\x00"
    legacy_map = b"\x83\x74\x00\x00\x00\x02" + b"\x77\x04data\x6d\x00\x00\x00\x03abc" + b"\x77\x06signed\x61\x07"
    # then
    assert nh1.decode_payload(two_tuple) == nh1.Claims("abc", 256)
    assert nh1.decode_payload(legacy_map) == nh1.Claims("abc", 7)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x84\x68\x03",
        b"\x83\x68\x03\x6d\x00\x00\x00\x03ab",  # truncated
        b"\x83\x68\x01\x6d\x00\x00\x00\x01a",  # wrong arity
        b"\x83\x68\x02\x61\x01\x61\x02",  # identifier not a binary
        b"\x83\x68\x02\x6d\x00\x00\x00\x01a\x6d\x00\x00\x00\x01b",  # timestamp not an integer
        b"\x83\x64\x00\x03foo",  # an atom
        b"\x83\x68\x02\x6d\x00\x00\x00\x01a\x61\x01\x00",  # trailing byte
        b"\x83\x68\x02\x6d\xff\xff\xff\xffa\x61\x01",  # absurd length
    ],
)
def test_it_refuses_malformed_payloads(payload: bytes) -> None:
    with pytest.raises(nh1.NH1Error):
        nh1.decode_payload(payload)


@pytest.mark.parametrize(
    "alg",
    [
        "NH2-HMAC-sha256-1000-32",
        "NH1-HMAC-md4-1000-32",
        "NH1-HMAC-sha256-1000",
        "NH1-HMAC-sha256-x-32",
        "NH1-HMAC-sha256-10000000-32",
        "NH1-HMAC-sha256-1000-0",
    ],
)
def test_it_refuses_bad_algorithms(alg: str) -> None:
    with pytest.raises(nh1.NH1Error):
        nh1.parse_alg(alg)


def test_it_reads_the_digest_case_insensitively() -> None:
    assert nh1.parse_alg("NH1-HMAC-SHA512-10-64") == nh1.Alg("sha512", 10, 64)


def test_it_refuses_a_tampered_token() -> None:
    # given
    derived = bytes.fromhex(VECTOR_1["derived"])
    protected, body, mac = VECTOR_1["signature"].split(".")
    # then
    with pytest.raises(nh1.NH1Error):
        nh1.verify_token(f"{protected}.{body}.{mac[:-2]}AA", derived)
    with pytest.raises(nh1.NH1Error):
        nh1.verify_token(f"HS256.{body}.{mac}", derived)
