"""NervesHub's user API, for NervesHub's own command-line tools (`mix nerves_hub.*`
and the `nerves_hub` escript) and the pipelines built on them.

Authentication: `Authorization: token nhu_…` or `Authorization: Bearer nhu_…`, the
same user API tokens as /api/v1/ (POST /api/users/login issues one for a user
name or e-mail address and password). Reads need the `view` role in the
organization, writes `manage`, signing keys, CA certificates and members `admin`.

Answers are `{"data": …}`; errors `{"errors": {"detail": "…"}}`, or
`{"errors": {"<field>": ["…"]}}` for invalid input (422). A missing role answers
401, another organization's resources 404. The hub's own API, with more
operations, is under /api/v1/ (its document at /api/v1/openapi.json).
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError

# The same token check and body parser as /api/v1/: one definition of who a
# token is and of which bodies are refused before any route runs.
from nerveshub.api import InputParser, TokenAuth
from nerveshub.nhapi import deployments, devices, firmware, orgs, users
from nerveshub.nhapi.common import FieldErrors

logger = logging.getLogger(__name__)

api = NinjaAPI(
    title="NervesHub user API",
    version="2",
    description=__doc__ or "",
    auth=TokenAuth(),
    urls_namespace="nhapi",
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
    # NervesHub answers a member without the role an operation needs with 401.
    status = 401 if exc.status_code == 403 else exc.status_code
    return _error(request, status, {"detail": str(exc)})


@api.exception_handler(FieldErrors)
def _field_errors(request: HttpRequest, exc: FieldErrors) -> HttpResponse:
    return _error(request, 422, exc.errors)


@api.exception_handler(NinjaValidationError)
def _invalid_input(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
    fields: dict[str, list[str]] = {}
    for error in exc.errors:
        location = [str(part) for part in error.get("loc", []) if part not in ("body", "payload", "query", "path")]
        fields.setdefault(".".join(location) or "detail", []).append(str(error.get("msg", "invalid")))
    return _error(request, 422, fields)


@api.exception_handler(DjangoValidationError)
def _model_invalid(request: HttpRequest, exc: DjangoValidationError) -> HttpResponse:
    if hasattr(exc, "error_dict"):
        return _error(request, 422, {k: [str(m) for e in v for m in e.messages] for k, v in exc.error_dict.items()})
    return _error(request, 422, {"detail": exc.messages})


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return _error(request, 413, {"detail": f"the request body is larger than {limit} bytes"})


@api.exception_handler(DataError)
def _unstorable(request: HttpRequest, exc: DataError) -> HttpResponse:
    # What the database cannot store is the caller's input, not a server fault.
    logger.info("NervesHub API input refused by the database: %s %s: %s", request.method, request.path, exc)
    return _error(request, 422, {"detail": "a value cannot be stored: " + str(exc).split("\n", 1)[0]})


def register_routers() -> None:
    """Mount the routers (nerveshub.urls calls this once)."""
    api.add_router("/", users.router)
    api.add_router("/", orgs.router)
    api.add_router("/", devices.router)
    api.add_router("/", firmware.router)
    api.add_router("/", deployments.router)
