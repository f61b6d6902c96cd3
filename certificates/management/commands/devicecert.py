"""Make Device CA and device certificates for certificate-authenticated devices.

    python manage.py devicecert ca create --cn "Acme Device CA" --out DIR [--days N] [--nerves-key]
    python manage.py devicecert sign --ca-cert DIR/ca.pem --ca-key DIR/ca-key.pem --serial SN123 --out DIR [--days N]
    python manage.py devicecert code --org acme

`ca create` writes ca.pem and ca-key.pem (P-256, self-signed, SKI, CA:true).
`sign` writes <serial>.pem and <serial>-key.pem (P-256, CN = serial, AKI = the
CA's key id). `code` prints the organization's proof-of-possession code: sign a
certificate with that code as --serial and upload it with the CA.
docs/certificates.md has the openssl equivalents.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from certificates import nerves_key, pki, services
from nerveshub.tenancy.models import Organization


def _write(path: Path, data: bytes, *, secret: bool, force: bool) -> None:
    if path.exists() and not force:
        raise CommandError(f"{path} exists (use --force to overwrite)")
    # Private keys are created 0600 from the start, never readable in between.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _file_stem(serial: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", serial)[:100] or "device"


class Command(BaseCommand):
    help = "Make a Device CA, sign device certificates, or print a CA verification code."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="command", required=True)

        ca = commands.add_parser("ca", help="Device CA certificates")
        ca_commands = ca.add_subparsers(dest="ca_command", required=True)
        create = ca_commands.add_parser("create", help="Create a P-256 Device CA (key + self-signed certificate)")
        create.add_argument("--cn", required=True, help="The CA's common name")
        create.add_argument("--out", required=True, type=Path, help="Directory for ca.pem and ca-key.pem")
        create.add_argument("--days", type=int, default=3650, help="Validity in days (default 3650)")
        create.add_argument(
            "--nerves-key",
            action="store_true",
            help="Shape the CA as a NervesKey signer certificate (ATECC508A/608A compressed format)",
        )
        create.add_argument("--force", action="store_true", help="Overwrite existing files")

        sign = commands.add_parser("sign", help="Create a P-256 device key and certificate signed by a CA")
        sign.add_argument("--ca-cert", required=True, type=Path)
        sign.add_argument("--ca-key", required=True, type=Path)
        sign.add_argument("--serial", required=True, help="The device's serial number: certificate CN and identifier")
        sign.add_argument("--out", required=True, type=Path, help="Directory for <serial>.pem and <serial>-key.pem")
        sign.add_argument("--days", type=int, default=3650, help="Validity in days (default 3650)")
        sign.add_argument("--force", action="store_true", help="Overwrite existing files")

        code = commands.add_parser("code", help="Print an organization's CA verification code (valid 1 h)")
        code.add_argument("--org", required=True, help="Organization name")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["command"] == "ca":
            self._create_ca(options)
        elif options["command"] == "sign":
            self._sign(options)
        else:
            self._code(options)

    def _create_ca(self, options: dict[str, Any]) -> None:
        out: Path = options["out"]
        if options["days"] < 1:
            raise CommandError("--days must be at least 1")
        out.mkdir(parents=True, exist_ok=True)
        try:
            ca = pki.create_ca(options["cn"], days=options["days"], nerves_key_signer=options["nerves_key"])
        except nerves_key.NervesKeyError as exc:
            raise CommandError(str(exc)) from None
        _write(out / "ca-key.pem", ca.key_pem, secret=True, force=options["force"])
        _write(out / "ca.pem", ca.cert_pem, secret=False, force=options["force"])
        self.stdout.write(f"Wrote {out / 'ca.pem'} and {out / 'ca-key.pem'} (keep the key offline).")
        self.stdout.write(f"Subject: {ca.cert.subject.rfc4514_string()}  valid until {ca.cert.not_valid_after_utc}")

    def _sign(self, options: dict[str, Any]) -> None:
        try:
            ca = pki.load_issued(options["ca_cert"].read_bytes(), options["ca_key"].read_bytes())
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot load the CA: {exc}") from None
        serial = options["serial"].strip()
        if not serial or len(serial) > 64:
            raise CommandError("--serial must be 1 to 64 characters (it becomes the certificate CN)")
        if options["days"] < 1:
            raise CommandError("--days must be at least 1")
        out: Path = options["out"]
        out.mkdir(parents=True, exist_ok=True)
        device = pki.sign_device(ca, serial, days=options["days"])
        stem = _file_stem(serial)
        _write(out / f"{stem}-key.pem", device.key_pem, secret=True, force=options["force"])
        _write(out / f"{stem}.pem", device.cert_pem, secret=False, force=options["force"])
        self.stdout.write(f"Wrote {out / f'{stem}.pem'} and {out / f'{stem}-key.pem'} for device {serial}.")

    def _code(self, options: dict[str, Any]) -> None:
        org = Organization.objects.filter(name=options["org"]).first()
        if org is None:
            raise CommandError(f"no organization named {options['org']!r}")
        self.stdout.write(services.verification_code(org))
