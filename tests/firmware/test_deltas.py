"""Delta files: what an upload says about delta capability, building a delta
from two real uploads, the layout fwup needs, every patch decoded with the
xdelta3 program against its source, and the outcomes a build can end in.

The files are real signed fwup-format files from tests/support/fwup.py with
small resources, so the whole module runs in a few seconds."""

from __future__ import annotations

import hashlib
import io
import struct
import subprocess
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks

from firmware import delta, deltas, fwfile, metaconf, services
from firmware.models import DeltaFirmware, DeltaStatus, Firmware, FirmwareStatus
from firmware.tasks import sweep_pending_deltas
from tests.conftest import Tenant
from tests.firmware.conftest import Uploader, stored_files
from tests.support.fwup import FirmwareSpec, KeyPair, build_firmware, changed_copy, delta_pair

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(delta.xdelta3_path() is None, reason="xdelta3 is not installed (apt-get install xdelta3)"),
]

LIMITS = fwfile.Limits(max_inflated=10**9, max_ratio=100)


def _pair(upload: Uploader, keypair: KeyPair, **options: Any) -> tuple[Firmware, Firmware]:
    source_spec, target_spec = delta_pair(keypair, **options)
    source, target = upload(source_spec), upload(target_spec)
    assert source.status == target.status == FirmwareStatus.VALID, (source.rejected_reason, target.rejected_reason)
    return source, target


def _built(source: Firmware, target: Firmware, captured: DjangoCaptureOnCommitCallbacks) -> DeltaFirmware:
    with captured(execute=False) as callbacks:
        created = deltas.request_deltas(target, [source.uuid or ""])
    assert len(created) == 1 and len(callbacks) == 1  # the build is dispatched on commit
    row = deltas.generate_delta(created[0])
    assert row is not None
    return row


def _stored(root: Path, name: str) -> bytes:
    return (root / name).read_bytes()


def _local_header(data: bytes, offset: int) -> tuple[int, int, str]:
    """(flags, uncompressed size, name) of the local header at `offset`, read
    here with struct, not with the hub's reader (APPNOTE 4.3.7)."""
    magic, _, flags, _, _, _, _, _, size, name_len, _ = struct.unpack_from("<4s5H3L2H", data, offset)
    assert magic == b"PK\x03\x04"
    return flags, size, data[offset + 30 : offset + 30 + name_len].decode()


def test_an_upload_records_which_resources_can_be_patched(upload: Uploader, keypair: KeyPair) -> None:
    # given / when
    source, _ = _pair(upload, keypair)
    plain = upload(FirmwareSpec(version="3.0.0", key=keypair))
    # then
    assert source.delta_resources == ["rootfs.img"]
    assert source.delta_fwup_version == "1.6.0"
    assert plain.delta_resources == [] and plain.delta_fwup_version == ""


def test_a_fat_delta_source_needs_a_newer_fwup() -> None:
    text = (
        'file-resource "zImage" { length=1 blake2b-256=' + "0" * 64 + " }\n"
        'task "upgrade.a" { on-resource "zImage" { delta-source-fat-offset=0x800 delta-source-fat-path="zImage" } }\n'
        'task "upgrade.b" { on-resource "zImage" { delta-source-fat-offset=2048 delta-source-fat-path="zImage" } }\n'
    )
    support = fwfile.delta_support(metaconf.parse(text), {"zImage"})
    assert support.resources == ("zImage",) and support.fwup_version == "1.10.0"


@pytest.mark.parametrize(
    ("options", "capable"),
    [
        ("delta-source-raw-offset=0x800 delta-source-raw-count=010", True),  # C's hex and octal
        ("delta-source-raw-offset=2048 delta-source-raw-count=0", False),  # fwup needs a count above 0
        ("delta-source-raw-offset=2048", False),
        ("delta-source-raw-count=8", False),
        ('delta-source-fat-offset=63 delta-source-fat-path=""', False),
    ],
)
def test_a_resource_is_delta_capable_only_where_fwup_takes_a_patch(options: str, capable: bool) -> None:
    text = f'task "upgrade" {{ on-resource "rootfs.img" {{ {options} raw_write(0) }} }}\n'
    support = fwfile.delta_support(metaconf.parse(text), {"rootfs.img"})
    assert (support.resources == ("rootfs.img",)) is capable


