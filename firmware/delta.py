"""Building and checking a delta firmware file (docs/firmware.md, "Delta updates").

Pure functions over files on disk: no database, no storage. A delta file is
the target `.fw` with each delta-capable resource replaced by an xdelta3
(VCDIFF) patch against the same resource of the source `.fw`, which is what the
device holds where meta.conf's delta source points. What fwup needs of it:

* the signature entry and `meta.conf` byte-identical to the target's, first and
  in the same order: only meta.conf is signed, so the signature stays valid;
* every entry written with its sizes in the local header (no data descriptor):
  fwup tells a patch from a whole resource by comparing the local header's size
  with meta.conf's `length`;
* after decoding, each resource hashes to meta.conf's BLAKE2b-256.

Entries no upgrade task uses are dropped, so `fwup -V` may refuse a valid delta
file; `verify_delta` is the hub's own check instead: it decodes every patch
with xdelta3 against its source and compares the result with the target's
meta.conf.

Both source and target are files the hub validated (signed by the
organization, every resource hashed, sizes within the upload limits); the
work here is bounded by those limits and by `timeout` seconds per xdelta3 run.
Every problem raises DeltaFailed (permanent, with a reason) or NotWorthIt.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from firmware import fwfile

# Resources smaller than this are sent whole: a patch saves next to nothing and
# costs the device an xdelta3 run.
MIN_PATCH_RESOURCE = 4096
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # APPNOTE 4.3.7
_DATA_DESCRIPTOR_FLAG = 0x8


class DeltaFailed(Exception):
    """A permanent failure to build or check a delta; `reason` is shown on the
    deployment page."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotWorthIt(Exception):
    """The delta would not be smaller than the full file (or has nothing to patch)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Built:
    patched: list[str]  # resource names sent as patches
    size: int  # bytes of the delta file
    fwup_version: str  # the oldest fwup that applies it


def xdelta3_path() -> str | None:
    """The xdelta3 program on PATH, or None: then the hub has no deltas."""
    return shutil.which("xdelta3")


def _xdelta3(args: list[str], timeout: float) -> None:
    program = xdelta3_path()
    if program is None:
        raise DeltaFailed("xdelta3 is not installed on this hub.")
    try:
        done = subprocess.run(  # noqa: S603 - fixed program, paths the hub chose
            [program, *args], stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise DeltaFailed(f"xdelta3 took longer than {timeout:.0f} s.") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()[-300:]
        raise DeltaFailed(f"xdelta3 failed (exit {done.returncode}): {message or 'no message'}")


def encode(source: Path, target: Path, out: Path, timeout: float) -> None:
    # -A: no application header (it would carry file names); -S: no secondary
    # compressor, so the device's decoder needs none; -f: overwrite `out`.
    _xdelta3(["-A", "-S", "-f", "-s", str(source), str(target), str(out)], timeout)


def decode(source: Path, patch: Path, out: Path, timeout: float) -> None:
    _xdelta3(["-d", "-f", "-s", str(source), str(patch), str(out)], timeout)


@dataclass(frozen=True)
class _Target:
    meta_conf: bytes
    signature: bytes | None
    metadata: fwfile.Metadata
    resources: dict[str, fwfile.Resource]  # by entry name


def _read_target(archive: zipfile.ZipFile) -> _Target:
    meta_conf, signature = fwfile.read_meta(archive)
    metadata = fwfile.parse_metadata(meta_conf)
    return _Target(meta_conf, signature, metadata, {r.entry: r for r in metadata.resources})


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
    """Copy one entry out, never more than its declared size."""
    with archive.open(info) as entry, path.open("wb") as out:
        remaining = info.file_size
        while remaining > 0:
            chunk = entry.read(min(fwfile.CHUNK, remaining))
            if not chunk:
                break
            out.write(chunk)
            remaining -= len(chunk)


def _entry(name: str, like: zipfile.ZipInfo, compress_type: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=like.date_time)
    info.compress_type = compress_type
    info.external_attr = like.external_attr
    return info


def _copy_in(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
    # The size is known before writing, so zipfile decides on ZIP64 up front;
    # `archive` writes to a seekable file, so it fills the local header in
    # afterwards instead of writing a data descriptor. Deflate uses zlib's
    # default level.
    info.file_size = path.stat().st_size
    with path.open("rb") as src, archive.open(info, "w") as dst:
        shutil.copyfileobj(src, dst, fwfile.CHUNK)


def _open(path: Path, limits: fwfile.Limits) -> tuple[IO[bytes], zipfile.ZipFile]:
    stream = path.open("rb")
    try:
        return stream, fwfile.open_archive(stream, limits)
    except BaseException:
        stream.close()
        raise


def build_delta(
    source: Path, target: Path, out: Path, workdir: Path, *, limits: fwfile.Limits, timeout: float
) -> Built:
    """Write the delta from `source` to `target` into `out` (a seekable file).
    Raises NotWorthIt or DeltaFailed."""
    source_stream, source_zip = _open(source, limits)
    target_stream, target_zip = _open(target, limits)
    try:
        with source_zip, target_zip:
            return _build(source_zip, target_zip, target.stat().st_size, out, workdir, timeout)
    except fwfile.InvalidFirmware as exc:
        raise DeltaFailed(exc.reason) from None
    finally:
        source_stream.close()
        target_stream.close()


def _build(
    source_zip: zipfile.ZipFile, target_zip: zipfile.ZipFile, target_size: int, out: Path, workdir: Path, timeout: float
) -> Built:
    wanted = _read_target(target_zip)
    support = wanted.metadata.delta
    if not support.resources:
        raise NotWorthIt("The target firmware has no delta-capable resource.")
    source_entries = {info.filename: info for info in source_zip.infolist()}
    patched: list[str] = []
    versions: list[str] = []
    with out.open("wb") as handle, zipfile.ZipFile(handle, "w", allowZip64=True) as archive:
        infos = target_zip.infolist()
        # The signature (if any) and meta.conf, as the target has them.
        head = 2 if wanted.signature is not None else 1
        for info in infos[:head]:
            archive.writestr(_entry(info.filename, info, info.compress_type), target_zip.read(info))
        for info in infos[head:]:
            resource = wanted.resources.get(info.filename)
            if resource is None or resource.name not in support.upgrade_resources:
                continue  # no upgrade task reads it (a `complete`-only resource, a stray entry)
            whole = workdir / "target.bin"
            _extract(target_zip, info, whole)
            base = source_entries.get(info.filename)
            if resource.name in support.resources and base is not None and resource.length >= MIN_PATCH_RESOURCE:
                original = workdir / "source.bin"
                patch = workdir / "patch.vcdiff"
                _extract(source_zip, base, original)
                encode(original, whole, patch, timeout)
                # Kept only when smaller: fwup takes an entry whose size equals
                # meta.conf's length for the whole resource.
                if patch.stat().st_size < resource.length:
                    _copy_in(archive, _entry(info.filename, info, zipfile.ZIP_DEFLATED), patch)
                    patched.append(resource.name)
                    versions.append(support.fwup_version)
                    continue
            _copy_in(archive, _entry(info.filename, info, info.compress_type), whole)
    if not patched:
        raise NotWorthIt("No resource is smaller as a patch than whole.")
    size = out.stat().st_size
    if size >= target_size:
        raise NotWorthIt(f"The delta ({size:,} bytes) is not smaller than the full file ({target_size:,} bytes).")
    return Built(patched=patched, size=size, fwup_version=support.fwup_version)


@dataclass(frozen=True)
class LocalHeader:
    name: str
    flags: int
    method: int
    size: int  # uncompressed size as the local header states it


def local_headers(stream: IO[bytes], archive: zipfile.ZipFile) -> list[LocalHeader]:
    """Each entry's local header as fwup reads it: flags and uncompressed size
    (from the ZIP64 extra field when the 32-bit field says 0xffffffff)."""
    headers: list[LocalHeader] = []
    for info in archive.infolist():
        stream.seek(info.header_offset)
        raw = stream.read(_LOCAL_HEADER.size)
        if len(raw) < _LOCAL_HEADER.size:
            raise DeltaFailed(f"The local header of {info.filename} is truncated.")
        magic, _, flags, method, _, _, _, _, size, name_len, extra_len = _LOCAL_HEADER.unpack(raw)
        if magic != b"PK\x03\x04":
            raise DeltaFailed(f"The local header of {info.filename} is missing.")
        name = stream.read(name_len).decode("utf-8", "replace")
        extra = stream.read(extra_len)
        if size == 0xFFFFFFFF:
            size = _zip64_size(extra, info.filename)
        headers.append(LocalHeader(name=name, flags=flags, method=method, size=size))
    return headers


def _zip64_size(extra: bytes, name: str) -> int:
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, at)
        if kind == 0x0001 and length >= 8:
            return int(struct.unpack_from("<Q", extra, at + 4)[0])
        at += 4 + length
    raise DeltaFailed(f"The local header of {name} has no ZIP64 size.")


def _digest(path: Path, resource: fwfile.Resource) -> tuple[int, str]:
    hasher = hashlib.blake2b(digest_size=32) if resource.blake2b_256 else hashlib.sha256()
    length = 0
    with path.open("rb") as f:
        while chunk := f.read(fwfile.CHUNK):
            hasher.update(chunk)
            length += len(chunk)
    return length, hasher.hexdigest()


def verify_delta(
    source: Path, target: Path, delta: Path, workdir: Path, *, limits: fwfile.Limits, timeout: float
) -> None:
    """The hub's check of a delta file: layout as fwup needs it, and every
    resource, patched or whole, decoded and compared with the target's
    meta.conf. Raises DeltaFailed."""
    opened = [_open(p, limits) for p in (source, target, delta)]
    try:
        (_, source_zip), (_, target_zip), (delta_stream, delta_zip) = opened
        _verify(source_zip, target_zip, delta_stream, delta_zip, workdir, timeout)
    except fwfile.InvalidFirmware as exc:
        raise DeltaFailed(exc.reason) from None
    finally:
        for stream, archive in opened:
            archive.close()
            stream.close()


def _verify(
    source_zip: zipfile.ZipFile,
    target_zip: zipfile.ZipFile,
    delta_stream: IO[bytes],
    delta_zip: zipfile.ZipFile,
    workdir: Path,
    timeout: float,
) -> None:
    wanted = _read_target(target_zip)
    meta_conf, signature = fwfile.read_meta(delta_zip)
    if meta_conf != wanted.meta_conf or signature != wanted.signature:
        raise DeltaFailed("The delta's meta.conf or signature differs from the target's.")
    headers = local_headers(delta_stream, delta_zip)
    for header in headers:
        if header.flags & _DATA_DESCRIPTOR_FLAG:
            raise DeltaFailed(f"{header.name} is written with a data descriptor; fwup needs sizes in the header.")
    order = [i.filename for i in target_zip.infolist()]
    names = [h.name for h in headers]
    if names != sorted(names, key=lambda n: order.index(n) if n in order else len(order)):
        raise DeltaFailed("The delta's entries are not in the target's order.")
    support = wanted.metadata.delta
    by_name = {r.name: r for r in wanted.metadata.resources}
    present = {h.name: h for h in headers}
    source_entries = {info.filename: info for info in source_zip.infolist()}
    for name in support.upgrade_resources:
        if by_name[name].entry not in present:
            raise DeltaFailed(f"Resource {name} is missing from the delta, and an upgrade task writes it.")
    head = 2 if signature is not None else 1
    for header in headers[head:]:
        resource = wanted.resources.get(header.name)
        if resource is None:
            raise DeltaFailed(f"The delta holds {header.name}, which the target's meta.conf does not list.")
        decoded = workdir / "decoded.bin"
        patch = workdir / "entry.bin"
        _extract(delta_zip, delta_zip.getinfo(header.name), patch)
        if header.size == resource.length:
            decoded = patch
        else:
            base = source_entries.get(header.name)
            if resource.name not in support.resources or base is None:
                raise DeltaFailed(f"Resource {resource.name} is a patch but has no delta source.")
            original = workdir / "source.bin"
            _extract(source_zip, base, original)
            decode(original, patch, decoded, timeout)
        length, digest = _digest(decoded, resource)
        if length != resource.length or digest != (resource.blake2b_256 or resource.sha256):
            raise DeltaFailed(f"Resource {resource.name} does not decode to the target's bytes.")
