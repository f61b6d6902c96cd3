"""M6: upload + full validation of a large firmware file.

    python bench/m6_upload.py [--size-mb 200] [--smoke]

Builds a signed fwup file with tests/support/fwup.py (a random resource, so it
does not compress), then times firmware.services.upload_firmware with the
validation task running in-process (embedded mode): the copy into local
storage, the SHA-256 + 1 MiB partials pass, the signature and the BLAKE2b-256
pass over the resource. Baseline: hashlib.blake2b over the same file, in the
same run. Memory: peak RSS growth during the upload (VmHWM reset through
/proc/self/clear_refs), against the goal of 64 MB.

Goal: >= 100 MB/s, peak RSS growth <= 64 MB. --smoke uses 20 MB (CI).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MB = 1_000_000


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _reset_peak() -> None:
    # Writing 5 resets VmHWM to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="20 MB, for CI")
    args = parser.parse_args()
    size = (20 if args.smoke else args.size_mb) * MB

    work = Path(tempfile.mkdtemp(prefix="nh-bench-m6-"))
    os.environ.update({"DATA_DIR": str(work / "data"), "DJANGO_SETTINGS_MODULE": "nerveshub.settings"})
    for name in ("DATABASE_URL", "REDIS_URL", "NERVESHUB_PRODUCTION", "FIRMWARE_STORAGE"):
        os.environ.pop(name, None)
    os.environ["FIRMWARE_MAX_SIZE"] = str(size + 10 * MB)

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    from firmware import services
    from firmware.models import FirmwareStatus, SigningKey
    from nerveshub.tenancy import services as tenancy
    from tests.support.fwup import FirmwareSpec, generate_keypair, write_firmware

    # --- build the file ---------------------------------------------------------
    resource = work / "rootfs.img"
    with resource.open("wb") as f:
        left = size
        while left:
            n = min(left, 4 * 1024 * 1024)
            f.write(os.urandom(n))
            left -= n
    pair = generate_keypair()
    fw_path = work / "big.fw"
    with fw_path.open("wb") as out:
        write_firmware(
            out,
            FirmwareSpec(
                product="bench",
                key=pair,
                resources={"rootfs.img": resource},
                compresslevel=1,
                compression=zipfile.ZIP_DEFLATED,
            ),
        )
    resource.unlink()
    file_size = fw_path.stat().st_size
    org, _ = tenancy.get_or_create_org("bench", "bench-org")
    product, _ = tenancy.get_or_create_product("bench", org, "bench")
    SigningKey.objects.create(org=org, name="bench", key=pair.public)

    # --- baseline: blake2b over the same file -----------------------------------
    start = time.perf_counter()
    hasher = hashlib.blake2b(digest_size=32)
    with fw_path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            hasher.update(chunk)
    baseline = time.perf_counter() - start

    # --- the hub: upload + validation --------------------------------------------
    rss_before = _status("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    with fw_path.open("rb") as f:
        firmware = services.upload_firmware("bench", product, f, "big.fw")
    elapsed = time.perf_counter() - start
    peak_growth = _status("VmHWM") - rss_before
    firmware.refresh_from_db()
    if firmware.status != FirmwareStatus.VALID:
        raise SystemExit(f"validation failed: {firmware.status} {firmware.rejected_reason}")

    # A separate timing of validation alone (the service re-run on the stored file).
    type(firmware).objects.filter(pk=firmware.pk).update(status=FirmwareStatus.PENDING)
    start = time.perf_counter()
    services.validate_firmware(firmware.pk)
    validation_only = time.perf_counter() - start

    rate = file_size / elapsed / MB
    base_rate = file_size / baseline / MB
    print(f"file: {file_size / MB:.1f} MB ({fw_path})")
    print(f"upload+validation: {elapsed:.2f} s = {rate:.0f} MB/s (goal >= 100 MB/s)")
    print(f"validation alone: {validation_only:.2f} s = {file_size / validation_only / MB:.0f} MB/s")
    print(f"baseline blake2b: {baseline:.2f} s = {base_rate:.0f} MB/s; ratio hub/baseline = {rate / base_rate:.2f}")
    print(f"peak RSS growth: {peak_growth / MB:.1f} MB (goal <= 64 MB)")
    ok = rate >= 100 and peak_growth <= 64 * MB
    print("RESULT:", "PASS" if ok else "MISS")
    services.delete_firmware("bench", firmware)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