def test_a_sparse_resource_is_not_patched() -> None:
    text = (
        'file-resource "rootfs.img" { length={4096, 8192, 4096} blake2b-256=' + "0" * 64 + " }\n"
        'task "upgrade" { on-resource "rootfs.img" { delta-source-raw-offset=0 delta-source-raw-count=8 } }\n'
    )
    assert fwfile.delta_support(metaconf.parse(text), {"rootfs.img"}).resources == ()


def test_a_resource_one_upgrade_task_writes_whole_is_not_patched() -> None:
    text = (
        'task "upgrade.a" { on-resource "rootfs.img" { delta-source-raw-offset=0 delta-source-raw-count=8 } }\n'
        'task "upgrade.b" { on-resource "rootfs.img" { raw_write(0) } }\n'
    )
    support = fwfile.delta_support(metaconf.parse(text), {"rootfs.img"})
    assert support.resources == () and support.upgrade_resources == {"rootfs.img"}


@pytest.mark.parametrize(
    ("offset", "count", "reason"),
    [
        (99999999999999999999999, 1, "too large"),
        (2**60, 1, "outside what a disk can hold"),
        (-1, 8, "outside what a disk can hold"),
        ("lots", 8, "is not a number"),
        ("12abc", 8, "is not a number"),
        (8, 2**40, "outside what a disk can hold"),
        (2**54 - 4, 8, "past a disk's size"),
    ],
)
def test_absurd_delta_sources_are_rejected_with_a_reason(
    upload: Uploader, keypair: KeyPair, offset: int | str, count: int | str, reason: str, firmware_root: Path
) -> None:
    # given: a validly signed file whose delta source no disk can hold
    spec, _ = delta_pair(keypair)
    spec.delta_sources = {"rootfs.img": (offset, count)}
    # when
    firmware = upload(spec)
    # then
    assert firmware.status == FirmwareStatus.REJECTED
    assert reason in firmware.rejected_reason
    assert stored_files(firmware_root) == []


