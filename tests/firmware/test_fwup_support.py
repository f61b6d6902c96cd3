"""The uuid algorithm and the test-side fwup writer agree with docs/fwup-format.md."""

from __future__ import annotations

import base64
import hashlib
import io
import uuid
import zipfile

from firmware import fwfile
from tests.support.fwup import FirmwareSpec, build_firmware, generate_keypair, keypair_from_private, quote

# The example meta.conf of docs/fwup-format.md §6, byte for byte (one newline at the end).
EXAMPLE_META_CONF = b"""meta-product="hub-demo"
meta-version=1.3.0
meta-platform=rpi4
meta-architecture=arm
meta-misc="key1=value1,key2=\\"two words\\""
require-fwup-version=1.0.0
file-resource "rootfs.img" {
length=10240
blake2b-256=d36edf3c7bd6f70fc1cb0c33c3274efd04fd30ae4e2ba4fd52cbb9db914b380c
}
task "upgrade" {
on-resource "rootfs.img" {
funlist={2,raw_write,524288}
}
}
"""
EXAMPLE_UUID = "40ed3c69-414f-5575-cf8c-f0f46aacd162"


def independent_uuid(meta_conf: bytes) -> str:
    """Written straight from docs/fwup-format.md §4, with different tools than the hub's code:
    BLAKE2b-256 over namespace-uuid bytes + meta.conf, first 16 bytes, version nibble
    set to 5 through integer arithmetic, variant bits left alone."""
    namespace = uuid.UUID("2053dffb-d51e-4310-b93b-956da89f9f34").bytes
    digest = hashlib.blake2b(digest_size=32)
    digest.update(namespace)
    digest.update(meta_conf)
    value = int.from_bytes(digest.digest()[:16], "big")
    value = (value & ~(0xF << 76)) | (0x5 << 76)  # the high nibble of byte 6
    return str(uuid.UUID(int=value))


def test_it_computes_the_known_uuid_of_the_spec_example() -> None:
    # when
    computed = fwfile.compute_uuid(EXAMPLE_META_CONF)
    # then
    assert computed == EXAMPLE_UUID
    assert independent_uuid(EXAMPLE_META_CONF) == EXAMPLE_UUID


def test_it_agrees_with_the_independent_uuid_on_generated_files() -> None:
    for version in ("1.0.0", "2.0.0-rc.1", "3.1.4+build.5"):
        meta = FirmwareSpec(version=version).meta_conf()
        assert fwfile.compute_uuid(meta) == independent_uuid(meta)


def test_it_reads_the_spec_example_metadata() -> None:
    # when
    metadata = fwfile.parse_metadata(EXAMPLE_META_CONF)
    # then
    assert (metadata.product, metadata.version, metadata.platform, metadata.architecture) == (
        "hub-demo",
        "1.3.0",
        "rpi4",
        "arm",
    )
    assert metadata.misc == 'key1=value1,key2="two words"'
    assert [(r.name, r.entry, r.length) for r in metadata.resources] == [("rootfs.img", "data/rootfs.img", 10240)]


def test_it_writes_meta_conf_the_way_fwup_does() -> None:
    # when
    meta = FirmwareSpec(product="hub-demo", version="1.3.0", misc='key1=value1,key2="two words"').meta_conf()
    # then
    text = meta.decode()
    assert 'meta-product="hub-demo"\n' in text
    assert "meta-version=1.3.0\n" in text
    assert 'meta-misc="key1=value1,key2=\\"two words\\""\n' in text
    assert quote("2.0.0-rc.1") == '"2.0.0-rc.1"'


def test_it_lays_out_the_archive_like_fwup() -> None:
    # given
    pair = generate_keypair()
    # when
    data = build_firmware(FirmwareSpec(key=pair, resources={"rootfs.img": b"a", "payload.bin": b"b"}))
    # then
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        assert [i.filename for i in infos] == ["meta.conf.ed25519", "meta.conf", "data/rootfs.img", "data/payload.bin"]
        assert infos[0].compress_type == zipfile.ZIP_STORED and infos[0].file_size == 64
        assert infos[1].compress_type == zipfile.ZIP_DEFLATED
        assert infos[2].date_time == (1980, 1, 1, 0, 0, 0)
        signature, meta = archive.read(infos[0]), archive.read(infos[1])
    assert fwfile.verify_signature(meta, signature, [(7, base64.b64decode(pair.public))]) == 7


def test_it_generates_fwup_style_keys() -> None:
    # when
    pair = generate_keypair(padded=False)
    # then
    assert len(base64.b64decode(pair.public + "=")) == 32
    assert len(base64.b64decode(pair.private + "==")) == 64
    assert keypair_from_private(pair.private).public.rstrip("=") == pair.public
