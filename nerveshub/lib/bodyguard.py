"""Requests refused on their headers, before their bodies are read.

Which limit and which credentials a request body needs depend on its route:

* firmware uploads (the API's, the org page's and the admin's): up to
  FIRMWARE_MAX_SIZE plus room for the multipart envelope, and only from a
  caller who is signed in (session cookie) or holds a valid API token;
* the sign-in routes of NervesHub's user API (docs/nerveshub-api.md), which
  issue tokens: REQUEST_MAX_BODY_SIZE and no credentials;
* anything else under /api/: REQUEST_MAX_BODY_SIZE and a valid API token;
* everything else: REQUEST_MAX_BODY_SIZE.

A declared Content-Length past the limit answers 413, missing or invalid
credentials 401 (API, JSON like the API's own errors) or 403 (pages), and the
body is never read. A body without a Content-Length (chunked) is counted as it
arrives and cut at the limit with a 413.

Two places enforce it, with the same rules: under daphne
(nerveshub.lib.daphne_http), at the end of the headers, because daphne only
starts the application once Twisted has spooled the whole body to a temporary
file; and `BodyGuard`, an ASGI middleware in front of Django, for servers that
hand the body over as it arrives (and for requests daphne has not checked).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user
from django.http import HttpRequest
from django.http.cookie import parse_cookie
from django.utils.module_loading import import_string

from nerveshub.tenancy import services as tenancy

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]

# Scope extension daphne_http adds to a request whose headers and body it checked.
CHECKED = "nerveshub.body_checked"
# Room for the multipart boundary lines and the form's other fields.
MULTIPART_ENVELOPE = 1024 * 1024

TOKEN, SESSION, STAFF_SESSION = "token", "session", "staff-session"

_FIRMWARE_UPLOADS = [
    (re.compile(r"^/api/(v1/)?orgs/[^/]+/products/[^/]+/firmwares/?$"), TOKEN),
    (re.compile(r"^/org/[^/]+/firmware/$"), SESSION),
    (re.compile(r"^/admin/firmware/firmware/add/$"), STAFF_SESSION),
]

# Where a caller comes to get a token, so cannot hold one yet.
_SIGN_IN = re.compile(r"^/api/(users/(login|auth)|auth/cli_session)/?$")


@dataclass(frozen=True)
class Rule:
    limit: int
    credentials: str | None
    api: bool


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str
    api: bool

    def body(self) -> bytes:
        if self.api:
            return json.dumps({"errors": {"detail": self.reason}}).encode()
        return self.reason.encode() + b"\n"

    def headers(self) -> list[tuple[bytes, bytes]]:
        kind = b"application/json" if self.api else b"text/plain; charset=utf-8"
        return [
            (b"content-type", kind),
            (b"content-length", str(len(self.body())).encode()),
            # The body we did not read is still on its way: this connection is done.
            (b"connection", b"close"),
        ]

    def http_bytes(self) -> bytes:
        """The whole response, for writing straight to a socket."""
        lines = [f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}".encode()]
        lines += [name + b": " + value for name, value in self.headers()]
        lines.append(b"date: " + formatdate(usegmt=True).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body()

    async def send(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers()})
        await send({"type": "http.response.body", "body": self.body()})


def rule_for(path: str) -> Rule:
    api = path.startswith("/api/")
    for pattern, credentials in _FIRMWARE_UPLOADS:
        if pattern.match(path):
            return Rule(settings.FIRMWARE_MAX_SIZE + MULTIPART_ENVELOPE, credentials, api)
    if _SIGN_IN.match(path):
        return Rule(settings.REQUEST_MAX_BODY_SIZE, None, api)
    return Rule(settings.REQUEST_MAX_BODY_SIZE, TOKEN if api else None, api)


def too_large(rule: Rule) -> Refusal:
    return Refusal(413, f"the request body is larger than {rule.limit} bytes", rule.api)


def size_refusal(rule: Rule, content_length: int | None) -> Refusal | None:
    if content_length is not None and content_length > rule.limit:
        return too_large(rule)
    return None


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return bytes(value)
    return None


def _token_is_valid(authorization: bytes | None) -> bool:
    # The API's TokenAuth reads the header the same way (nerveshub/api.py).
    if not authorization:
        return False
    scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
    if scheme.lower() not in ("token", "bearer") or not token.strip():
        return False
    return tenancy.authenticate_api_token(token.strip()) is not None


def _session_allows(cookie: bytes | None, staff: bool) -> bool:
    if not cookie:
        return False
    key = parse_cookie(cookie.decode("latin-1")).get(settings.SESSION_COOKIE_NAME)
    if not key:
        return False
    # The same checks as AuthenticationMiddleware: the session exists, names an
    # active user, and its password hash is still the user's.
    request = HttpRequest()
    request.session = import_string(settings.SESSION_ENGINE).SessionStore(key)
    user = get_user(request)
    return bool(user.is_authenticated and user.is_active and (user.is_staff or not staff))


def _credentials_refusal(rule: Rule, headers: list[tuple[bytes, bytes]]) -> Refusal | None:
    if rule.credentials == TOKEN:
        if _token_is_valid(_header(headers, b"authorization")):
            return None
        return Refusal(401, "missing or invalid API token", rule.api)
    if rule.credentials in (SESSION, STAFF_SESSION):
        if _session_allows(_header(headers, b"cookie"), staff=rule.credentials == STAFF_SESSION):
            return None
        return Refusal(403, "sign in before uploading", rule.api)
    return None


async def credentials_refusal(rule: Rule, headers: list[tuple[bytes, bytes]]) -> Refusal | None:
    if rule.credentials is None:
        return None
    refusal: Refusal | None = await database_sync_to_async(_credentials_refusal)(rule, headers)
    return refusal


def body_framing(headers: Iterable[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """(Content-Length or None, whether a body follows)."""
    length = _header(headers, b"content-length")
    if length is not None and length.strip().isdigit():
        size = int(length)
        return size, size > 0
    encoding = _header(headers, b"transfer-encoding")
    return None, encoding is not None and encoding.strip().lower() != b"identity"


class BodyGuard:
    """ASGI middleware: refuses on the headers, and cuts a body at its limit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or CHECKED in scope.get("extensions", {}):
            await self.app(scope, receive, send)
            return
        headers = list(scope.get("headers", []))
        length, has_body = body_framing(headers)
        if not has_body:
            await self.app(scope, receive, send)
            return
        rule = rule_for(scope["path"])
        refusal = size_refusal(rule, length) or await credentials_refusal(rule, headers)
        if refusal is not None:
            logger.info("request refused before its body: %s %s %s", refusal.status, scope["method"], scope["path"])
            await refusal.send(send)
            return

        seen = 0
        cut = started = False

        async def counted_receive() -> Message:
            nonlocal seen, cut
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > rule.limit:
                    # Django reads a disconnect as an aborted request and stops.
                    cut = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted_receive, tracked_send)
        if cut and not started:
            logger.info("request body cut at %s bytes: %s %s", rule.limit, scope["method"], scope["path"])
            await too_large(rule).send(send)
