"""What every router of NervesHub's user API borrows: the `{"data": …}` envelope,
the access checks (the same as /api/v1's, nerveshub/apihelpers.py) and the
readers of the loose values NervesHub's tools send (booleans and lists as text,
certificates as base64)."""

from __future__ import annotations

import base64
import binascii
from typing import Generic, TypeVar

from django.http import HttpRequest
from ninja import Schema
from ninja.errors import HttpError

from nerveshub.apihelpers import require_org, require_product
from nerveshub.tenancy.models import Organization, Product, Role

T = TypeVar("T")


class Data(Schema, Generic[T]):
    data: T


class FieldErrors(Exception):
    """A 422 naming the fields: `{"errors": {"<field>": ["…"]}}`."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


def org_for(request: HttpRequest, name: str, role: str = Role.VIEW) -> Organization:
    # require_org answers 404 to an outsider and 403 to a member with a lesser
    # role; the error handler (nerveshub/nhapi/api.py) turns the 403 into the
    # 401 NervesHub's tools expect.
    return require_org(request, name, role)


def product_for(request: HttpRequest, org: str, product: str, role: str = Role.VIEW) -> Product:
    return require_product(request, org, product, role)


TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")


def loose_bool(field: str, value: bool | str) -> bool:
    """A boolean, or the text NervesHub's tools send for one ("true", "on", …)."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise FieldErrors({field: [f"must be true or false (or on/off), not {value[:50]!r}"]})


def loose_tags(value: list[str] | str) -> list[str]:
    """Tags as a list, or as the comma-separated text the tools' `update` sends."""
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    return value


PEM_MAX = 65_536  # a certificate chain is a few kilobytes; anything larger is not one


def pem_from_base64(field: str, value: str) -> str:
    """NervesHub's tools send certificates as base64 of the PEM text; a PEM sent
    as it is is taken too."""
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return text
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FieldErrors({field: ["must be the certificate's PEM text, base64-encoded"]}) from None
    try:
        pem = decoded.decode("ascii")
    except UnicodeDecodeError:
        raise FieldErrors({field: ["the base64 text does not hold PEM text"]}) from None
    if "-----BEGIN" not in pem:
        raise FieldErrors({field: ["the base64 text does not hold a PEM certificate"]})
    return pem


def not_found(what: str) -> HttpError:
    return HttpError(404, f"{what} not found")
