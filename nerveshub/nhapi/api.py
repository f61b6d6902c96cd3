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

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError

# The same token check and body parser as /api/v1/: one definition of who a
# token is and of which bodies are refused before any route runs.
from nerveshub.api import InputParser, TokenAuth, answer_input_errors
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


answer_input_errors(api, "NervesHub API")


def register_routers() -> None:
    """Mount the routers (nerveshub.urls calls this once)."""
    api.add_router("/", users.router)
    api.add_router("/", orgs.router)
    api.add_router("/", devices.router)
    api.add_router("/", firmware.router)
    api.add_router("/", deployments.router)
