"""The audit log as a hash chain per organization.

Each AuditEvent stores `prev_hash` (the hash of the org's previous event, or the
checkpoint left by a prune, or "" for the first) and `hash`, the SHA-256 of the
canonical JSON of its own fields with `prev_hash` among them (`canonical_fields`).
Editing a row's action, details, time or actor, deleting a row or inserting one
changes a hash that a later row or the chain head points at, so `verify_chain`
finds it and names the first event that no longer fits.

Appends to one chain are serialised by the chain's head row (AuditChainHead):
`append` locks it first, which holds the row lock (PostgreSQL) or the database
write lock (SQLite) until the auditing transaction ends. The event's time is
taken under that lock, so within a chain id order, chain order and time order
agree; that is what lets a prune remove "everything before a date" as a prefix.
The price: two transactions auditing for the same org run their audit one after
the other, so services audit at the end of their transaction, after the row
locks they need, and the append itself is one statement on PostgreSQL (the
lock is then held for that statement and the commit; a fleet's devices all
audit into their org's one chain).

Canonical form (what a third party recomputes from an export line): the JSON
object of the keys `org`, `actor`, `action`, `subject_type`, `subject_id`,
`subject`, `details`, `created_at` (UTC, `YYYY-MM-DDTHH:MM:SS.ffffffZ`) and
`prev_hash`, serialised with sorted keys, `","` and `":"` separators and UTF-8
without escaping; `hash` is the lowercase hex SHA-256 of those bytes.

Imports: this module sits below `tenancy.services` (whose `audit` appends
here). `prune_chain` is the exception that audits itself, as the chain's
newest event, through `services.audit` so the hooks (webhooks) see it like any
other event: it imports `audit` when it runs. Splitting the prune out would
only move that import, not remove it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from nerveshub.tenancy.models import AuditChainHead, AuditEvent, Organization

# Events are read in batches of this many rows: a chain of millions of events
# is verified or exported in constant memory.
_BATCH = 2000

_FIELDS = ("id", "org_id", "actor", "action", "subject_type", "subject_id", "subject", "details", "created_at")


def chain_key(org: Organization | int | None) -> int:
    """The head row's key: the org id, 0 for events that belong to no org."""
    if isinstance(org, Organization):
        return int(org.pk)
    return int(org or 0)


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalise_details(details: dict[str, Any] | None) -> dict[str, Any]:
    """Details as the JSON column gives them back (string keys, lists for
    tuples), so the hash computed before the insert matches the row read later."""
    normal: dict[str, Any] = json.loads(json.dumps(details or {}))
    return normal


def canonical_fields(row: dict[str, Any], prev_hash: str) -> dict[str, Any]:
    """The hashed fields of an event given as a dict with AuditEvent's column names."""
    return {
        "org": row["org_id"],
        "actor": row["actor"],
        "action": row["action"],
        "subject_type": row["subject_type"],
        "subject_id": row["subject_id"],
        "subject": row["subject"],
        "details": row["details"],
        "created_at": _timestamp(row["created_at"]),
        "prev_hash": prev_hash,
    }


