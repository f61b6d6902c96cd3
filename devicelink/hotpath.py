"""A returning device's connect and join in one database statement (PostgreSQL).

Most connects are devices the hub knows, reconnecting with the firmware it has
stored (a fleet back after a restart or a network blip). For them the connect
is one prepared statement, and the join that follows none
(docs/rollout.md, "What a device's join and reports do to its update"):

* the connect (`connect_returning`) locks the device row, records the
  connection exactly as `devices.services.open_device_connection` does (last
  connection wins: it returns the socket it replaces), and in the same
  statement checks that the product key is still active, that no webhook
  endpoint of the organization listens for `device.online`, and reads what the
  join will compare: the stored join fields, whether an update is in flight,
  the device's deployment with its firmware's platform and architecture, and
  whether its product has an active deployment at all;
* the join (`join_needs_nothing`) compares what the device reports with that:
  when nothing changed, no update is in flight, the deployment still holds the
  device (or the product has none), and there is no archive, connecting code
  or signing key to send, the full join (devicelink.join.store_join) would
  read and write nothing either, so it is skipped. Only the orchestrator's
  wake-up of the device's deployment remains (a Redis mark, no statement).

What the join judges was read at connect, a few milliseconds earlier. An update
the orchestrator claims after the connect recorded this socket is pushed to it
and follows the join reply (devicelink.consumer). One claimed in the instant
the connect statement runs, for a device whose previous socket was still
recorded, went to that previous socket: the full join would re-send it at
once, this path leaves it to the orchestrator, which sends a push still
unacknowledged one backstop period later again (docs/rollout.md, "Rollout").

Anything else (a device seen for the first time, another product, deleted, a
deactivated key, webhook listeners, an update in flight, a report that changes
what is stored) takes the full path through the domain services, which stays
the definition of what a connect and a join do; this module only recognises
the case where they would change nothing beyond the connection itself.

The statement is executed through a server-binding cursor on the pooled
connection and prepared the first time it runs on that connection, so
PostgreSQL parses and plans it once per connection, and Django compiles
nothing. SQLite (embedded mode, one process, no network round trip) always
takes the full path.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from django.conf import settings
from django.db import connection

from deployments.models import INFLIGHT_STATUSES, Deployment, DeviceUpdate, GateCounter
from devicelink import fastdb
from devices.models import ConnectionStatus, Device, ProductSharedSecret
from devices.services import ConnectionInfo, JoinReport, join_fields
from firmware.models import Firmware
from nerveshub.tenancy.models import Product
from webhooks.models import EventType, WebhookEndpoint

# The join fields, in the order the statement returns them (after its fixed columns).
JOIN_COLUMNS = (
    "fwup_version",
    "device_api_version",
    "firmware_validation",
    "firmware_auto_revert_detected",
    "console_version",
    "firmware_uuid",
    "firmware_product",
    "firmware_version",
    "firmware_platform",
    "firmware_architecture",
    "firmware_author",
    "firmware_description",
    "firmware_vcs_identifier",
    "firmware_misc",
)


@dataclass(frozen=True, slots=True)
class TargetFirmware:
    platform: str
    architecture: str


@dataclass(frozen=True, slots=True)
class DeploymentRules:
    """The device's deployment as the connect read it (what membership reads)."""

    pk: int
    is_active: bool
    product_id: int
    conditions_version: str
    conditions_tags: list[str]
    firmware: TargetFirmware
    sends_on_join: bool  # an archive or connecting code: the full join sends it


@dataclass(frozen=True, slots=True)
class StoredDevice:
    """The device row as the connect read it, for the join to compare with."""

    product_id: int
    tags: list[str]
    stored: dict[str, object]  # JOIN_COLUMNS → value
    has_connecting_code: bool
    update_in_flight: bool
    deployment: DeploymentRules | None
    product_has_active_deployment: bool
    # The device has canary-versus-control counters (deployments.gate): its
    # reconnect is counted (devicelink.join.quiet_join).
    gate_counted: bool

    # MembershipFacts (deployments.rollout.membership_problems)
    @property
    def firmware_uuid(self) -> str:
        return str(self.stored["firmware_uuid"])

    @property
    def firmware_platform(self) -> str:
        return str(self.stored["firmware_platform"])

    @property
    def firmware_architecture(self) -> str:
        return str(self.stored["firmware_architecture"])

    @property
    def firmware_version(self) -> str:
        return str(self.stored["firmware_version"])


