"""Business rules for signing keys and firmware: upload, validation, deletion,
download URLs and the device `update` payload.

Flow of an upload (docs/firmware.md):

1. upload_firmware streams the file into storages["firmware"] under a random
   name, enforcing FIRMWARE_MAX_SIZE while it copies, then creates the row as
   `pending` and dispatches firmware.tasks.validate_firmware_task on commit.
2. validate_firmware (called by that task, and only by it) reads the stored file:
   checksums, ZIP structure, the signature over meta.conf's raw bytes against the
   org's keys, then (signed files only) meta.conf itself, every resource's length
   and hash. It ends in `valid` or `rejected` by a compare-and-set from `pending`;
   a rejected file's bytes are deleted on commit, and only then. Whatever a
   crafted file makes the reading code raise is a rejection; only the storage or
   the database being unreachable is left for a retry (docs/firmware.md).

Imports: `firmware/tasks.py` calls this module and this module enqueues its
task on commit, the shape of a service and its Celery task; the task module
stays a thin wrapper, and the one import back is made when the dispatch runs.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, timedelta
from functools import partial
from typing import IO, Any, TypedDict

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.auth.models import User
from django.core.files import File
from django.core.files.storage import FileSystemStorage
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import ProtectedError, Q
from django.utils import timezone

from firmware import fwfile
from firmware.downloads import signed_path
from firmware.models import DeltaFirmware, Firmware, FirmwareKind, FirmwareStatus, SigningKey
from firmware.storage import firmware_storage
from nerveshub.lib.enqueue import enqueue
from nerveshub.tenancy.models import Organization, Product
from nerveshub.tenancy.services import Actor, audit

logger = logging.getLogger(__name__)


class UploadRefused(Exception):
    """The upload was refused before a row was created (nothing is stored)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StorageUnavailable(Exception):
    """Transient: the storage backend could not be reached. Tasks retry on this;
    an upload answers 503 with UPLOAD_STORE_FAILED and keeps nothing."""


UPLOAD_STORE_FAILED = "The firmware store did not take the file, so nothing was kept. Try the upload again later."


