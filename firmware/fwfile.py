"""Reading a fwup `.fw` archive without fwup (docs/fwup-format.md).

Pure functions over a seekable binary file: no database, no storage. Every
problem raises InvalidFirmware with a sentence meant for the person who uploaded
the file, whatever zipfile, zlib or the meta.conf parser trip over (`_reading`
turns their exceptions into that sentence): a crafted file is a rejection, never
a crash. Everything is read by streaming in CHUNK-sized pieces, so memory use
does not depend on the file size.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO

from firmware import metaconf

CHUNK = 1024 * 1024
PART_SIZE = 1024 * 1024  # partials_checksums are over 1 MiB parts (docs/device-protocol.md §6.1)
SIGNATURE_NAME = "meta.conf.ed25519"
META_NAME = "meta.conf"
META_MAX_SIZE = 1024 * 1024  # real ones are a few KB; fwup itself caps them far lower
# fwup's namespace UUID for meta-uuid (docs/fwup-format.md §4).
FWUP_UUID_NAMESPACE = bytes.fromhex("2053dffbd51e4310b93b956da89f9f34")
# SemVer 2.0.0, the grammar from semver.org.
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
# A resource length is a decimal or 0x number of at most this many characters;
# fwup writes plain decimals, and a longer one is an attempt at a huge integer.
LENGTH_MAX_CHARS = 20
LENGTH_MAX = 2**63 - 1
# Metadata that ends up in CharField(max_length=100) columns (firmware.models).
SHORT_FIELD_MAX = 100
# A fwup file holds meta.conf, its signature and one entry per resource: tens.
MAX_ENTRIES = 10_000
MAX_DIRECTORY_SIZE = 4 * 1024 * 1024
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory (APPNOTE 4.3.16)
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # APPNOTE 4.3.15
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # APPNOTE 4.3.14, without the extensible data
# What zipfile and zlib raise on a crafted archive: a broken header or stream
# (BadZipFile, zlib.error, EOFError, struct.error), an unsupported compression
# method or flag (NotImplementedError), a name that is not UTF-8 (a ValueError),
# an offset or size past what a seek accepts (OverflowError, OSError).
_ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    struct.error,
    NotImplementedError,
    ValueError,
    OverflowError,
    OSError,
    RuntimeError,
)


class InvalidFirmware(Exception):
    """A permanent problem with the file itself; `reason` is shown to the uploader."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """Guards against decompression bombs: the total inflated size of all entries,
    and the inflate ratio of any entry larger than RATIO_FLOOR once inflated."""

    max_inflated: int
    max_ratio: int

    RATIO_FLOOR = 1024 * 1024


@dataclass(frozen=True)
class Resource:
    name: str
    entry: str  # name of the archive entry that holds it
    length: int
    blake2b_256: str | None
    sha256: str | None


@dataclass
class Metadata:
    uuid: str
    product: str
    version: str
    platform: str
    architecture: str
    author: str = ""
    description: str = ""
    vcs_identifier: str = ""
    misc: str = ""
    resources: list[Resource] = field(default_factory=list)
    delta: DeltaSupport = field(default_factory=lambda: DeltaSupport((), "", frozenset()))
    # The oldest fwup that applies the file ("" when meta.conf names none).
    require_fwup_version: str = ""


# fwup applies a patch against bytes on the device's disk from these versions on
# (docs/firmware.md, "Delta updates"): raw offsets, then FAT files.
RAW_DELTA_FWUP = "1.6.0"
FAT_DELTA_FWUP = "1.10.0"
# fwup counts delta-source offsets and counts in 512-byte blocks.
BLOCK_SIZE = 512


@dataclass(frozen=True)
class DeltaSupport:
    """What meta.conf says about delta updates: the resources every upgrade task
    patches from a source on the device, the oldest fwup that can apply them
    ("" when none), and every resource an upgrade task writes."""

    resources: tuple[str, ...]
    fwup_version: str
    upgrade_resources: frozenset[str]


@dataclass(frozen=True)
class Checksums:
    size: int
    sha256: str  # lower-case hex
    partials: list[str]


def compute_uuid(meta_conf: bytes) -> str:
    """fwup's meta-uuid: BLAKE2b-256(namespace || meta.conf), first 16 bytes, version nibble 5."""
    digest = bytearray(hashlib.blake2b(FWUP_UUID_NAMESPACE + meta_conf, digest_size=32).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    h = digest.hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def file_checksums(stream: IO[bytes]) -> Checksums:
    """SHA-256 of the whole file and of each 1 MiB part, in one sequential pass."""
    whole = hashlib.sha256()
    partials: list[str] = []
    size = 0
    while True:
        # CHUNK == PART_SIZE, so each full read is exactly one part; a short read
        # only happens at the end of the file (or on a pipe, handled by filling).
        chunk = stream.read(PART_SIZE)
        while chunk and len(chunk) < PART_SIZE:
            more = stream.read(PART_SIZE - len(chunk))
            if not more:
                break
            chunk += more
        if not chunk:
            break
        whole.update(chunk)
        partials.append(hashlib.sha256(chunk).hexdigest())
        size += len(chunk)
    return Checksums(size=size, sha256=whole.hexdigest(), partials=partials)


def _shown(text: str | None) -> str:
    """A value from the file as quoted in a reason, cut short."""
    return repr(text) if text is None or len(text) <= 60 else repr(text[:60]) + "..."


def _brief(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """Turn whatever the archive code raises about the file's bytes into a rejection."""
    try:
        yield
    except _ARCHIVE_ERRORS as exc:
        raise InvalidFirmware(f"{what} cannot be read from the archive ({_brief(exc)}).") from None


def _check_name(name: str) -> None:
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise InvalidFirmware(f"The archive contains an entry with an absolute path ({_shown(name)}).")
    parts = re.split(r"[/\\]", name)
    if ".." in parts:
        raise InvalidFirmware(f"The archive contains an entry whose path leaves the archive ({_shown(name)}).")
    if "\x00" in name:
        raise InvalidFirmware("The archive contains an entry name with a NUL byte.")


def _check_directory_size(stream: IO[bytes]) -> None:
    """Refuse a central directory too large to hold, before zipfile reads it.

    zipfile reads the whole central directory into memory and builds one object
    per record (about 500 bytes each); a 200 MB upload made only of records would
    cost gigabytes and minutes. The end-of-central-directory record (and its
    ZIP64 form) declares the size, read here the way zipfile finds it: the last
    signature in the final 64 KiB. A record that cannot be found or decoded is
    left for zipfile to refuse."""
    stream.seek(0, 2)
    size = stream.tell()
    tail_length = min(size, _EOCD.size + 0xFFFF)
    stream.seek(size - tail_length)
    tail = stream.read(tail_length)
    stream.seek(0)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        return
    _, _, _, _, entries, directory_size, _, _ = _EOCD.unpack_from(tail, at)
    locator = at - _ZIP64_LOCATOR.size
    if locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
        record = locator - _ZIP64_EOCD.size
        if record >= 0 and tail[record : record + 4] == b"PK\x06\x06":
            _, _, _, _, _, _, _, entries, directory_size, _ = _ZIP64_EOCD.unpack_from(tail, record)
    if entries > MAX_ENTRIES or directory_size > MAX_DIRECTORY_SIZE:
        raise InvalidFirmware(
            f"The archive declares {entries:,} entries in a {directory_size:,}-byte directory; a fwup file "
            f"has a few (limits {MAX_ENTRIES:,} and {MAX_DIRECTORY_SIZE:,} bytes)."
        )


def open_archive(stream: IO[bytes], limits: Limits) -> zipfile.ZipFile:
    """Open the ZIP and check its structure before anything inside is trusted."""
    stream.seek(0)
    head = stream.read(4)
    stream.seek(0)
    if head != b"PK\x03\x04":
        raise InvalidFirmware("This is not a fwup firmware file: it is not a ZIP archive.")
    _check_directory_size(stream)
    try:
        archive = zipfile.ZipFile(stream)
    except _ARCHIVE_ERRORS as exc:
        raise InvalidFirmware(f"The ZIP archive is damaged or truncated ({_brief(exc)}).") from None
    infos = archive.infolist()
    seen: set[str] = set()
    total = 0
    for info in infos:
        # zipfile keeps the raw name in orig_filename; it has normalised filename.
        _check_name(info.orig_filename)
        if info.filename in seen:
            raise InvalidFirmware(f"The archive contains {_shown(info.filename)} more than once.")
        seen.add(info.filename)
        if info.flag_bits & 0x1:
            raise InvalidFirmware(f"The archive entry {_shown(info.filename)} is encrypted.")
        total += info.file_size
        if total > limits.max_inflated:
            raise InvalidFirmware(
                f"The archive would inflate to more than {limits.max_inflated:,} bytes; refusing it "
                "as a possible decompression bomb."
            )
        if info.file_size > Limits.RATIO_FLOOR and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise InvalidFirmware(
                f"The archive entry {_shown(info.filename)} inflates {info.file_size // max(info.compress_size, 1):,} "
                f"times (limit {limits.max_ratio}); refusing it as a possible decompression bomb."
            )
    return archive


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        raise InvalidFirmware(f"{info.filename} is too large ({info.file_size:,} bytes).")
    with _reading(info.filename), archive.open(info) as entry:
        data = entry.read(limit + 1)
    if len(data) > limit:
        raise InvalidFirmware(f"{info.filename} is too large.")
    return data


def read_meta(archive: zipfile.ZipFile) -> tuple[bytes, bytes | None]:
    """meta.conf bytes and the signature (None when unsigned), in fwup's entry order."""
    infos = archive.infolist()
    if not infos:
        raise InvalidFirmware("The archive is empty.")
    signature: bytes | None = None
    index = 0
    if infos[0].filename == SIGNATURE_NAME:
        signature = _read_entry(archive, infos[0], 64)
        if len(signature) != 64:
            raise InvalidFirmware("meta.conf.ed25519 must be a 64-byte Ed25519 signature.")
        index = 1
    if len(infos) <= index or infos[index].filename != META_NAME:
        if any(info.filename == META_NAME for info in infos):
            raise InvalidFirmware("meta.conf is not where fwup expects it (first, or right after the signature).")
        raise InvalidFirmware("The archive has no meta.conf: it was not made by fwup.")
    return _read_entry(archive, infos[index], META_MAX_SIZE), signature


def _required(block: metaconf.Block, key: str) -> str:
    value = block.string(key)
    if not value:
        raise InvalidFirmware(f"meta.conf has no {key}; NervesHub requires it.")
    return value


def _length(section: metaconf.Section) -> int:
    raw = section.body.options.get("length")
    if raw is None:
        raise InvalidFirmware(f"file-resource {_shown(section.title)} in meta.conf has no length.")
    # A resource concatenated from several files lists one length per file.
    values = raw if isinstance(raw, list) else [raw]
    if any(len(v.strip()) > LENGTH_MAX_CHARS for v in values):
        raise InvalidFirmware(f"file-resource {_shown(section.title)} has a length that is too large.")
    try:
        lengths = [int(v, 0) for v in values]
    except ValueError:
        raise InvalidFirmware(f"file-resource {_shown(section.title)} has a length that is not a number.") from None
    if any(n < 0 for n in lengths):
        raise InvalidFirmware(f"file-resource {_shown(section.title)} has a negative length.")
    if sum(lengths) > LENGTH_MAX:
        raise InvalidFirmware(f"file-resource {_shown(section.title)} has a length that is too large.")
    return sum(lengths)


def _hash(section: metaconf.Section, key: str) -> str | None:
    value = section.body.string(key)
    if value is None:
        return None
    if not HEX64.match(value):
        raise InvalidFirmware(f"file-resource {_shown(section.title)} has a malformed {key}.")
    return value.lower()


def _check_text(block: metaconf.Block, key: str, max_length: int | None = None) -> None:
    value = block.string(key)
    if value is None:
        return
    # PostgreSQL text cannot hold NUL; refusing it here keeps the update a
    # rejection instead of a database error.
    if "\x00" in value:
        raise InvalidFirmware(f"meta.conf's {key} contains a NUL character.")
    if max_length is not None and len(value) > max_length:
        raise InvalidFirmware(f"meta.conf's {key} is longer than {max_length} characters.")


def parse_metadata(meta_conf: bytes) -> Metadata:
    """Read the metadata NervesHub keeps. Only call it on a meta.conf whose
    signature has been verified: the parser is bounded, but unsigned input has no
    business reaching it."""
    try:
        block = metaconf.parse_bytes(meta_conf)
    except metaconf.MetaConfError as exc:
        raise InvalidFirmware(f"meta.conf cannot be parsed: {exc}.") from None
    for key in ("meta-product", "meta-version", "meta-platform", "meta-architecture"):
        _check_text(block, key, SHORT_FIELD_MAX)
    for key in ("meta-author", "meta-description", "meta-vcs-identifier", "meta-misc"):
        _check_text(block, key)
    version = _required(block, "meta-version")
    if not SEMVER.match(version):
        raise InvalidFirmware(f"meta-version {_shown(version)} is not a SemVer version such as 1.2.3.")
    resources: list[Resource] = []
    names: set[str] = set()
    for section in block.sections_of("file-resource"):
        if not section.title:
            raise InvalidFirmware("A file-resource in meta.conf has no name.")
        if section.title in names:
            raise InvalidFirmware(f"meta.conf declares file-resource {_shown(section.title)} twice.")
        names.add(section.title)
        blake = _hash(section, "blake2b-256")
        sha = _hash(section, "sha256")
        if blake is None and sha is None:
            raise InvalidFirmware(f"file-resource {_shown(section.title)} has neither blake2b-256 nor sha256.")
        # An absolute resource name is stored at that path without the slash.
        entry = section.title[1:] if section.title.startswith("/") else f"data/{section.title}"
        resources.append(Resource(section.title, entry, _length(section), blake, sha))
    return Metadata(
        uuid=compute_uuid(meta_conf),
        product=_required(block, "meta-product"),
        version=version,
        platform=_required(block, "meta-platform"),
        architecture=_required(block, "meta-architecture"),
        author=block.string("meta-author") or "",
        description=block.string("meta-description") or "",
        vcs_identifier=block.string("meta-vcs-identifier") or "",
        misc=block.string("meta-misc") or "",
        resources=resources,
        delta=delta_support(block, names),
        require_fwup_version=_require_fwup_version(block),
    )


def _require_fwup_version(block: metaconf.Block) -> str:
    """meta.conf's require-fwup-version, when it is a version (fwup writes
    one; anything else is kept as unknown rather than refusing the file)."""
    value = (block.string("require-fwup-version") or "").strip()
    return value if SEMVER.match(value) and len(value) <= 20 else ""


# fwup reads delta-source-raw-count into a C int.
COUNT_MAX = 2**31 - 1


def _c_number(text: str) -> int:
    """A number as C's strtol/strtoul with base 0 read it (libconfuse and fwup
    do): 0x hex, a leading 0 octal, else decimal; here the whole text must be one."""
    body = text[1:] if text[:1] in "+-" else text
    sign = -1 if text[:1] == "-" else 1
    if body[:2].lower() == "0x":
        return sign * int(body[2:], 16)
    if len(body) > 1 and body[0] == "0":
        return sign * int(body[1:], 8)
    if not body.isdigit():
        raise ValueError(text)
    return sign * int(body)


def _block_number(task: str, resource: str, key: str, value: str, maximum: int) -> int:
    """A delta-source offset or count, in 512-byte blocks. One that is not a
    number, is negative where fwup reads it unsigned, or is past what a disk (or
    fwup's int) holds is refused: the hub does not guess what fwup would make of it."""
    where = f"task {_shown(task)}, on-resource {_shown(resource)}"
    text = value.strip()
    if len(text) > LENGTH_MAX_CHARS:
        raise InvalidFirmware(f"{where}: {key} is too large.")
    try:
        number = _c_number(text)
    except ValueError:
        raise InvalidFirmware(f"{where}: {key} {_shown(value)} is not a number.") from None
    if number > maximum or (key.endswith("offset") and number < 0):
        raise InvalidFirmware(f"{where}: {key} {number} is outside what a disk can hold.")
    return number


def _delta_version(task: str, resource: str, body: metaconf.Block) -> str:
    """The fwup version a patch of this on-resource needs, "" when fwup would
    not take a patch for it: fwup uses a raw source when it has an offset and a
    count above 0, else a FAT source when it has an offset and a path."""
    raw_offset = body.string("delta-source-raw-offset")
    raw_count = body.string("delta-source-raw-count")
    fat_offset = body.string("delta-source-fat-offset")
    fat_path = body.string("delta-source-fat-path")
    offset_max = LENGTH_MAX // BLOCK_SIZE
    count = 0
    if raw_count is not None:
        count = _block_number(task, resource, "delta-source-raw-count", raw_count, COUNT_MAX)
    if raw_offset is not None:
        offset = _block_number(task, resource, "delta-source-raw-offset", raw_offset, offset_max)
        if count > 0:
            if offset + count > offset_max:
                raise InvalidFirmware(
                    f"task {_shown(task)}, on-resource {_shown(resource)}: the delta source ends past a disk's size."
                )
            return RAW_DELTA_FWUP
    if fat_offset is not None:
        _block_number(task, resource, "delta-source-fat-offset", fat_offset, offset_max)
        if (fat_path or "").strip():
            return FAT_DELTA_FWUP
    return ""


def delta_support(block: metaconf.Block, resource_names: set[str]) -> DeltaSupport:
    """Read the delta-source keys of the upgrade tasks (docs/firmware.md, "Delta
    updates"). A resource is delta-capable only when every upgrade task that
    writes it names a source on the device (a patch in the file is a patch for
    every task that reads it), and when its length is one number (fwup patches
    no sparse resource)."""
    sparse = {
        s.title or ""
        for s in block.sections_of("file-resource")
        if isinstance(s.body.options.get("length"), list) and len(s.body.options["length"]) > 1
    }
    written: set[str] = set()
    capable: dict[str, str] = {}
    refused: set[str] = set(sparse)
    for task in block.sections_of("task"):
        title = task.title or ""
        for on_resource in task.body.sections_of("on-resource"):
            name = on_resource.title or ""
            # Every task's values are checked: fwup reads them in whichever task runs.
            version = _delta_version(title, name, on_resource.body)
            if not title.startswith("upgrade") or name not in resource_names:
                continue
            written.add(name)
            if not version:
                refused.add(name)
            elif _version_key(version) > _version_key(capable.get(name, "0.0.0")):
                capable[name] = version
    names = tuple(sorted(n for n in capable if n not in refused))
    needed = max((capable[n] for n in names), key=_version_key, default="")
    return DeltaSupport(names, needed, frozenset(written))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def verify_signature(meta_conf: bytes, signature: bytes, keys: Iterable[tuple[int, bytes]]) -> int | None:
    """The id of the first key whose Ed25519 signature over meta.conf checks out."""
    # PyNaCl loads libsodium: imported by the validation that needs it, not by
    # every process that imports the file reader.
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    for key_id, raw in keys:
        try:
            VerifyKey(raw).verify(meta_conf, signature)
        except BadSignatureError:
            continue
        return key_id
    return None


def check_resources(archive: zipfile.ZipFile, resources: list[Resource]) -> None:
    """Stream every declared resource and compare its length and hash with meta.conf."""
    for resource in resources:
        name = _shown(resource.name)
        try:
            info = archive.getinfo(resource.entry)
        except KeyError:
            raise InvalidFirmware(f"Resource {name} is listed in meta.conf but missing.") from None
        if info.file_size != resource.length:
            raise InvalidFirmware(
                f"Resource {name} is {info.file_size:,} bytes but meta.conf says {resource.length:,}."
            )
        hasher = hashlib.blake2b(digest_size=32) if resource.blake2b_256 else hashlib.sha256()
        seen = 0
        with _reading(f"Resource {name}"), archive.open(info) as entry:
            # Never read past the signed length, whatever the headers claim.
            while seen <= resource.length:
                chunk = entry.read(CHUNK)
                if not chunk:
                    break
                seen += len(chunk)
                hasher.update(chunk)
        expected = resource.blake2b_256 or resource.sha256
        if seen != resource.length or hasher.hexdigest() != expected:
            raise InvalidFirmware(
                f"Resource {name} does not match the hash in the signed meta.conf: the file was altered after signing."
            )


def inspect(stream: IO[bytes], keys: list[tuple[int, bytes]], limits: Limits) -> tuple[Checksums, Metadata, int]:
    """Everything the file alone can tell: its checksums, its metadata and the id
    of the key that signed it. Raises InvalidFirmware, and nothing else for
    anything the file's bytes can cause."""
    checksums = file_checksums(stream)
    archive = open_archive(stream, limits)
    meta_conf, signature = read_meta(archive)
    # The signature is checked over meta.conf's raw bytes before anything reads
    # them: an unsigned or forged file never reaches the parser, and is refused
    # without hashing hundreds of megabytes of resources.
    if signature is None:
        raise InvalidFirmware("The firmware is not signed; sign it with `fwup -S` and a registered key.")
    if not keys:
        raise InvalidFirmware("The organization has no signing keys; register the fwup public key first.")
    key_id = verify_signature(meta_conf, signature, keys)
    if key_id is None:
        raise InvalidFirmware(
            "The signature does not match any of the organization's signing keys "
            "(signed with an unknown key, or meta.conf was changed after signing)."
        )
    metadata = parse_metadata(meta_conf)
    check_resources(archive, metadata.resources)
    return checksums, metadata, key_id