@dataclass(frozen=True, slots=True)
class Connected:
    device_id: int
    identifier: str
    info: ConnectionInfo
    known: StoredDevice | None  # None: the full path recorded the connection


def enabled() -> bool:
    return _vendor() == "postgresql" and settings.DEVICE_FAST_PATH


@cache
def _vendor() -> str:
    return str(settings.DATABASES["default"]["ENGINE"]).rsplit(".", 1)[-1]


@cache
def _connect_sql() -> str:
    device, dep, fw = Device._meta.db_table, Deployment._meta.db_table, Firmware._meta.db_table
    key, hook = ProductSharedSecret._meta.db_table, WebhookEndpoint._meta.db_table
    update, product = DeviceUpdate._meta.db_table, Product._meta.db_table
    gate = GateCounter._meta.db_table
    join_columns = ", ".join(f"d.{name}" for name in JOIN_COLUMNS)
    # FOR NO KEY UPDATE, as every device row lock (devices.services._each_locked).
    # Only table and column names from the models are formatted in; every value is a parameter.
    return f"""
WITH old AS (
    SELECT d.id, d.socket_channel, d.deployment_id, d.tags, d.connecting_code <> '' AS device_code,
           dep.is_active AS dep_active, dep.product_id AS dep_product, dep.conditions_version,
           dep.conditions_tags, (dep.archive_id IS NOT NULL OR dep.connecting_code <> '') AS dep_sends,
           fw.platform, fw.architecture, {join_columns}
    FROM {device} d
    LEFT JOIN {dep} dep ON dep.id = d.deployment_id
    LEFT JOIN {fw} fw ON fw.id = dep.firmware_id
    WHERE d.org_id = %(org)s AND d.identifier = %(identifier)s AND d.product_id = %(product)s
      AND d.deleted_at IS NULL
      AND EXISTS (SELECT 1 FROM {key} k WHERE k.id = %(key)s AND k.deactivated_at IS NULL)
      AND NOT EXISTS (
          SELECT 1 FROM {hook} w
          WHERE w.org_id = %(org)s AND w.is_active AND w.event_types @> %(online)s::jsonb
      )
    FOR NO KEY UPDATE OF d
)
UPDATE {device} AS d
SET socket_channel = %(channel)s, hub_lease_id = %(lease)s, connection_status = %(connected)s,
    connected_at = %(now)s, last_seen_at = %(now)s, first_seen_at = COALESCE(d.first_seen_at, %(now)s),
    console_available = false
FROM old
WHERE d.id = old.id
RETURNING old.*,
    (SELECT p.extensions FROM {product} p WHERE p.id = %(product)s),
    EXISTS (SELECT 1 FROM {update} u WHERE u.device_id = old.id AND u.status = ANY(%(inflight)s)),
    EXISTS (SELECT 1 FROM {dep} a WHERE a.product_id = %(product)s AND a.is_active),
    EXISTS (SELECT 1 FROM {gate} g WHERE g.device_id = old.id)
"""  # noqa: S608


