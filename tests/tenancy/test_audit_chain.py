"""The audit log is a hash chain per organization: tampering is found and named,
exports verify without the hub, pruning leaves a verifiable rest."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import cast

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from nerveshub.tenancy import audit_chain
from nerveshub.tenancy.models import AuditChainHead, AuditEvent, Organization
from nerveshub.tenancy.services import audit
from tests.conftest import Tenant


def _org_events(org: Organization) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(org=org).order_by("id"))


def _write_events(org: Organization, count: int) -> list[AuditEvent]:
    return [audit("test", "thing.done", org, details={"n": n, "nested": {"b": 2, "a": [1, "x"]}}) for n in range(count)]


def _third_party_verify(lines: list[str], anchor: str) -> bool:
    """What an auditor does with an export: only hashlib and json."""
    prev = anchor
    for line in lines:
        record = json.loads(line)
        claimed = record.pop("hash")
        record.pop("id")
        if record["prev_hash"] != prev:
            return False
        canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if hashlib.sha256(canonical.encode()).hexdigest() != claimed:
            return False
        prev = claimed
    return True


def test_it_links_each_event_to_the_previous_one_of_its_org(tenant: Tenant) -> None:
    # given
    events = _write_events(tenant.org, 3)
    audit("test", "other.thing", tenant.product, org=Organization.objects.get(name="globex"))

    # when
    result = audit_chain.verify_chain(tenant.org)

    # then
    chain = _org_events(tenant.org)
    assert result.ok, result.problem
    assert result.checked == len(chain)
    assert chain[0].prev_hash == ""
    for before, after in itertools.pairwise(chain):
        assert after.prev_hash == before.hash
    assert chain[-1].pk == events[-1].pk
    assert AuditChainHead.objects.get(pk=tenant.org.pk).last_hash == events[-1].hash
    assert audit_chain.verify_chain(Organization.objects.get(name="globex")).ok


@pytest.mark.parametrize(
    "change",
    [
        {"details": {"n": 99}},
        {"action": "thing.undone"},
        {"created_at": timezone.now() - timedelta(days=3)},
        {"actor": "user:somebody-else"},
    ],
    ids=["details", "action", "time", "actor"],
)
def test_it_names_the_first_altered_event(tenant: Tenant, change: dict[str, object]) -> None:
    # given
    events = _write_events(tenant.org, 5)
    victim = events[2]

    # when
    AuditEvent.objects.filter(pk=victim.pk).update(**change)
    result = audit_chain.verify_chain(tenant.org)

    # then
    assert not result.ok
    assert result.first_bad_id == victim.pk
    assert f"event {victim.pk}" in result.problem


def test_it_names_the_event_after_a_removed_or_rehashed_one(tenant: Tenant) -> None:
    # given
    events = _write_events(tenant.org, 5)

    # when: a row is removed from the middle
    AuditEvent.objects.filter(pk=events[2].pk).delete()
    result = audit_chain.verify_chain(tenant.org)

    # then
    assert not result.ok
    assert result.first_bad_id == events[3].pk


def test_it_notices_events_removed_from_the_end(tenant: Tenant) -> None:
    # given
    events = _write_events(tenant.org, 3)

    # when
    AuditEvent.objects.filter(pk=events[-1].pk).delete()
    result = audit_chain.verify_chain(tenant.org)

    # then
    assert not result.ok
    assert "removed from the end" in result.problem


def test_it_leaves_the_chain_valid_when_the_auditing_transaction_rolls_back(tenant: Tenant) -> None:
    # given
    _write_events(tenant.org, 2)

    # when
    with pytest.raises(RuntimeError), transaction.atomic():
        audit("test", "doomed", tenant.org)
        raise RuntimeError("rolled back")
    audit("test", "after", tenant.org)

    # then
    assert not AuditEvent.objects.filter(action="doomed").exists()
    assert audit_chain.verify_chain(tenant.org).ok


def test_it_exports_lines_a_third_party_can_verify(tenant: Tenant) -> None:
    # given
    events = _write_events(tenant.org, 4)
    out = StringIO()

    # when
    exported = audit_chain.export_chain(tenant.org, out)

    # then
    lines = out.getvalue().splitlines()
    assert exported.count == len(lines) == len(_org_events(tenant.org))
    assert exported.last_hash == events[-1].hash
    assert _third_party_verify(lines, anchor="")
    tampered = [line.replace('"n":1', '"n":7') for line in lines]
    assert not _third_party_verify(tampered, anchor="")


def test_it_prunes_old_events_after_exporting_them_and_keeps_the_rest_verifiable(
    tenant: Tenant, tmp_path: Path
) -> None:
    # given
    old = _write_events(tenant.org, 3)
    cutoff = timezone.now()
    recent = _write_events(tenant.org, 2)
    before_count = AuditEvent.objects.filter(org=tenant.org, id__lte=old[-1].pk).count()
    export = tmp_path / "pruned.jsonl"

    # when
    with export.open("x") as out:
        pruned = audit_chain.prune_chain("test", tenant.org, cutoff, out)

    # then
    assert pruned.count == before_count
    assert pruned.checkpoint_hash == old[-1].hash
    assert not AuditEvent.objects.filter(org=tenant.org, id__lte=old[-1].pk).exists()
    lines = export.read_text().splitlines()
    assert len(lines) == before_count and _third_party_verify(lines, anchor="")
    remaining = _org_events(tenant.org)
    assert remaining[0].pk == recent[0].pk and remaining[0].prev_hash == old[-1].hash
    assert remaining[-1].action == "audit.pruned"
    result = audit_chain.verify_chain(tenant.org)
    assert result.ok, result.problem
    assert result.checked == len(remaining)


def test_it_refuses_to_prune_a_broken_chain(tenant: Tenant) -> None:
    # given
    events = _write_events(tenant.org, 3)
    AuditEvent.objects.filter(pk=events[0].pk).update(details={"n": "forged"})

    # when / then
    with pytest.raises(audit_chain.ChainBroken):
        audit_chain.prune_chain("test", tenant.org, timezone.now(), StringIO())
    assert AuditEvent.objects.filter(pk=events[0].pk).exists()


def test_the_command_verifies_exports_and_prunes(tenant: Tenant, tmp_path: Path) -> None:
    # given
    events = _write_events(tenant.org, 3)
    exported_before = _org_events(tenant.org)
    stdout = StringIO()

    # when
    call_command("audit_chain", "verify", stdout=stdout)
    call_command("audit_chain", "export", "--org", "acme", str(tmp_path / "all.jsonl"), stderr=StringIO())
    call_command(
        "audit_chain",
        "prune",
        "--org",
        "acme",
        "--before",
        (timezone.now() + timedelta(seconds=1)).isoformat(),
        "--export",
        str(tmp_path / "pruned.jsonl"),
        stdout=stdout,
    )

    # then
    assert f"org {tenant.org.pk}: {len(exported_before)} event(s), chain intact" in stdout.getvalue()
    exported = (tmp_path / "all.jsonl").read_text().splitlines()
    assert json.loads(exported[-1])["hash"] == events[-1].hash
    assert (tmp_path / "pruned.jsonl").read_text().splitlines() == exported
    call_command("audit_chain", "verify", "--org", "acme", stdout=StringIO())


def test_verifying_every_chain_skips_deleted_orgs(tenant: Tenant) -> None:
    # given
    gone = Organization.objects.create(name="gone")
    audit("test", "thing.done", gone)
    gone_id = gone.pk
    gone.delete()

    # when
    keys = audit_chain.chain_keys()

    # then
    assert AuditChainHead.objects.filter(pk=gone_id).exists()
    assert gone_id not in keys and tenant.org.pk in keys
    call_command("audit_chain", "verify", stdout=StringIO())


def test_the_command_fails_naming_the_first_bad_event(tenant: Tenant, tmp_path: Path) -> None:
    # given
    events = _write_events(tenant.org, 3)
    AuditEvent.objects.filter(pk=events[1].pk).update(action="forged")

    # when / then
    with pytest.raises(CommandError, match=f"first bad event: {events[1].pk}"):
        call_command("audit_chain", "verify", "--org", "acme", stdout=StringIO())
    with pytest.raises(CommandError, match="broken chain"):
        call_command(
            "audit_chain", "prune", "--org", "acme", "--before", "2999-01-01", "--export", str(tmp_path / "p.jsonl")
        )


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_keep_the_chain_valid() -> None:
    # given
    org = Organization.objects.create(name="busy")
    threads_count, per_thread = 6, 15
    start = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                with transaction.atomic():
                    audit("test", "concurrent", org, details={"thread": n, "i": i})
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    # when
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    # then
    assert not errors
    result = audit_chain.verify_chain(org)
    assert result.ok, result.problem
    assert result.checked == threads_count * per_thread
    assert AuditChainHead.objects.get(pk=org.pk).appended == threads_count * per_thread
    # The time is taken under the chain's lock: id order is time order.
    times = list(AuditEvent.objects.filter(org=org).order_by("id").values_list("created_at", flat=True))
    assert times == sorted(times)


_text = st.text(max_size=30)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)


@given(
    action=_text,
    actor=_text,
    subject=_text,
    subject_id=_text,
    subject_type=_text,
    details=st.dictionaries(_text, _json, max_size=4),
    org_id=st.none() | st.integers(min_value=1, max_value=2**62),
    prev_hash=st.sampled_from(["", "0" * 64, hashlib.sha256(b"x").hexdigest()]),
    micros=st.integers(min_value=0, max_value=10**15),
)
def test_the_split_canonical_text_is_the_canonical_text(
    action: str,
    actor: str,
    subject: str,
    subject_id: str,
    subject_type: str,
    details: dict[str, object],
    org_id: int | None,
    prev_hash: str,
    micros: int,
) -> None:
    # given: what PostgreSQL splices (the time and the previous hash) into the
    # pieces the hub sends it
    row = {
        "org_id": org_id,
        "actor": actor,
        "action": action,
        "subject_type": subject_type,
        "subject_id": subject_id,
        "subject": subject,
        "details": audit_chain.normalise_details(details),
        "created_at": datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros),
    }
    # when
    text0, text1, text2 = audit_chain.canonical_text_around(row)
    created_at = cast(datetime, row["created_at"])
    spliced = text0 + created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ") + text1 + prev_hash + text2
    # then
    expected = json.dumps(
        audit_chain.canonical_fields(row, prev_hash), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert spliced == expected


def test_events_with_any_text_verify(tenant: Tenant) -> None:
    # given: text that JSON escapes, non-ASCII and astral characters
    details = {"note": 'quote " backslash \\ newline \n tab \t', "name": "Grüße 🚀", "nested": {"z": [1.5, None]}}
    # when
    event = audit("opérateur ✓", "device.description_changed", tenant.org, details=details)
    # then
    stored = AuditEvent.objects.get(pk=event.pk)
    assert (stored.hash, stored.prev_hash, stored.created_at) == (event.hash, event.prev_hash, event.created_at)
    assert audit_chain.verify_chain(tenant.org).ok