class FirmwareInUse(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SigningKeyInUse(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- Upload -----------------------------------------------------------------------


class _CappedReader:
    """A read-only file wrapper that refuses to yield more than `limit` bytes.

    Storage backends pull from it in chunks (FileSystemStorage via File.chunks,
    S3 via upload_fileobj), so the cap holds while streaming, whatever size the
    client claimed."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.limit + 1 - self.read_bytes
        data = self.stream.read(min(size, self.limit + 1 - self.read_bytes))
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise UploadRefused(_too_large_reason())
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        # Backends rewind before copying; only a rewind to the start is meaningful.
        if offset != 0 or whence != 0:
            raise OSError("only seek(0) is supported")
        if self.read_bytes:
            self.stream.seek(0)
            self.read_bytes = 0
        return 0

    def tell(self) -> int:
        return self.read_bytes

    def seekable(self) -> bool:
        # "No" makes boto3 read it sequentially, part by part, instead of
        # seeking around it; seek(0) above still serves the backends' rewind.
        return False

    def readable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return bool(getattr(self.stream, "closed", False))

    def close(self) -> None:
        # The caller owns the underlying upload and closes it.
        pass


def _too_large_reason() -> str:
    return f"The file is larger than the {settings.FIRMWARE_MAX_SIZE:,}-byte limit (FIRMWARE_MAX_SIZE)."


def _delete_stored(name: str) -> None:
    if not name:
        return
    try:
        firmware_storage().delete(name)
    except Exception:
        # Left-over bytes are garbage, not a correctness problem; log for the operator.
        logger.exception("could not delete stored firmware %s", name)


def upload_firmware(
    actor: Actor, product: Product, fileobj: IO[bytes], filename: str, *, kind: str = FirmwareKind.FIRMWARE
) -> Firmware:
    """Store an uploaded file (firmware, or an archive: same format, same checks)
    and queue its validation. Raises UploadRefused (the file's fault) or
    StorageUnavailable (the store's)."""
    declared = getattr(fileobj, "size", None)
    if isinstance(declared, int) and declared > settings.FIRMWARE_MAX_SIZE:
        raise UploadRefused(_too_large_reason())
    if getattr(fileobj, "seekable", lambda: False)():
        fileobj.seek(0)
    # The uuid is unknown until validation; a random name is never guessable and
    # never collides, so two uploads of one file do not race for a name.
    wanted = f"{product.org_id}/{secrets.token_hex(16)}.fw"
    storage = firmware_storage()
    reader = _CappedReader(fileobj, settings.FIRMWARE_MAX_SIZE)
    try:
        name = storage.save(wanted, File(reader, name=wanted))  # type: ignore[arg-type]
    except UploadRefused:
        _delete_stored(wanted)  # a local backend leaves the partial file behind
        raise
    except Exception as exc:
        # The request body is already on the hub's disk (Django parsed it before
        # the view), so what fails here is the store: S3 away or refusing, a
        # full disk. Not the uploader's fault, and worth a retry.
        logger.exception("firmware upload for product %s: the store refused the file", product.pk)
        _delete_stored(wanted)
        raise StorageUnavailable(UPLOAD_STORE_FAILED) from exc
    if reader.read_bytes == 0:
        _delete_stored(name)
        raise UploadRefused("The file is empty.")
    try:
        with transaction.atomic():
            firmware = Firmware.objects.create(
                org_id=product.org_id,
                product=product,
                kind=FirmwareKind(kind),
                storage_name=name,
                original_filename=filename[:300],
                size=reader.read_bytes,
                uploaded_by=actor if isinstance(actor, User) else None,
            )
            audit(
                actor,
                "firmware.uploaded",
                firmware,
                details={"filename": filename, "size": reader.read_bytes, "kind": firmware.kind},
            )
    except Exception:
        # The row was not created: its bytes are nobody's.
        _delete_stored(name)
        raise
    # Registered after the block above, so that nothing the dispatch raises can
    # reach the `except` that deletes the bytes of a committed row.
    transaction.on_commit(partial(_dispatch_validation, firmware.pk))
    return firmware


def _dispatch_validation(firmware_id: int) -> None:
    """Runs on commit. In embedded mode the task runs right here, inside the
    request that uploaded the file: whatever it raises is logged and the row,
    committed `pending` with its bytes, is left to the sweep, rather than failing
    a request whose upload has already been accepted."""
    # Imported when called: firmware.tasks imports this module (its tasks call
    # the validation service), the service-and-task cycle.
    from firmware.tasks import validate_firmware_task

    try:
        enqueue(validate_firmware_task, firmware_id)
    except Exception:
        logger.exception("firmware %s: validation did not run; the sweep will retry it", firmware_id)


def stale_pending_firmware_ids(older_than: timedelta) -> list[int]:
    """Uploads still pending validation well after they were stored: their
    task was never enqueued (the broker was away) or was lost with a worker."""
    cutoff = timezone.now() - older_than
    return list(
        Firmware.objects.filter(status=FirmwareStatus.PENDING, created_at__lt=cutoff).values_list("pk", flat=True)
    )


# --- Validation ---------------------------------------------------------------------


def _limits() -> fwfile.Limits:
    return fwfile.Limits(
        max_inflated=settings.FIRMWARE_MAX_INFLATED_SIZE, max_ratio=settings.FIRMWARE_MAX_INFLATE_RATIO
    )


def _is_missing(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")
    return False


@contextmanager
def _open_stored(name: str) -> Iterator[IO[bytes]]:
    try:
        stored = firmware_storage().open(name, "rb")
        # S3File downloads lazily on first read; make failures happen here.
        stored.seek(0)
    except Exception as exc:
        if _is_missing(exc):
            raise fwfile.InvalidFirmware("The stored file is missing.") from None
        raise StorageUnavailable(f"cannot open {name}: {exc}") from exc
    try:
        yield stored
    finally:
        stored.close()


# Failures that say nothing about the file: the task fails (or retries, for
# StorageUnavailable) and the row stays pending for the sweep.
_NOT_THE_FILES_FAULT = (StorageUnavailable, DatabaseError, SoftTimeLimitExceeded)


def _inspect(firmware: Firmware) -> tuple[fwfile.Checksums, fwfile.Metadata, int]:
    keys = [(k.pk, k.raw) for k in SigningKey.objects.filter(org_id=firmware.org_id).order_by("pk")]
    with _open_stored(firmware.storage_name) as stream:
        checksums, metadata, key_id = fwfile.inspect(stream, keys, _limits())
    product_name = firmware.product.name
    if metadata.product != product_name:
        raise fwfile.InvalidFirmware(
            f"The firmware is for product {metadata.product!r} but was uploaded to {product_name!r}."
        )
    return checksums, metadata, key_id


def validate_firmware(firmware_id: int) -> Firmware | None:
    """Validate a pending upload. A missing or already-decided row is a no-op, so
    re-running the task is safe. Raises only what is not the file's fault:
    StorageUnavailable (retried), a database error, the task's time limit."""
    firmware = Firmware.objects.select_related("product").filter(pk=firmware_id).first()
    if firmware is None or firmware.status != FirmwareStatus.PENDING:
        return firmware
    try:
        checksums, metadata, key_id = _inspect(firmware)
    except fwfile.InvalidFirmware as exc:
        reject_firmware(firmware, exc.reason)
        return firmware
    except _NOT_THE_FILES_FAULT:
        raise
    except Exception as exc:
        # fwfile turns every failure it knows of into InvalidFirmware; reaching
        # this is a gap there (logged to be closed), but still the file's doing:
        # a retry would fail the same way and leave the row pending for ever.
        logger.exception("firmware %s: unexpected error while validating; rejecting it", firmware.pk)
        reject_firmware(
            firmware,
            f"The file could not be read: it is malformed in a way the hub does not know ({type(exc).__name__}).",
        )
        return firmware
    duplicate = (
        Firmware.objects.filter(product_id=firmware.product_id, uuid=metadata.uuid).exclude(pk=firmware.pk).first()
    )
    if duplicate is not None:
        reject_firmware(
            firmware,
            f"This firmware (uuid {metadata.uuid}, version {metadata.version}) was already uploaded to "
            f"{firmware.product.name} on {duplicate.created_at:%Y-%m-%d %H:%M} UTC.",
        )
        return firmware
    fields: dict[str, Any] = {
        "status": FirmwareStatus.VALID,
        "uuid": metadata.uuid,
        "version": metadata.version,
        "platform": metadata.platform,
        "architecture": metadata.architecture,
        "author": metadata.author[:200],
        "description": metadata.description,
        "vcs_identifier": metadata.vcs_identifier[:200],
        "misc": metadata.misc,
        "size": checksums.size,
        "sha256": checksums.sha256,
        "partial_sha256": checksums.partials,
        "delta_resources": list(metadata.delta.resources),
        "delta_fwup_version": metadata.delta.fwup_version,
        "require_fwup_version": metadata.require_fwup_version,
        "signing_key_id": key_id,
        "validated_at": timezone.now(),
        "rejected_reason": "",
    }
    try:
        with transaction.atomic():
            changed = Firmware.objects.filter(pk=firmware.pk, status=FirmwareStatus.PENDING).update(**fields)
            if changed:
                firmware.refresh_from_db()
                audit("system", "firmware.validated", firmware, details={"uuid": metadata.uuid, "key": key_id})
    except IntegrityError:
        # Another upload of the same file won the (product, uuid) race.
        reject_firmware(firmware, f"This firmware (uuid {metadata.uuid}) was already uploaded to this product.")
    return firmware


def reject_firmware(firmware: Firmware, reason: str) -> bool:
    """pending -> rejected; the stored bytes are deleted once that is committed."""
    name = firmware.storage_name
    with transaction.atomic():
        changed = Firmware.objects.filter(pk=firmware.pk, status=FirmwareStatus.PENDING).update(
            status=FirmwareStatus.REJECTED, rejected_reason=reason, storage_name="", validated_at=timezone.now()
        )
        if changed:
            firmware.refresh_from_db()
            audit("system", "firmware.rejected", firmware, details={"reason": reason})
            transaction.on_commit(partial(_delete_stored, name))
    return bool(changed)


def revalidate_firmware(actor: Actor, firmware: Firmware) -> bool:
    """Queue validation again for a row still `pending` (its task was lost).

    A decided row is left alone. A valid file is never judged again: devices may
    be downloading it and deployments point at it, and a rejection deletes the
    bytes. A rejected row has no bytes left."""
    with transaction.atomic():
        pending = (
            Firmware.objects.select_for_update()
            .filter(pk=firmware.pk, status=FirmwareStatus.PENDING)
            .exclude(storage_name="")
            .exists()
        )
        if pending:
            audit(actor, "firmware.revalidation_requested", firmware)
            transaction.on_commit(partial(_dispatch_validation, firmware.pk))
    return pending


# --- Deletion -----------------------------------------------------------------------


def delete_firmware(actor: Actor, firmware: Firmware) -> None:
    """Delete the row and, after commit, its file. Raises FirmwareInUse."""
    names = list(firmware.deployments.values_list("name", flat=True)[:5])
    names += list(firmware.archive_deployments.values_list("name", flat=True)[:5])
    if names:
        raise FirmwareInUse(
            "This firmware is used by deployment(s) " + ", ".join(names) + "; point them at other firmware first."
        )
    name = firmware.storage_name
    try:
        with transaction.atomic():
            audit(actor, "firmware.deleted", firmware, details={"uuid": firmware.uuid, "version": firmware.version})
            # Its deltas (either side) go with it, rows by cascade, files on commit.
            deltas = list(
                DeltaFirmware.objects.filter(Q(source=firmware) | Q(target=firmware))
                .exclude(storage_name="")
                .values_list("storage_name", flat=True)
            )
            firmware.delete()
            for stored in [name, *deltas]:
                transaction.on_commit(partial(_delete_stored, stored))
    except ProtectedError:
        # A deployment that appeared since the check above, or devices' update
        # records, which keep the file as their history.
        raise FirmwareInUse(
            "This firmware is named by a deployment or by devices' update records; it is kept."
        ) from None


def delete_signing_key(actor: Actor, key: SigningKey) -> None:
    """Refuses (SigningKeyInUse) while any firmware records this key as its signer."""
    count = key.firmware.count()
    if count:
        raise SigningKeyInUse(
            f"The key {key.name!r} signed {count} firmware file(s); it is kept as evidence of who "
            "signed them. Delete that firmware first, or keep the key."
        )
    try:
        with transaction.atomic():
            audit(actor, "signing_key.deleted", key, details={"name": key.name})
            key.delete()
    except ProtectedError:
        raise SigningKeyInUse(f"The key {key.name!r} signed firmware in the meantime; it cannot be deleted.") from None


# --- Keys and device-facing data ----------------------------------------------------


def public_keys_for_org(org_id: int) -> list[str]:
    """Base64 Ed25519 keys, as the device `fwup_public_keys` message carries them."""
    return list(SigningKey.objects.filter(org_id=org_id).order_by("pk").values_list("key", flat=True))


def download_url(firmware: Firmware) -> str:
    """An expiring, signed URL a device can download the file from."""
    if firmware.status != FirmwareStatus.VALID or not firmware.storage_name:
        raise ValueError("only valid, stored firmware can be downloaded")
    storage = firmware_storage()
    if isinstance(storage, FileSystemStorage):
        return settings.PUBLIC_URL + signed_path(firmware.storage_name, firmware.uuid or "firmware")
    # S3 and other remote backends presign their own URLs.
    return str(storage.url(firmware.storage_name, expire=settings.FIRMWARE_URL_TTL))  # type: ignore[call-arg]


class FirmwareMeta(TypedDict):
    architecture: str
    author: str
    description: str
    misc: str
    platform: str
    product: str
    uuid: str
    vcs_identifier: str
    version: str


class UpdatePayload(TypedDict):
    update_available: bool
    firmware_url: str
    firmware_meta: FirmwareMeta
    size: int
    checksum: str
    partials_checksums: list[str]
    deployment_id: int | None


def update_payload(firmware: Firmware, deployment_id: int | None = None) -> UpdatePayload:
    """The `update` message payload (docs/device-protocol.md §6.1) for the full file."""
    return {
        "update_available": True,
        "firmware_url": download_url(firmware),
        "firmware_meta": {
            "architecture": firmware.architecture,
            "author": firmware.author,
            "description": firmware.description,
            "misc": firmware.misc,
            "platform": firmware.platform,
            "product": firmware.product.name,
            "uuid": firmware.uuid or "",
            "vcs_identifier": firmware.vcs_identifier,
            "version": firmware.version,
        },
        "size": firmware.size,
        # The reference server sends upper-case hex; the client accepts any case.
        "checksum": firmware.sha256.upper(),
        "partials_checksums": [p.upper() for p in firmware.partial_sha256],
        "deployment_id": deployment_id,
    }


def create_signing_key(actor: Actor, org: Organization, name: str, key: str) -> SigningKey:
    """Register an organization's ed25519 public key (the text of fwup-key.pub).
    Raises django's ValidationError for a malformed key or a duplicate."""
    row = SigningKey(org=org, name=name.strip(), key="".join(key.split()))
    if isinstance(actor, User):
        row.created_by = actor
    row.full_clean()
    with transaction.atomic():
        row.save()
        audit(actor, "signing_key.created", row, details={"name": row.name})
    return row


class ArchivePayload(TypedDict):
    url: str
    uuid: str
    version: str
    size: int
    description: str
    platform: str
    architecture: str
    uploaded_at: str


def archive_payload(archive: Firmware) -> ArchivePayload:
    """The `archive` message payload (docs/device-protocol.md §5.1)."""
    return {
        "url": download_url(archive),
        "uuid": archive.uuid or "",
        "version": archive.version,
        "size": archive.size,
        "description": archive.description,
        "platform": archive.platform,
        "architecture": archive.architecture,
        # ISO 8601 without a zone, as the reference sends it (UTC).
        "uploaded_at": archive.created_at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
    }