def _execute(sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """One statement on this thread's pooled connection, prepared the first time
    it runs there (Django's own cursors bind on the client and prepare nothing).
    Through Django's cursor wrapper (its execute wrappers and error mapping),
    and in its query log when that is on (DEBUG, the tests' query counts)."""
    from django.db.backends.postgresql.base import ServerBindingCursor

    connection.ensure_connection()
    raw = connection.connection
    raw.prepare_threshold = 0  # only server-binding cursors (this one) prepare
    cursor: Any = ServerBindingCursor(raw)  # type: ignore[call-arg]  # psycopg's Cursor(connection)
    start = time.monotonic()
    with connection.make_cursor(cursor) as wrapped:
        wrapped.execute(sql, params)
        row: tuple[Any, ...] | None = wrapped.fetchone()
    if connection.queries_logged:
        connection.queries_log.append({"sql": sql, "time": f"{time.monotonic() - start:.3f}"})
    return row


def _connect_params(
    org_id: int, product_id: int, key_id: int, identifier: str, channel: str, lease_id: int | None, now: datetime
) -> dict[str, Any]:
    return {
        "org": org_id,
        "identifier": identifier,
        "product": product_id,
        "key": key_id,
        "online": f'["{EventType.DEVICE_ONLINE.value}"]',
        "channel": channel,
        "lease": lease_id,
        "connected": ConnectionStatus.CONNECTED.value,
        "now": now,
        "inflight": [status.value for status in INFLIGHT_STATUSES],
    }


def _json(value: Any) -> Any:
    # Through Django's connection a jsonb column reads as its text (Django
    # decodes JSON fields itself); through the fast pool (devicelink.fastdb) as
    # the value.
    return json.loads(value) if isinstance(value, str) else value


def _connected(row: tuple[Any, ...] | None, product_id: int, identifier: str, channel: str) -> Connected | None:
    if row is None:
        return None
    (device_id, previous, deployment_id, tags, device_code, dep_active, dep_product, conditions_version) = row[:8]
    (conditions_tags, dep_sends, platform, architecture) = row[8:12]
    stored = dict(zip(JOIN_COLUMNS, row[12 : 12 + len(JOIN_COLUMNS)], strict=True))
    extensions, in_flight, any_active, gate_counted = row[12 + len(JOIN_COLUMNS) :]
    deployment = None
    if deployment_id is not None:
        deployment = DeploymentRules(
            pk=deployment_id,
            is_active=bool(dep_active),
            product_id=dep_product,
            conditions_version=conditions_version or "",
            conditions_tags=[str(tag) for tag in _json(conditions_tags) or []],
            firmware=TargetFirmware(platform or "", architecture or ""),
            sends_on_join=bool(dep_sends),
        )
    info = ConnectionInfo(
        previous_channel=previous if previous != channel else "",
        product_extensions=frozenset(str(name) for name in (_json(extensions) or [])),
        deployment_id=deployment_id,
    )
    known = StoredDevice(
        product_id=product_id,
        tags=[str(tag) for tag in _json(tags) or []],
        stored=stored,
        has_connecting_code=bool(device_code),
        update_in_flight=bool(in_flight),
        deployment=deployment,
        product_has_active_deployment=bool(any_active),
        gate_counted=bool(gate_counted),
    )
    return Connected(device_id=device_id, identifier=identifier, info=info, known=known)


def connect_returning(
    *, org_id: int, product_id: int, key_id: int, identifier: str, channel: str, lease_id: int | None, now: datetime
) -> Connected | None:
    """Record the connection of a device the hub knows, authenticated with
    product key `key_id` (its signature verified), in one statement; None when
    it is not such a device (the caller takes the full path, which decides)."""
    params = _connect_params(org_id, product_id, key_id, identifier, channel, lease_id, now)
    return _connected(_execute(_connect_sql(), params), product_id, identifier, channel)


async def connect_returning_async(
    *, org_id: int, product_id: int, key_id: int, identifier: str, channel: str, lease_id: int | None, now: datetime
) -> Connected | None:
    """`connect_returning` from the event loop, on the fast pool (devicelink.fastdb).
    Raises psycopg's errors: the caller then takes the thread path."""
    params = _connect_params(org_id, product_id, key_id, identifier, channel, lease_id, now)
    return _connected(await fastdb.fetchone(_connect_sql(), params), product_id, identifier, channel)


def join_needs_nothing(known: StoredDevice, report: JoinReport) -> bool:
    """Whether the full join (devicelink.join.store_join) of this report would
    write nothing, push nothing and keep the device's deployment."""
    # Imported here: the rollout engine imports a good part of the hub, and
    # this module is imported by the device socket at start-up.
    from deployments.rollout import membership_problems

    if known.update_in_flight or known.has_connecting_code:
        return False
    if any(known.stored.get(name) != value for name, value in join_fields(report).items()):
        return False
    deployment = known.deployment
    if deployment is None:
        # The full join would look for a deployment that matches.
        return not known.product_has_active_deployment
    return deployment.is_active and not deployment.sends_on_join and not membership_problems(deployment, known)
