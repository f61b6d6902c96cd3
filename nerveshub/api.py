"""The REST API under /api/v1/, for CI systems and the CLI.

Authentication: `Authorization: token nhu_…` or `Authorization: Bearer nhu_…`
(the scheme is case-insensitive), a user API token. What a token may do follows
its user's role in each organization: `view` reads, `manage` writes devices,
firmware and deployments, `admin` manages keys, certificates and members.
Another organization's resources answer 404, as if they did not exist.

Errors are JSON: `{"errors": {"detail": "…"}}`, or `{"errors": {"<field>": ["…"]}}`
for invalid input. The OpenAPI document is at /api/v1/openapi.json.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError
from django.http import HttpRequest, HttpResponse
from django.utils.datastructures import MultiValueDict
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.parser import Parser
from ninja.security import APIKeyHeader

# This module gathers the apps' routers (each `<app>/api.py`) and answers
# errors. What the routers borrow (`require_org`, `require_product`, `actor`)
# lives below them in nerveshub/apihelpers.py, so imports point one way: this
# module -> the apps' routers -> the helpers. (The docstring above is the
# OpenAPI description, hence a comment here.)
from certificates.api import router as certificates_router
from deployments.api import router as deployments_router
from devices.api import router as devices_router
from firmware.api import router as firmware_router
from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.api import router as tenancy_router
from nerveshub.web.api import router as members_router


class TokenAuth(APIKeyHeader):
    param_name = "Authorization"

    def authenticate(self, request: HttpRequest, key: str | None) -> User | None:
        if not key:
            return None
        scheme, _, token = key.strip().partition(" ")
        if scheme.lower() not in ("token", "bearer") or not token.strip():
            return None
        found = tenancy.authenticate_api_token(token.strip())
        if found is None:
            return None
        request.user = found.user
        return found.user


logger = logging.getLogger(__name__)
NUL_REFUSED = "text may not contain NUL characters"


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class InputParser(Parser):
    """JSON bodies and query strings, refusing NUL characters: PostgreSQL cannot
    store them, and SQLite would; refusing them here answers the same on both."""

    def parse_body(self, request: HttpRequest) -> dict[str, Any]:
        body = cast(dict[str, Any], json.loads(request.body))
        if _has_nul(body):
            raise HttpError(422, NUL_REFUSED)
        return body

    def parse_querydict(
        self, data: MultiValueDict[str, Any], list_fields: list[str], request: HttpRequest
    ) -> dict[str, Any]:
        result = super().parse_querydict(data, list_fields, request)
        if _has_nul(result):
            # 400 like an unparsable body (django-ninja answers that for parse_body's errors).
            raise HttpError(400, NUL_REFUSED)
        return result


api = NinjaAPI(
    title="NervesHub API",
    version="1",
    description=__doc__ or "",
    auth=TokenAuth(),
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
    parser=InputParser(),
)


def _error(request: HttpRequest, status: int, errors: dict[str, Any]) -> HttpResponse:
    return api.create_response(request, {"errors": errors}, status=status)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return _error(request, 401, {"detail": "missing or invalid API token"})


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return _error(request, exc.status_code, {"detail": str(exc)})


def answer_input_errors(target: NinjaAPI, label: str) -> None:
    """The answers both APIs (this one and nerveshub.nhapi) give to bad input:
    422 with the fields at fault, 413 for a body over the limit, 422 for what
    the database cannot store; `{"errors": …}` as NervesHub shapes them."""

    def error(request: HttpRequest, status: int, errors: dict[str, Any]) -> HttpResponse:
        return target.create_response(request, {"errors": errors}, status=status)

    @target.exception_handler(NinjaValidationError)
    def _invalid_input(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
        fields: dict[str, list[str]] = {}
        for item in exc.errors:
            location = [str(part) for part in item.get("loc", []) if part not in ("body", "payload", "query", "path")]
            fields.setdefault(".".join(location) or "detail", []).append(str(item.get("msg", "invalid")))
        return error(request, 422, fields)

    @target.exception_handler(DjangoValidationError)
    def _model_invalid(request: HttpRequest, exc: DjangoValidationError) -> HttpResponse:
        if hasattr(exc, "error_dict"):
            fields = {k: [str(m) for e in v for m in e.messages] for k, v in exc.error_dict.items()}
            return error(request, 422, fields)
        return error(request, 422, {"detail": exc.messages})

    @target.exception_handler(RequestDataTooBig)
    def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
        # Django's own answer would be an HTML 400 page. (Firmware files are
        # multipart uploads, streamed to storage: this limit is not theirs.)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return error(request, 413, {"detail": f"the request body is larger than {limit} bytes"})

    @target.exception_handler(DataError)
    def _unstorable(request: HttpRequest, exc: DataError) -> HttpResponse:
        # What the database cannot store (a NUL in a path, a number out of range) is
        # the caller's input, not a server fault.
        logger.info("%s input refused by the database: %s %s: %s", label, request.method, request.path, exc)
        return error(request, 422, {"detail": "a value cannot be stored: " + str(exc).split("\n", 1)[0]})


answer_input_errors(api, "API")


def register_routers() -> None:
    """Mount each app's router (nerveshub.urls calls this once)."""
    api.add_router("/", tenancy_router)
    api.add_router("/", devices_router)
    api.add_router("/", deployments_router)
    api.add_router("/", firmware_router)
    api.add_router("/", certificates_router)
    api.add_router("/", members_router)
