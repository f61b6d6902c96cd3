"""`manage.py devicecert`: CA creation, device certificates, verification codes,
and the NervesKey signer shape."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path
from typing import cast

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from django.core.management import CommandError, call_command

from certificates import nerves_key, pki, services, x509
from certificates.models import DeviceCertificate
from certificates.pki import Issued
from tests.certificates.proof import register_ca
from tests.conftest import Tenant


def _run(*args: str) -> None:
    call_command("devicecert", *args)


def test_it_creates_a_ca_and_signs_a_device_the_hub_accepts(tenant: Tenant, tmp_path: Path) -> None:
    # given
    _run("ca", "create", "--cn", "Acme Device CA", "--out", str(tmp_path / "ca"), "--days", "30")
    _run(
        "sign",
        "--ca-cert",
        str(tmp_path / "ca" / "ca.pem"),
        "--ca-key",
        str(tmp_path / "ca" / "ca-key.pem"),
        "--serial",
        "SN/0001",
        "--out",
        str(tmp_path / "devices"),
    )
    ca = x509.load_one((tmp_path / "ca" / "ca.pem").read_bytes())
    leaf = x509.load_one((tmp_path / "devices" / "SN_0001.pem").read_bytes())
    # then the files have the promised shape
    assert x509.is_ca(ca) and x509.ski(ca) is not None
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days == 30
    assert x509.common_name(leaf) == "SN/0001"
    assert x509.aki(leaf) == x509.ski(ca)
    assert x509.signed_by(leaf, ca)
    assert stat.S_IMODE((tmp_path / "ca" / "ca-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "devices" / "SN_0001-key.pem").stat().st_mode) == 0o600
    # and the hub provisions the device from them
    issued = pki.load_issued((tmp_path / "ca" / "ca.pem").read_bytes(), (tmp_path / "ca" / "ca-key.pem").read_bytes())
    register_ca(tenant.admin, tenant.org, issued, jitp_product=tenant.product)
    assert services.authenticate_peer_certificate(leaf.public_bytes(Encoding.PEM)).identifier == "SN/0001"


def test_it_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    _run("ca", "create", "--cn", "A", "--out", str(tmp_path))
    with pytest.raises(CommandError, match="exists"):
        _run("ca", "create", "--cn", "A", "--out", str(tmp_path))
    _run("ca", "create", "--cn", "A", "--out", str(tmp_path), "--force")


def test_it_refuses_a_key_that_does_not_match_the_ca(tmp_path: Path) -> None:
    _run("ca", "create", "--cn", "A", "--out", str(tmp_path / "a"))
    _run("ca", "create", "--cn", "B", "--out", str(tmp_path / "b"))
    with pytest.raises(CommandError, match="does not match"):
        _run(
            "sign",
            "--ca-cert",
            str(tmp_path / "a" / "ca.pem"),
            "--ca-key",
            str(tmp_path / "b" / "ca-key.pem"),
            "--serial",
            "X",
            "--out",
            str(tmp_path),
        )


def test_it_prints_a_verification_code_that_registration_accepts(
    tenant: Tenant, tmp_path: Path, capsys: pytest.CaptureFixture[str], device_ca: Issued
) -> None:
    # when
    _run("code", "--org", "acme")
    code = capsys.readouterr().out.strip()
    proof = pki.sign_device(device_ca, code)
    # then
    ca = services.register_ca_certificate(
        tenant.admin, tenant.org, device_ca.cert_pem, description="", verification_pem=proof.cert_pem
    )
    assert ca.pk


# --- NervesKey ----------------------------------------------------------------------------


def test_it_creates_a_nerves_key_signer_that_survives_compression(tmp_path: Path) -> None:
    # when
    _run("ca", "create", "--cn", "Signer", "--out", str(tmp_path), "--days", "730", "--nerves-key")
    cert = x509.load_one((tmp_path / "ca.pem").read_bytes())
    # then
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert (start.minute, start.second) == (0, 0)
    assert (end.year - start.year, end.month, end.day, end.hour) == (2, start.month, start.day, start.hour)
    assert cert.subject == cert.issuer == nerves_key.signer_name()
    assert cert.serial_number >> 126 == 0b01 and cert.serial_number.bit_length() == 127
    assert x509.ski(cert) == nerves_key.key_identifier(cast(ec.EllipticCurvePublicKey, cert.public_key())).hex()
    assert len(cert.signature) <= 72
    compressed = nerves_key.compress(cert)
    assert len(compressed) == 72
    assert nerves_key.check_signer(cert) == []


def test_it_reproduces_every_signer_byte_for_byte() -> None:
    # ECDSA draws r and s at random; 40 signers make a short r or s (1 in 128 each) likely.
    for _ in range(40):
        signer = pki.create_ca("Signer", days=365, nerves_key_signer=True)
        r, s = decode_dss_signature(signer.cert.signature)
        assert r.bit_length() > 248 and s.bit_length() > 248
        rebuilt = nerves_key.decompress_signer(nerves_key.compress(signer.cert), signer.key.public_key())
        assert rebuilt == signer.cert
        assert x509.signed_by(rebuilt, rebuilt)


def test_it_encodes_dates_in_three_bytes() -> None:
    # given
    start = dt.datetime(2026, 11, 23, 9, tzinfo=dt.UTC)
    # when
    encoded = nerves_key.encode_dates(start, 31)
    # then
    assert len(encoded) == 3
    assert nerves_key.decode_dates(encoded) == (start, start.replace(year=2057))
    assert nerves_key.decode_dates(nerves_key.encode_dates(start, 0))[1].year == 9999


def test_it_moves_a_leap_day_issue_to_the_28th() -> None:
    start, end = nerves_key.compatible_validity(dt.datetime(2028, 2, 29, 15, 42, tzinfo=dt.UTC), 1)
    assert (start.month, start.day, start.hour) == (2, 28, 23)
    assert end == start.replace(year=2029)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cn", "Acme"], "CN=Signer"),
        (["--cn", "Signer", "--days", "12000"], "1 to 31"),
    ],
)
def test_it_refuses_nerves_key_signers_the_chip_cannot_store(tmp_path: Path, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        _run("ca", "create", *args, "--out", str(tmp_path), "--nerves-key")


def test_it_refuses_issue_years_after_2031() -> None:
    with pytest.raises(nerves_key.NervesKeyError, match="2000-2031"):
        nerves_key.compatible_validity(dt.datetime(2032, 1, 1, tzinfo=dt.UTC), 1)


def test_it_flags_an_ordinary_ca_as_not_nerves_key_compatible(device_ca: Issued) -> None:
    assert nerves_key.check_signer(device_ca.cert) != []


def test_it_authenticates_a_nerves_key_style_device_and_chain(tenant: Tenant) -> None:
    # given a signer registered as the Device CA, and a device certificate whose
    # AKI is the signer's SKI (SHA-1 of its SubjectPublicKeyInfo)
    signer = pki.create_ca("Signer", days=365, nerves_key_signer=True)
    register_ca(tenant.admin, tenant.org, signer, description="NervesKey signer", jitp_product=tenant.product)
    leaf = pki.sign_device(signer, "AAAABBBBCCCCDDDD")
    assert x509.aki(leaf.cert) == x509.ski(signer.cert)
    # when the device presents its certificate with the signer, as NervesKey does
    device = services.authenticate_peer_certificate([leaf.cert, signer.cert])
    # then
    assert device.identifier == "AAAABBBBCCCCDDDD"
    assert DeviceCertificate.objects.get().aki == x509.ski(signer.cert)
