"""The HTTPS device API of polling devices: `GET /device/update` and
`GET /device/me` (docs/polling.md).

A small ASGI app in front of Django (nerveshub/asgi.py), like the firmware
downloads: a poll is one trip to a device database thread
(devicelink.dbthreads.device_db_call) that authenticates the forwarded client
certificate (devicelink.certauth.device_from_scope, the socket's own
authenticator), stores what the device reports and asks the rollout what it
should install (devices.services.record_poll, deployments.rollout.poll_for_update).
Django's request machinery, its middleware and its URL resolver stay out of
the way: a poll must cost the hub as little as the device costs it.

What the device sends is read here and handed on as plain arguments
(devices.services.JoinReport), as the socket's join does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, replace
from email.utils import formatdate
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError

from deployments import rollout
from devicelink import dbthreads
from devicelink.certauth import device_from_scope
from devicelink.dbthreads import device_db_call
from devicelink.errors import AuthError
from devices import services
from devices.services import JoinReport

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[..., Awaitable[None]]

UPDATE, ME = "/device/update", "/device/me"
ROUTES = frozenset({UPDATE, ME})

FORBIDDEN = {"status": "forbidden"}
NO_UPDATE: dict[str, Any] = {
    "update_available": False,
    "firmware_url": None,
    "firmware_meta": None,
    "deployment_id": None,
}

PREFIX = "x-nerveshub-"
# Header (after the prefix) → JoinReport field. Both spellings of
# vcs_identifier: a proxy that drops underscored header names would lose the
# first (deploy/nginx/nerveshub.conf keeps them: underscores_in_headers on).
METADATA = {
    "uuid": "nerves_fw_uuid",
    "product": "nerves_fw_product",
    "version": "nerves_fw_version",
    "architecture": "nerves_fw_architecture",
    "platform": "nerves_fw_platform",
    "author": "nerves_fw_author",
    "description": "nerves_fw_description",
    "misc": "nerves_fw_misc",
    "vcs_identifier": "nerves_fw_vcs_identifier",
    "vcs-identifier": "nerves_fw_vcs_identifier",
    "fwup-version": "fwup_version",
}
# Longest value accepted per header: the device row's widest short column is
# 200 characters; description and misc are free text, kept to this.
MAX_VALUE = 4096
UUID_MAX = 36


class BadRequest(Exception):
    """What the device sent cannot be read: 400 with this reason."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def read_report(scope: Scope, *, require_uuid: bool) -> JoinReport | None:
    """The firmware the device reports in its X-NervesHub-* headers, or None
    when it reports none (no uuid) and none is required. Raises BadRequest.
    application_part0_* and unknown keys are not stored."""
    values: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = bytes(raw_name).decode("latin1").lower()
        if not name.startswith(PREFIX):
            continue
        field = METADATA.get(name[len(PREFIX) :])
        if field is None or field in values:
            continue  # the first of repeated headers counts
        shown = "X-NervesHub-" + name[len(PREFIX) :]
        try:
            value = bytes(raw_value).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"{shown} is not UTF-8") from None
        if len(value) > MAX_VALUE:
            raise BadRequest(f"{shown} is longer than {MAX_VALUE} characters")
        # NUL cannot be stored (PostgreSQL), and no metadata has control characters.
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
            raise BadRequest(f"{shown} contains control characters")
        values[field] = value.strip()
    uuid = values.get("nerves_fw_uuid", "")
    if not uuid:
        if require_uuid:
            raise BadRequest("X-NervesHub-uuid is missing: the hub cannot tell which firmware the device runs")
        return None
    if len(uuid) > UUID_MAX or not uuid.isprintable() or any(c.isspace() for c in uuid):
        raise BadRequest("X-NervesHub-uuid is not a firmware uuid")
    return JoinReport(
        fwup_version=values.get("fwup_version", ""),
        nerves_fw_uuid=uuid,
        nerves_fw_product=values.get("nerves_fw_product", ""),
        nerves_fw_version=values.get("nerves_fw_version", ""),
        nerves_fw_platform=values.get("nerves_fw_platform", ""),
        nerves_fw_architecture=values.get("nerves_fw_architecture", ""),
        nerves_fw_author=values.get("nerves_fw_author", ""),
        nerves_fw_description=values.get("nerves_fw_description", ""),
        nerves_fw_vcs_identifier=values.get("nerves_fw_vcs_identifier", ""),
        nerves_fw_misc=values.get("nerves_fw_misc", ""),
    )


def serve_poll(scope: Scope, path: str, report: JoinReport | None, problem: str) -> Answer:
    """One poll, on a device database thread: authenticate, then answer."""
    device = device_from_scope(scope)
    if device is None:
        raise AuthError(403, "forbidden", "no client certificate")
    if problem:
        logger.info("device %s poll refused: %s", device.identifier, problem)
        return Answer(400, {"status": "bad request", "reason": problem})
    if report is not None:
        # The HTTPS API has no device API version: keep what a socket reported.
        report = replace(report, device_api_version=device.device_api_version or report.device_api_version)
    stored = services.record_poll(device, report)
    if path == ME:
        return Answer(200, {"data": {"identifier": stored.identifier}})
    payload = rollout.poll_for_update(stored)
    if payload is None:
        return Answer(200, {"data": NO_UPDATE})
    return Answer(
        200,
        {
            "data": {
                "update_available": True,
                "firmware_url": payload["firmware_url"],
                "firmware_meta": payload["firmware_meta"],
                "deployment_id": payload["deployment_id"],
            }
        },
    )


class DevicePollApp:
    """Answers /device/update and /device/me; passes everything else to `inner`."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        path = scope.get("path", "") if scope.get("type") == "http" else ""
        if path not in ROUTES:
            await self.inner(scope, receive, send)
            return
        answer = await self.answer(scope, path)
        await respond(send, answer)

    async def answer(self, scope: Scope, path: str) -> Answer:
        if scope.get("method") != "GET":
            return Answer(405, {"status": "method not allowed", "reason": "the device API answers GET only"})
        limit = settings.DEVICE_CONNECT_BACKLOG
        if limit and dbthreads.backlog() >= limit:
            # Shed before any work, as the socket does: the device polls again later.
            return Answer(503, {"status": "unavailable", "reason": "too many devices are polling right now"})
        report: JoinReport | None = None
        problem = ""
        try:
            report = read_report(scope, require_uuid=path == UPDATE)
        except BadRequest as exc:
            problem = str(exc)
        try:
            result: Answer = await device_db_call(serve_poll)(scope, path, report, problem)
            return result
        except AuthError as exc:
            client = scope.get("client")
            logger.info("device poll refused (%s): %s from %s", exc.status, exc.detail, client[0] if client else "?")
            return Answer(403, FORBIDDEN)
        except ValidationError as exc:
            # A first-seen certificate whose CN the identifier rule refuses: the
            # device's fault, refused like any other certificate.
            logger.info("device poll refused: %s", " ".join(exc.messages))
            return Answer(403, FORBIDDEN)
        except DatabaseError:
            logger.exception("device poll failed on the database")
            return Answer(503, {"status": "unavailable", "reason": "the hub's database could not be reached"})


async def respond(send: Callable[[Message], Awaitable[None]], answer: Answer) -> None:
    body = json.dumps(answer.body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": answer.status,
            "headers": [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"date", formatdate(usegmt=True).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