def test_a_delta_has_the_layout_fwup_needs_and_every_patch_decodes_to_the_target(
    upload: Uploader,
    keypair: KeyPair,
    firmware_root: Path,
    tmp_path: Path,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    # given
    source, target = _pair(upload, keypair)
    # when
    row = _built(source, target, django_capture_on_commit_callbacks)
    # then: ready, smaller, with its own checksums
    assert row.status == DeltaStatus.READY, row.reason
    data = _stored(firmware_root, row.storage_name)
    target_data = _stored(firmware_root, target.storage_name)
    source_data = _stored(firmware_root, source.storage_name)
    assert row.size == len(data) < target.size
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    assert row.partial_sha256 == [hashlib.sha256(data[i : i + 2**20]).hexdigest() for i in range(0, len(data), 2**20)]
    assert row.patched_resources == ["rootfs.img"] and row.fwup_version == "1.6.0"
    # the signature and meta.conf first, byte-identical; the complete-only resource dropped
    got, want, base = (zipfile.ZipFile(io.BytesIO(d)) for d in (data, target_data, source_data))
    assert [i.filename for i in got.infolist()] == [
        "meta.conf.ed25519",
        "meta.conf",
        "data/rootfs.img",
        "data/version.txt",
    ]
    assert got.read("meta.conf.ed25519") == want.read("meta.conf.ed25519")
    assert got.read("meta.conf") == want.read("meta.conf")
    resources = {r.entry: r for r in fwfile.parse_metadata(want.read("meta.conf")).resources}
    for info in got.infolist():
        flags, size, name = _local_header(data, info.header_offset)
        # sizes in the local header, no data descriptor
        assert name == info.filename and not flags & 0x8 and size == info.file_size
        if info.filename not in resources:
            continue
        resource = resources[info.filename]
        if info.filename == "data/rootfs.img":
            # a patch: its local size differs from meta.conf's length; decode it
            # with the xdelta3 program against the source's resource
            assert size != resource.length and size < resource.length // 10
            (tmp_path / "source").write_bytes(base.read(info.filename))
            (tmp_path / "patch").write_bytes(got.read(info))
            subprocess.run(
                ["xdelta3", "-d", "-f", "-s", tmp_path / "source", tmp_path / "patch", tmp_path / "out"],
                check=True,
            )
            decoded = (tmp_path / "out").read_bytes()
        else:
            assert size == resource.length
            decoded = got.read(info)
        assert decoded == want.read(info.filename)
        assert hashlib.blake2b(decoded, digest_size=32).hexdigest() == resource.blake2b_256


def test_the_hubs_check_refuses_a_delta_whose_patch_decodes_wrong(keypair: KeyPair, tmp_path: Path) -> None:
    # given: a good delta, and a copy whose rootfs patch leads to other bytes
    source_spec, target_spec = delta_pair(keypair)
    source, target, good, bad = (tmp_path / n for n in ("source.fw", "target.fw", "good.fw", "bad.fw"))
    source.write_bytes(build_firmware(source_spec))
    target.write_bytes(build_firmware(target_spec))
    work = tmp_path / "work"
    work.mkdir()
    delta.build_delta(source, target, good, work, limits=LIMITS, timeout=60)
    rootfs = source_spec.resources["rootfs.img"]
    assert isinstance(rootfs, bytes)
    (tmp_path / "a").write_bytes(rootfs)
    (tmp_path / "b").write_bytes(changed_copy(rootfs, every=6400, seed=8))
    delta.encode(tmp_path / "a", tmp_path / "b", tmp_path / "wrong", timeout=60)
    with zipfile.ZipFile(good) as original, zipfile.ZipFile(bad, "w") as spoiled:
        for info in original.infolist():
            replaced = info.filename == "data/rootfs.img"
            spoiled.writestr(info, (tmp_path / "wrong").read_bytes() if replaced else original.read(info))
    # when / then
    delta.verify_delta(source, target, good, work, limits=LIMITS, timeout=60)
    with pytest.raises(delta.DeltaFailed, match="does not decode to the target's bytes"):
        delta.verify_delta(source, target, bad, work, limits=LIMITS, timeout=60)


def test_a_delta_not_smaller_than_the_full_file_is_not_worth_it(
    upload: Uploader, keypair: KeyPair, firmware_root: Path, django_capture_on_commit_callbacks: Any
) -> None:
    # given: two unrelated rootfs images
    source_spec, _ = delta_pair(keypair, seed=1)
    _, target_spec = delta_pair(keypair, seed=2)
    source, target = upload(source_spec), upload(target_spec)
    # when
    row = _built(source, target, django_capture_on_commit_callbacks)
    # then
    assert row.status == DeltaStatus.NOT_WORTH_IT and row.reason
    assert row.storage_name == "" and len(stored_files(firmware_root)) == 2


def test_a_target_without_delta_capable_resources_gets_no_request(upload: Uploader, keypair: KeyPair) -> None:
    source, _ = _pair(upload, keypair)
    plain = upload(FirmwareSpec(version="3.0.0", key=keypair))
    assert deltas.request_deltas(plain, [source.uuid or ""]) == []
    assert deltas.request_deltas(source, ["not-a-known-uuid", ""]) == []


def test_a_missing_source_file_fails_with_a_reason(
    upload: Uploader, keypair: KeyPair, firmware_root: Path, django_capture_on_commit_callbacks: Any
) -> None:
    # given
    source, target = _pair(upload, keypair)
    (firmware_root / source.storage_name).unlink()
    # when
    row = _built(source, target, django_capture_on_commit_callbacks)
    # then
    assert row.status == DeltaStatus.FAILED and "missing" in row.reason


def test_a_store_that_is_away_is_retried_and_a_build_that_keeps_dying_ends_failed(
    upload: Uploader, keypair: KeyPair, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    # given: the store refuses the delta's bytes
    source, target = _pair(upload, keypair)

    def refuse(*args: object, **kwargs: object) -> str:
        raise OSError("disk full")

    monkeypatch.setattr("django.core.files.storage.FileSystemStorage.save", refuse)
    with django_capture_on_commit_callbacks(execute=False):
        (delta_id,) = deltas.request_deltas(target, [source.uuid or ""])
    # when / then: transient, the claim given back for the task's retry
    with pytest.raises(services.StorageUnavailable):
        deltas.generate_delta(delta_id)
    row = DeltaFirmware.objects.get(pk=delta_id)
    assert row.status == DeltaStatus.PENDING and row.claimed_at is None and row.attempts == 1
    # when: its claims keep lapsing (a worker killed mid-build each time)
    DeltaFirmware.objects.filter(pk=delta_id).update(attempts=deltas.MAX_ATTEMPTS)
    monkeypatch.undo()
    finished = deltas.generate_delta(delta_id)
    # then: given up with a reason, never a loop
    assert finished is not None and finished.status == DeltaStatus.FAILED and "Gave up" in finished.reason


def test_the_sweep_takes_up_lost_builds_and_leaves_claimed_ones(
    upload: Uploader, keypair: KeyPair, django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    # given: a build never dispatched, and one another worker is running
    settings.CELERY_TASK_ALWAYS_EAGER = True
    source, target = _pair(upload, keypair)
    with django_capture_on_commit_callbacks(execute=False):
        (lost,) = deltas.request_deltas(target, [source.uuid or ""])
    old = timezone.now() - timedelta(minutes=5)
    DeltaFirmware.objects.filter(pk=lost).update(created_at=old)
    assert deltas.stale_pending_delta_ids() == [lost]
    DeltaFirmware.objects.filter(pk=lost).update(claimed_at=timezone.now())
    assert deltas.stale_pending_delta_ids() == []
    DeltaFirmware.objects.filter(pk=lost).update(claimed_at=old - timedelta(seconds=deltas.CLAIM_SECONDS))
    # when
    sweep_pending_deltas()
    # then
    assert DeltaFirmware.objects.get(pk=lost).status == DeltaStatus.READY


def test_without_xdelta3_the_hub_has_no_deltas(
    upload: Uploader,
    keypair: KeyPair,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:
    # given
    source, target = _pair(upload, keypair)
    pending = DeltaFirmware.objects.create(source=source, target=target)
    monkeypatch.setenv("PATH", str(tmp_path))
    # when / then
    assert not deltas.deltas_available()
    assert deltas.request_deltas(target, [source.uuid or ""]) == []
    row = deltas.generate_delta(pending.pk)
    assert row is not None and row.status == DeltaStatus.FAILED and "xdelta3 is not installed" in row.reason


def test_a_delta_is_deleted_with_its_firmware(
    tenant: Tenant,
    upload: Uploader,
    keypair: KeyPair,
    firmware_root: Path,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    # given
    source, target = _pair(upload, keypair)
    row = _built(source, target, django_capture_on_commit_callbacks)
    assert (firmware_root / row.storage_name).exists()
    # when
    with django_capture_on_commit_callbacks(execute=True):
        services.delete_firmware(tenant.admin, source)
    # then
    assert not DeltaFirmware.objects.filter(pk=row.pk).exists()
    assert not (firmware_root / row.storage_name).exists()
    assert [p.name for p in stored_files(firmware_root)] == [Path(target.storage_name).name]


@pytest.mark.parametrize(
    ("reported", "needed", "ok"),
    [
        ("1.16.0", "1.6.0", True),
        ("1.6.0", "1.6.0", True),
        ("1.5.9", "1.6.0", False),
        ("1.6.0-rc.1", "1.6.0", False),
        ("", "1.6.0", False),
        ("garbage", "1.6.0", False),
        ("9" * 400, "1.6.0", False),
        ("1.9.0", "1.10.0", False),
    ],
)
def test_the_fwup_version_comparison(reported: str, needed: str, ok: bool) -> None:
    assert deltas.fwup_at_least(reported, needed) is ok
