"""python manage.py audit_chain verify [--org ORG]
python manage.py audit_chain export --org ORG [--before DATE] FILE
python manage.py audit_chain prune --org ORG --before DATE --export FILE

verify exits with an error naming the first bad event when a chain is broken.
export writes JSON lines (FILE "-" is standard output); prune exports the events
before DATE to FILE and only then deletes them, leaving a checkpoint so the rest
of the chain still verifies. DATE is ISO 8601: 2026-01-31 (midnight UTC) or a
date and time (UTC unless it names an offset).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, date, datetime, time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from nerveshub.tenancy import audit_chain
from nerveshub.tenancy.models import Organization


def _parse_date(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"not an ISO 8601 date or date and time: {value!r}") from None
    if len(value) <= 10:
        moment = datetime.combine(date.fromisoformat(value), time(), tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _org(name: str) -> Organization:
    org = Organization.objects.filter(name=name).first()
    if org is None:
        raise CommandError(f"no organization named {name!r}")
    return org


class Command(BaseCommand):
    help = "Verify, export or prune the hash-chained audit log."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="operation", required=True)
        verify = sub.add_parser("verify", help="Recompute the chains and name the first bad event.")
        verify.add_argument("--org", help="Organization name (default: every chain)")
        export = sub.add_parser("export", help="Write an org's events with their hashes as JSON lines.")
        export.add_argument("--org", required=True, help="Organization name")
        export.add_argument("--before", type=_parse_date, help="Only events before this date")
        export.add_argument("file", help="Output file, or - for standard output")
        prune = sub.add_parser("prune", help="Export, then delete, an org's events before a date.")
        prune.add_argument("--org", required=True, help="Organization name")
        prune.add_argument("--before", required=True, type=_parse_date, help="Delete events before this date")
        prune.add_argument("--export", required=True, dest="file", help="Where the deleted events are written first")

    def handle(self, *args: Any, **options: Any) -> None:
        operation = options["operation"]
        if operation == "verify":
            self._verify(options.get("org"))
        elif operation == "export":
            org = _org(options["org"])
            with self._open(options["file"], "x") as out:
                result = audit_chain.export_chain(org, out, before=options.get("before"))
            self.stderr.write(f"exported {result.count} event(s) of {org.name}, last hash {result.last_hash or '-'}")
        else:
            org = _org(options["org"])
            if options["file"] == "-":
                raise CommandError("prune needs a file to export to, not standard output")
            with self._open(options["file"], "x") as out:
                try:
                    pruned = audit_chain.prune_chain("command:audit_chain", org, options["before"], out)
                except audit_chain.ChainBroken as exc:
                    raise CommandError(f"refusing to prune a broken chain: {exc}") from None
            self.stdout.write(
                f"pruned {pruned.count} event(s) of {org.name}; checkpoint {pruned.checkpoint_hash or '-'}"
            )

    def _open(self, path: str, mode: str) -> AbstractContextManager[audit_chain.Writer]:
        if path == "-":
            return nullcontext(_Stdout(self))
        try:
            # "x": an export never overwrites an earlier one.
            return open(path, mode, encoding="utf-8")
        except FileExistsError:
            raise CommandError(f"{path} exists; choose a new file") from None

    def _verify(self, org_name: str | None) -> None:
        keys = [_org(org_name).pk] if org_name else audit_chain.chain_keys()
        broken = []
        for key in keys:
            result = audit_chain.verify_chain(key)
            self.stdout.write(result.describe())
            if not result.ok:
                broken.append(result)
        if broken:
            first = broken[0]
            raise CommandError(
                f"{len(broken)} broken chain(s); first bad event: {first.first_bad_id or '-'} ({first.problem})"
            )


class _Stdout:
    """The command's standard output as a plain writer (no added newlines)."""

    def __init__(self, command: BaseCommand) -> None:
        self._command = command

    def write(self, text: str, /) -> int:
        self._command.stdout.write(text, ending="")
        return len(text)

    def flush(self) -> None:
        self._command.stdout.flush()