def _dump(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(canonical: dict[str, Any]) -> str:
    return hashlib.sha256(_dump(canonical).encode()).hexdigest()


def canonical_text_around(row: dict[str, Any]) -> tuple[str, str, str]:
    """The canonical text of an event whose time and prev_hash are not known
    yet, as the three pieces around those two values: piece 0, the time
    (`_timestamp`), piece 1, prev_hash, piece 2 is the whole text. Keys sort as
    action, actor, created_at, details, org, prev_hash, subject, subject_id,
    subject_type, so each piece is a run of whole keys; neither value needs
    JSON escaping (digits and letters)."""
    fields = canonical_fields({**row, "created_at": datetime.min.replace(tzinfo=UTC)}, "")
    before = _dump({k: fields[k] for k in ("action", "actor")})
    middle = _dump({k: fields[k] for k in ("details", "org")})
    after = _dump({k: fields[k] for k in ("subject", "subject_id", "subject_type")})
    return before[:-1] + ',"created_at":"', '",' + middle[1:-1] + ',"prev_hash":"', '",' + after[1:]


def _row(event: AuditEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in _FIELDS}


def _lock_head(key: int, *, count: int = 0) -> AuditChainHead:
    """Take the chain's lock by writing its head row (created on first use)."""
    if not AuditChainHead.objects.filter(pk=key).update(appended=F("appended") + count):
        AuditChainHead.objects.bulk_create([AuditChainHead(key=key)], ignore_conflicts=True)
        AuditChainHead.objects.filter(pk=key).update(appended=F("appended") + count)
    return AuditChainHead.objects.get(pk=key)


_HEAD = AuditChainHead._meta.db_table
# One statement takes the lock and reads the previous hash (RETURNING: SQLite
# 3.35+, PostgreSQL). Writing first matters on SQLite: a transaction that reads
# and then writes fails at once when another writer committed in between,
# while one that writes first waits for the lock like on PostgreSQL.
_LOCK_SQL = f'UPDATE "{_HEAD}" SET "appended" = "appended" + 1 WHERE "key" = %s RETURNING "last_hash"'  # noqa: S608
_MOVE_SQL = f'UPDATE "{_HEAD}" SET "last_hash" = %s, "last_event_id" = %s WHERE "key" = %s'  # noqa: S608


_EVENTS = AuditEvent._meta.db_table
# PostgreSQL: lock the head, take the time, insert the event hashed over the
# head's last hash and move the head, in one statement, so the chain is locked
# for one round trip (and the commit) instead of four. `stamped` is a separate
# CTE so that the time is read once, after the row lock is granted (a volatile
# CTE is evaluated once, when its rows are first pulled). The hash is the
# SHA-256 of the canonical text (`canonical_text_around`) with the time and the
# previous hash spliced in; `digest` recomputes the same bytes.
_APPEND_SQL = f"""
WITH head AS (
    SELECT "last_hash" FROM "{_HEAD}" WHERE "key" = %(key)s FOR UPDATE
), stamped AS (
    SELECT "last_hash", clock_timestamp() AS "at" FROM head
), event AS (
    INSERT INTO "{_EVENTS}" (
        "org_id", "actor_user_id", "actor", "action", "subject_type", "subject_id", "subject",
        "details", "created_at", "prev_hash", "hash"
    )
    SELECT
        %(org_id)s::bigint, %(actor_user_id)s::bigint, %(actor)s, %(action)s,
        %(subject_type)s, %(subject_id)s, %(subject)s, %(details)s::jsonb, "at", "last_hash",
        encode(sha256(convert_to(
            %(text0)s || to_char("at" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
            || %(text1)s || "last_hash" || %(text2)s, 'UTF8')), 'hex')
    FROM stamped
    RETURNING "id", "created_at", "prev_hash", "hash"
)
UPDATE "{_HEAD}" SET "appended" = "appended" + 1, "last_hash" = event."hash", "last_event_id" = event."id"
FROM event WHERE "{_HEAD}"."key" = %(key)s
RETURNING event."id", event."created_at", event."prev_hash", event."hash"
"""  # noqa: S608


def _append_postgresql(event: AuditEvent, key: int) -> bool:
    """The one-statement append; False when the chain has no head row yet."""
    row = _row(event)
    text0, text1, text2 = canonical_text_around(row)
    params = {
        **{name: row[name] for name in ("org_id", "actor", "action", "subject_type", "subject_id", "subject")},
        "key": key,
        "actor_user_id": event.actor_user_id,
        "details": _dump(event.details),
        "text0": text0,
        "text1": text1,
        "text2": text2,
    }
    with connection.cursor() as cursor:
        cursor.execute(_APPEND_SQL, params)
        result = cursor.fetchone()
    if result is None:
        return False
    event.pk, event.created_at, event.prev_hash, event.hash = result
    event._state.adding = False
    event._state.db = connection.alias
    return True


def append(event: AuditEvent) -> AuditEvent:
    """Insert an unsaved event at the end of its org's chain. Must run inside a
    transaction: the chain stays locked until it ends."""
    key = chain_key(event.org_id)
    event.details = normalise_details(event.details)
    if connection.vendor == "postgresql":
        if not _append_postgresql(event, key):
            AuditChainHead.objects.bulk_create([AuditChainHead(key=key)], ignore_conflicts=True)
            if not _append_postgresql(event, key):
                raise RuntimeError(f"audit chain {key} has no head row")
        return event
    with connection.cursor() as cursor:
        cursor.execute(_LOCK_SQL, [key])
        row = cursor.fetchone()
        if row is None:
            AuditChainHead.objects.bulk_create([AuditChainHead(key=key)], ignore_conflicts=True)
            cursor.execute(_LOCK_SQL, [key])
            row = cursor.fetchone()
        event.created_at = timezone.now()
        event.prev_hash = str(row[0])
        event.hash = digest(canonical_fields(_row(event), event.prev_hash))
        event.save(force_insert=True)
        cursor.execute(_MOVE_SQL, [event.hash, event.pk, key])
    return event


def _events(key: int) -> Any:
    scope = Q(org__isnull=True) if key == 0 else Q(org_id=key)
    return AuditEvent.objects.filter(scope).order_by("id")


def _iter_rows(key: int, *, before: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Rows in chain order, read in keyset batches (no long-lived cursor). With
    `before`: the prefix of the chain up to the first event at or after it, so
    what is exported is always a contiguous start of the chain, even where an
    event written before the chain existed carries an earlier time."""
    last_id = 0
    while True:
        rows = list(_events(key).filter(id__gt=last_id).values(*_FIELDS, "prev_hash", "hash")[:_BATCH])
        if not rows:
            return
        for row in rows:
            if before is not None and row["created_at"] >= before:
                return
            yield row
        last_id = rows[-1]["id"]


# --- Verification -----------------------------------------------------------------


@dataclass(frozen=True)
class ChainVerification:
    org_id: int | None
    ok: bool
    checked: int
    first_bad_id: int | None = None  # the first event that does not fit, when there is one
    problem: str = ""
    last_hash: str = ""

    def describe(self) -> str:
        name = f"org {self.org_id}" if self.org_id else "events without an org"
        if self.ok:
            return f"{name}: {self.checked} event(s), chain intact"
        return f"{name}: chain broken after {self.checked} good event(s): {self.problem}"


def verify_chain(org: Organization | int | None) -> ChainVerification:
    """Recompute the org's chain from its first remaining event to its head."""
    key = chain_key(org)
    org_id = key or None
    head = AuditChainHead.objects.filter(pk=key).first()
    expected_prev = head.checkpoint_hash if head else ""
    checked = 0
    last_id: int | None = head.checkpoint_event_id if head else None
    for row in _iter_rows(key):
        if row["prev_hash"] != expected_prev:
            return ChainVerification(
                org_id,
                ok=False,
                checked=checked,
                first_bad_id=row["id"],
                problem=(
                    f"event {row['id']} does not follow the event before it "
                    "(an event was removed, inserted or re-hashed)"
                ),
            )
        if digest(canonical_fields(row, row["prev_hash"])) != row["hash"]:
            return ChainVerification(
                org_id,
                ok=False,
                checked=checked,
                first_bad_id=row["id"],
                problem=f"event {row['id']} ({row['action']}) was altered: its contents do not match its hash",
            )
        expected_prev = row["hash"]
        last_id = row["id"]
        checked += 1
    if head is not None and (head.last_hash != expected_prev or head.last_event_id != last_id):
        return ChainVerification(
            org_id,
            ok=False,
            checked=checked,
            problem=(
                f"the chain ends at event {last_id} but its head records event {head.last_event_id} "
                "(events were removed from the end)"
            ),
        )
    return ChainVerification(org_id, ok=True, checked=checked, last_hash=expected_prev)


def chain_keys() -> list[int]:
    """Every chain that has events or a head: org ids, and 0 for events without
    an org. A deleted org's events went with it, so its head is left out."""
    keys = set(AuditChainHead.objects.values_list("key", flat=True))
    keys.update(k or 0 for k in AuditEvent.objects.values_list("org_id", flat=True).distinct())
    existing = set(Organization.objects.filter(pk__in=keys).values_list("pk", flat=True))
    return sorted(k for k in keys if k == 0 or k in existing)


# --- Export and prune ---------------------------------------------------------------


class Writer(Protocol):
    def write(self, text: str, /) -> Any: ...
    def flush(self) -> Any: ...


def export_line(row: dict[str, Any]) -> str:
    """One JSON line: the canonical fields, plus `id` and `hash`."""
    record = {"id": row["id"], **canonical_fields(row, row["prev_hash"]), "hash": row["hash"]}
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class ChainExport:
    count: int
    first_id: int | None
    last_id: int | None
    last_hash: str


def export_chain(org: Organization | int | None, out: Writer, *, before: datetime | None = None) -> ChainExport:
    """Write the org's events (those before `before`, if given) as JSON lines in
    chain order. The first line's prev_hash anchors the export: "" for a chain's
    start, or the checkpoint a prune left."""
    count, first_id, last_id, last_hash = 0, None, None, ""
    for row in _iter_rows(chain_key(org), before=before):
        out.write(export_line(row) + "\n")
        count += 1
        first_id = first_id or row["id"]
        last_id, last_hash = row["id"], row["hash"]
    return ChainExport(count, first_id, last_id, last_hash)


class ChainBroken(Exception):
    """The chain does not verify; pruning it would destroy the evidence."""


@dataclass(frozen=True)
class ChainPrune:
    count: int
    checkpoint_hash: str
    checkpoint_event_id: int | None


def prune_chain(actor: Any, org: Organization, before: datetime, out: Writer) -> ChainPrune:
    """Export, then delete, the org's events older than `before`, and record the
    last deleted event's hash as the chain's checkpoint so the rest still
    verifies. Refuses a chain that does not verify. The prune is itself audited,
    as the newest event of the chain."""
    # Imported when called: services.audit appends to this chain (this module
    # is below it), and only the prune audits itself through it. See the module
    # docstring.
    from nerveshub.tenancy.services import audit

    key = chain_key(org)
    with transaction.atomic():
        _lock_head(key)
        result = verify_chain(key)
        if not result.ok:
            raise ChainBroken(result.describe())
        # The prefix of the chain older than `before`: time order and chain
        # order agree within a chain (see the module docstring).
        exported = export_chain(key, out, before=before)
        if not exported.count:
            return ChainPrune(0, "", None)
        out.flush()
        _events(key).filter(id__lte=exported.last_id).delete()
        AuditChainHead.objects.filter(pk=key).update(
            checkpoint_hash=exported.last_hash,
            checkpoint_event_id=exported.last_id,
            checkpoint_at=timezone.now(),
            pruned=F("pruned") + exported.count,
        )
        audit(
            actor,
            "audit.pruned",
            org,
            details={"before": _timestamp(before), "events": exported.count, "checkpoint": exported.last_hash},
        )
    return ChainPrune(exported.count, exported.last_hash, exported.last_id)
