"""Write real fwup-format firmware files, so every test case is generated, not hand-edited.

What fwup does (docs/fwup-format.md) and this module copies:

* a ZIP whose first entry is `meta.conf.ed25519` (64 raw bytes, stored) when signed,
  then `meta.conf` (deflated), then `data/<resource>` entries (entry time 1980-01-01);
* meta.conf with simple values unquoted and everything else quoted with backslash
  escapes; section titles quoted;
* each resource listed with its length and lower-case hex BLAKE2b-256;
* keys as `fwup -g` writes them: base64 of the 32-byte public key, and base64 of the
  64-byte secret (seed followed by public key).

Resources are bytes or a Path; a Path is streamed (hashed, then copied in chunks),
so the benchmarks can build 200 MB files without holding them in memory.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
import re
import shutil
import struct
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from nacl.signing import SigningKey as NaclSigningKey

CHUNK = 1024 * 1024
_SIMPLE = re.compile(r"^[A-Za-z0-9_.]+$")

ResourceSource = bytes | Path


@dataclass(frozen=True)
class KeyPair:
    public: str  # contents of fwup-key.pub
    private: str  # contents of fwup-key.priv
    signer: NaclSigningKey

    def sign(self, data: bytes) -> bytes:
        return bytes(self.signer.sign(data).signature)


def generate_keypair(*, padded: bool = True) -> KeyPair:
    signer = NaclSigningKey.generate()
    public = bytes(signer.verify_key)
    pub = base64.b64encode(public).decode()
    priv = base64.b64encode(bytes(signer) + public).decode()
    if not padded:
        pub, priv = pub.rstrip("="), priv.rstrip("=")
    return KeyPair(public=pub, private=priv, signer=signer)


def keypair_from_private(text: str) -> KeyPair:
    raw = base64.b64decode(text + "=" * (-len(text) % 4))
    signer = NaclSigningKey(raw[:32])
    assert bytes(signer.verify_key) == raw[32:], "the .priv file's public half does not match its seed"
    return KeyPair(public=base64.b64encode(raw[32:]).decode(), private=text, signer=signer)


def quote(value: str) -> str:
    """A value the way fwup writes it: bare when simple, else quoted with escapes."""
    if _SIMPLE.match(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def quote_title(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def describe(source: ResourceSource) -> tuple[int, str]:
    """(length, blake2b-256 hex) of a resource, streamed."""
    hasher = hashlib.blake2b(digest_size=32)
    if isinstance(source, bytes):
        hasher.update(source)
        return len(source), hasher.hexdigest()
    length = 0
    with source.open("rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
            length += len(chunk)
    return length, hasher.hexdigest()


@dataclass
class FirmwareSpec:
    product: str = "widget"
    version: str = "1.0.0"
    platform: str = "rpi4"
    architecture: str = "arm"
    author: str = "The Nerves Team"
    description: str = ""
    vcs_identifier: str = ""
    misc: str = ""
    resources: dict[str, ResourceSource] = field(default_factory=lambda: {"rootfs.img": b"\x00rootfs" * 1000})
    # Raw meta.conf text appended after the globals (extra keys, odd syntax).
    extra_meta: str = ""
    key: KeyPair | None = None
    compression: int = zipfile.ZIP_DEFLATED
    compresslevel: int | None = 6
    # Rewrites the generated meta.conf *before* it is signed (a hostile but
    # validly signed file); Tamper.meta_conf changes it after signing.
    edit_meta: Callable[[bytes], bytes] | None = None
    # Delta-capable resources: name -> (delta-source-raw-offset, delta-source-raw-count)
    # in the upgrade task, as fwup's delta examples write them (docs/firmware.md).
    delta_sources: dict[str, tuple[int | str, int | str]] = field(default_factory=dict)
    # Resources only a `complete` task writes (the upgrade task leaves them out);
    # when given, a `complete` task writing every resource comes first.
    complete_only: tuple[str, ...] = ()

    def meta_conf(self) -> bytes:
        meta = self._meta_conf()
        return self.edit_meta(meta) if self.edit_meta else meta

    def _meta_conf(self) -> bytes:
        lines = [f"meta-product={quote(self.product)}"]
        for key, value in (
            ("meta-description", self.description),
            ("meta-version", self.version),
            ("meta-author", self.author),
            ("meta-platform", self.platform),
            ("meta-architecture", self.architecture),
            ("meta-vcs-identifier", self.vcs_identifier),
            ("meta-misc", self.misc),
        ):
            if value:
                lines.append(f"{key}={quote(value)}")
        lines.append("require-fwup-version=1.0.0")
        if self.extra_meta:
            lines.append(self.extra_meta.rstrip("\n"))
        for name, source in self.resources.items():
            length, digest = describe(source)
            lines += [f"file-resource {quote_title(name)} {{", f"length={length}", f"blake2b-256={digest}", "}"]
        if self.complete_only:
            lines.append('task "complete" {')
            for name in self.resources:
                lines += [f"on-resource {quote_title(name)} {{", "funlist={2,raw_write,0}", "}"]
            lines.append("}")
        lines.append('task "upgrade" {')
        for name in self.resources:
            if name in self.complete_only:
                continue
            lines.append(f"on-resource {quote_title(name)} {{")
            if name in self.delta_sources:
                offset, count = self.delta_sources[name]
                lines += [f"delta-source-raw-offset={offset}", f"delta-source-raw-count={count}"]
            lines += ["funlist={2,raw_write,524288}", "}"]
        lines.append("}")
        return ("\n".join(lines) + "\n").encode()


@dataclass
class Tamper:
    """Ways to spoil a file after it has been signed, for the rejection tests."""

    meta_conf: Callable[[bytes], bytes] | None = None
    resources: dict[str, bytes] = field(default_factory=dict)
    # (name, data, compress_type) written after everything else.
    extra_entries: list[tuple[str, bytes, int]] = field(default_factory=list)
    signature: bytes | None = None


def _entry(name: str, date: tuple[int, int, int, int, int, int], compression: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=date)
    info.compress_type = compression
    info.external_attr = 0o644 << 16
    return info


def write_firmware(out: IO[bytes], spec: FirmwareSpec, tamper: Tamper | None = None) -> bytes:
    """Write a .fw to `out`; returns the meta.conf bytes as stored."""
    tamper = tamper or Tamper()
    meta = spec.meta_conf()
    signature = tamper.signature or (spec.key.sign(meta) if spec.key else None)
    stored_meta = tamper.meta_conf(meta) if tamper.meta_conf else meta
    now = time.gmtime()[:6]
    epoch = (1980, 1, 1, 0, 0, 0)
    with zipfile.ZipFile(out, "w", allowZip64=True) as archive:
        if signature is not None:
            archive.writestr(_entry("meta.conf.ed25519", now, zipfile.ZIP_STORED), signature)
        archive.writestr(_entry("meta.conf", now, zipfile.ZIP_DEFLATED), stored_meta)
        for name, source in spec.resources.items():
            entry_name = name[1:] if name.startswith("/") else f"data/{name}"
            info = _entry(entry_name, epoch, spec.compression)
            replacement = tamper.resources.get(name)
            if replacement is not None:
                archive.writestr(info, replacement, compresslevel=spec.compresslevel)
            elif isinstance(source, bytes):
                archive.writestr(info, source, compresslevel=spec.compresslevel)
            else:
                info.file_size = source.stat().st_size
                archive.compresslevel = spec.compresslevel
                with source.open("rb") as src, archive.open(info, "w", force_zip64=True) as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
        for name, data, compression in tamper.extra_entries:
            archive.writestr(_entry(name, epoch, compression), data)
    return stored_meta


def build_firmware(spec: FirmwareSpec, tamper: Tamper | None = None) -> bytes:
    buffer = io.BytesIO()
    write_firmware(buffer, spec, tamper)
    return buffer.getvalue()


def _entry_offsets(data: bytes, name: str) -> tuple[int, int]:
    """(local header offset, central directory record offset) of entry `name`."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        local = archive.getinfo(name).header_offset
        position = archive.start_dir
    while data[position : position + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[position + 28 : position + 34])
        if data[position + 46 : position + 46 + name_len].decode() == name:
            return local, position
        position += 46 + name_len + extra_len + comment_len
    raise KeyError(name)


