"""Delta generation: time and size for a rootfs with a 1 % change.

    python bench/delta_gen.py [--size-mb 100] [--smoke]

Builds two signed, delta-capable fwup files with tests/support/fwup.py: a
random rootfs.img of --size-mb (random, so it does not compress) and the same
image with 64 random bytes overwritten every 6,400 bytes (1 % of its bytes,
spread over the whole image, the worst layout for a patch of that size). Then
times what the hub's delta build runs (firmware.delta): build_delta (unzip,
`xdelta3 -A -S -f -s`, the new ZIP) and verify_delta (every patch decoded with
`xdelta3 -d` and hashed against meta.conf), and reports the delta's size
against the full file. Baseline: one bare `xdelta3 -e` over the same two
images, in the same run.

Needs xdelta3 on PATH. --smoke uses 4 MB (CI).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MB = 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="4 MB, for CI")
    args = parser.parse_args()
    size = (4 if args.smoke else args.size_mb) * MB

    from firmware import delta, fwfile
    from tests.support.fwup import FirmwareSpec, changed_copy, generate_keypair, write_firmware

    if delta.xdelta3_path() is None:
        sys.exit("xdelta3 is not installed (apt-get install xdelta3)")
    work = Path(tempfile.mkdtemp(prefix="nh-bench-delta-"))
    try:
        old_image, new_image = work / "rootfs-a.img", work / "rootfs-b.img"
        original = random.Random(1).randbytes(size)
        old_image.write_bytes(original)
        new_image.write_bytes(changed_copy(original, every=6400))
        del original
        key = generate_keypair()
        files = {}
        for version, image in (("1.0.0", old_image), ("1.1.0", new_image)):
            spec = FirmwareSpec(
                version=version,
                key=key,
                resources={"rootfs.img": image, "version.txt": version.encode()},
                delta_sources={"rootfs.img": (2048, 2 * size // 512)},
            )
            files[version] = work / f"{version}.fw"
            with files[version].open("wb") as out:
                write_firmware(out, spec)
        limits = fwfile.Limits(max_inflated=4 * size + 10 * MB, max_ratio=100)
        scratch = work / "scratch"
        scratch.mkdir()

        started = time.perf_counter()
        built = delta.build_delta(
            files["1.0.0"], files["1.1.0"], work / "delta.fw", scratch, limits=limits, timeout=3600
        )
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        delta.verify_delta(files["1.0.0"], files["1.1.0"], work / "delta.fw", scratch, limits=limits, timeout=3600)
        verify_s = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run(
            [str(delta.xdelta3_path()), "-e", "-A", "-S", "-f", "-s", old_image, new_image, work / "bare.vcdiff"],
            check=True,
        )
        bare_s = time.perf_counter() - started

        full = files["1.1.0"].stat().st_size
        print(f"rootfs: {size / MB:.0f} MB random, 1 % changed (64 bytes every 6,400)")
        print(f"full file: {full:,} bytes; delta: {built.size:,} bytes; ratio {built.size / full:.4f}")
        print(f"patched: {', '.join(built.patched)}; needs fwup >= {built.fwup_version}")
        print(f"build_delta: {build_s:.2f} s; verify_delta: {verify_s:.2f} s; total {build_s + verify_s:.2f} s")
        print(f"baseline, bare xdelta3 -e: {bare_s:.2f} s ({(work / 'bare.vcdiff').stat().st_size:,} bytes)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
