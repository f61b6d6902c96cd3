"""What an audit reader may see of an event.

Some events name credentials. A shared-secret key row's subject is the key
itself (`product_secret.created`, `device_secret.created`,
`shared_secret.deactivated`, the admin's own events on those rows), and
`device.registered` and `shared_secret.deactivated` carry the key in their
details. A product key is half of a fleet's credential and what lets a caller
make the hub run its key derivation (devicelink/auth.py), so members below the
`manage` role see such values masked: the key's prefix and an ellipsis
("nhp_…"). Members with `manage` or `admin` see them whole, as they may in the
admin's key lists.

Some details are for a higher role still, per action: the text of a line typed
into a device's console (`console.input`) may be a password typed at a prompt
that does not echo, so only the organization's admins read it. An app declares
such keys with `restrict_details(action, keys, role)` in its AppConfig.ready;
lower roles see HIDDEN_DETAIL in their place.

The stored event never changes (the org's hash chain covers it, and the admin's
JSON export is whole): only what is displayed differs. A new sensitive value is
one more entry in SECRET_SUBJECT_TYPES or SECRET_DETAILS, or one more
`restrict_details` call. Every page that shows events reads them through
`visible` / `visible_events`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nerveshub.tenancy.models import ROLE_RANK, AuditEvent, Role

# Events whose subject (the row's str()) is a credential.
SECRET_SUBJECT_TYPES = frozenset({"productsharedsecret", "devicesharedsecret"})
# Detail keys that hold a credential, in any event.
SECRET_DETAILS = frozenset({"key"})
# The lowest role that sees them whole.
SEES_SECRETS = Role.MANAGE
HIDDEN_DETAIL = "(hidden from your role)"

# action -> (detail keys, the least role that reads them); see restrict_details.
_restricted: dict[str, tuple[frozenset[str], Role]] = {}


def restrict_details(action: str, keys: tuple[str, ...], role: str) -> None:
    _restricted[action] = (frozenset(keys), Role(role))


@dataclass(frozen=True)
class EventView:
    """An AuditEvent as one reader may see it (the fields the pages show)."""

    pk: int
    org_id: int | None
    created_at: datetime
    actor: str
    action: str
    subject_type: str
    subject_id: str
    subject: str
    details: dict[str, Any]


def mask(value: object) -> str:
    text = str(value)
    prefix, sep, _ = text.partition("_")
    return f"{prefix}_…" if sep and len(prefix) <= 4 else "…"


def _at_least(role: str | None, needed: Role) -> bool:
    return role is not None and ROLE_RANK[Role(role)] >= ROLE_RANK[needed]


def sees_secrets(role: str | None) -> bool:
    return _at_least(role, SEES_SECRETS)


def visible(event: AuditEvent, role: str | None) -> EventView:
    """The event as a reader with `role` in the event's organization sees it
    (None: no role, e.g. an operator's view of an event without org is decided
    by the caller)."""
    subject, details = event.subject, dict(event.details or {})
    if not sees_secrets(role):
        if event.subject_type in SECRET_SUBJECT_TYPES:
            subject = mask(subject)
        for name in SECRET_DETAILS & details.keys():
            details[name] = mask(details[name])
    restricted = _restricted.get(event.action)
    if restricted is not None and not _at_least(role, restricted[1]):
        details = {key: HIDDEN_DETAIL if key in restricted[0] else value for key, value in details.items()}
    return EventView(
        pk=event.pk,
        org_id=event.org_id,
        created_at=event.created_at,
        actor=event.actor,
        action=event.action,
        subject_type=event.subject_type,
        subject_id=event.subject_id,
        subject=subject,
        details=details,
    )


def visible_events(events: Iterable[AuditEvent], role: str | None) -> list[EventView]:
    return [visible(event, role) for event in events]