def set_compression_method(data: bytes, name: str, method: int) -> bytes:
    """The file with entry `name` claiming compression `method` in both its local
    header and the central directory (zipfile refuses to write unknown methods)."""
    local, central = _entry_offsets(data, name)
    out = bytearray(data)
    out[local + 8 : local + 10] = struct.pack("<H", method)
    out[central + 10 : central + 12] = struct.pack("<H", method)
    return bytes(out)


def corrupt_entry_data(data: bytes, name: str, garbage: bytes = b"\xff" * 16) -> bytes:
    """The file with the first bytes of entry `name`'s compressed data overwritten;
    for a deflated entry, 0xff opens a block of the reserved type (a zlib.error)."""
    local, _ = _entry_offsets(data, name)
    name_len, extra_len = struct.unpack("<HH", data[local + 26 : local + 30])
    start = local + 30 + name_len + extra_len
    out = bytearray(data)
    out[start : start + len(garbage)] = garbage
    return bytes(out)


def changed_copy(data: bytes, *, every: int, run: int = 64, seed: int = 7) -> bytes:
    """`data` with `run` random bytes overwritten every `every` bytes: a new
    build of the same image, for the delta tests and benchmark."""
    rng = random.Random(seed)
    out = bytearray(data)
    for at in range(every // 2, len(out), every):
        out[at : at + run] = rng.randbytes(min(run, len(out) - at))
    return bytes(out)


def delta_pair(
    key: KeyPair, *, size: int = 96 * 1024, seed: int = 1, product: str = "widget"
) -> tuple[FirmwareSpec, FirmwareSpec]:
    """Two signed, delta-capable firmware specs, 1.0.0 and 1.1.0: a random
    rootfs.img of `size` bytes changed in about 1 % of its bytes (delta-capable
    in the upgrade task), a tiny resource sent whole, and a bootloader only the
    `complete` task writes (left out of a delta)."""
    rootfs = random.Random(seed).randbytes(size)
    common: dict[str, object] = {
        "product": product,
        "key": key,
        "delta_sources": {"rootfs.img": (2048, 65536)},
        "complete_only": ("bootloader.img",),
    }
    source = FirmwareSpec(
        version="1.0.0",
        resources={"rootfs.img": rootfs, "version.txt": b"1.0.0\n", "bootloader.img": b"boot-a" * 1000},
        **common,  # type: ignore[arg-type]
    )
    target = FirmwareSpec(
        version="1.1.0",
        resources={
            "rootfs.img": changed_copy(rootfs, every=6400),
            "version.txt": b"1.1.0\n",
            "bootloader.img": b"boot-b" * 1000,
        },
        **common,  # type: ignore[arg-type]
    )
    return source, target
