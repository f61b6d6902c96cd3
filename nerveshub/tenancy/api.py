"""REST endpoints for the user, organizations and products."""

from __future__ import annotations

from datetime import datetime

from django.http import HttpRequest
from ninja import Router, Schema, Status
from ninja.errors import HttpError
from pydantic import ConfigDict, Field

from firmware.models import SigningKey
from nerveshub.apihelpers import actor, require_org, require_product
from nerveshub.tenancy import services
from nerveshub.tenancy.models import APIToken, Product, Role

router = Router(tags=["organizations"])


class UserOut(Schema):
    username: str
    email: str


class OrgOut(Schema):
    name: str
    role: str


class ProductIn(Schema):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    description: str = ""


class ProductPatch(Schema):
    model_config = ConfigDict(extra="forbid")
    description: str | None = None
    extensions: list[str] | None = None
    poll_interval_seconds: int | None = Field(
        None, ge=10, le=30 * 86400, description="How often the product's polling devices ask for an update"
    )
    builtin_keys: list[str] | None = Field(
        None, max_length=100, description="names of the org's signing keys built into every device of the product"
    )
    health_thresholds: dict[str, list[float]] | None = Field(
        None,
        description="per metric, [warning, unhealthy] limits (replaces the product's own set; a metric left out "
        "keeps the hub's default)",
    )


class ProductOut(Schema):
    name: str
    description: str
    extensions: list[str]
    poll_interval_seconds: int
    builtin_keys: list[str]
    health_thresholds: dict[str, list[float]]


def _product_out(product: Product) -> ProductOut:
    return ProductOut(
        name=product.name,
        description=product.description,
        extensions=list(product.extensions),
        poll_interval_seconds=product.poll_interval_seconds,
        builtin_keys=sorted(key.name for key in product.builtin_keys.all()) if product.pk else [],
        health_thresholds=product.health_thresholds if isinstance(product.health_thresholds, dict) else {},
    )


@router.get("/users/me", response=UserOut)
def me(request: HttpRequest) -> UserOut:
    user = actor(request)
    return UserOut(username=user.get_username(), email=user.email)


class TokenIn(Schema):
    model_config = ConfigDict(extra="forbid")
    note: str = Field("", max_length=100, description="What the token is for, e.g. the CI pipeline's name")


class TokenOut(Schema):
    id: int
    prefix: str
    note: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewTokenOut(TokenOut):
    token: str = Field(description="The token itself; shown this once and never again")


def _token_out(token: APIToken) -> TokenOut:
    return TokenOut(
        id=token.pk,
        prefix=token.prefix,
        note=token.note,
        created_at=token.created_at,
        last_used_at=token.last_used_at,
        revoked_at=token.revoked_at,
    )


@router.get("/users/me/tokens", response=list[TokenOut])
def list_tokens(request: HttpRequest) -> list[TokenOut]:
    return [_token_out(t) for t in APIToken.objects.filter(user=actor(request)).order_by("-created_at")]


@router.post("/users/me/tokens", response={201: NewTokenOut})
def create_token(request: HttpRequest, payload: TokenIn) -> Status[NewTokenOut]:
    user = actor(request)
    issued = services.create_api_token(user, user, payload.note.strip())
    return Status(201, NewTokenOut(**_token_out(issued.token).model_dump(), token=issued.clear))


@router.delete("/users/me/tokens/{token_id}", response={204: None})
def revoke_token(request: HttpRequest, token_id: int) -> Status[None]:
    """Revoke one of the caller's own tokens (the one in use included)."""
    # Out of the id column's range: no such token (and no database error).
    in_range = 0 < token_id < 2**63
    token = APIToken.objects.filter(user=actor(request), pk=token_id).first() if in_range else None
    if token is None:
        raise HttpError(404, f"token {token_id} not found")
    services.revoke_api_token(actor(request), token)
    return Status(204, None)


@router.get("/orgs", response=list[OrgOut])
def list_orgs(request: HttpRequest) -> list[OrgOut]:
    user = actor(request)
    return [
        OrgOut(name=org.name, role=services.role_in(user, org) or Role.VIEW)
        for org in services.orgs_for(user).order_by("name")
    ]


@router.get("/orgs/{org}/products", response=list[ProductOut])
def list_products(request: HttpRequest, org: str) -> list[ProductOut]:
    organization = require_org(request, org)
    products = Product.objects.filter(org=organization).order_by("name").prefetch_related("builtin_keys")
    return [_product_out(p) for p in products]


@router.post("/orgs/{org}/products", response={201: ProductOut})
def create_product(request: HttpRequest, org: str, payload: ProductIn) -> Status[ProductOut]:
    organization = require_org(request, org, Role.MANAGE)
    if Product.objects.filter(org=organization, name=payload.name).exists():
        raise HttpError(409, f"product {payload.name!r} already exists")
    product = Product(org=organization, name=payload.name, description=payload.description, extensions=["health"])
    services.save_product(actor(request), product, ["name", "description"], via="api")
    return Status(201, _product_out(product))


@router.get("/orgs/{org}/products/{product}", response=ProductOut)
def get_product(request: HttpRequest, org: str, product: str) -> ProductOut:
    return _product_out(require_product(request, org, product))


@router.patch("/orgs/{org}/products/{product}", response=ProductOut)
def update_product(request: HttpRequest, org: str, product: str, payload: ProductPatch) -> ProductOut:
    found = require_product(request, org, product, Role.MANAGE)
    changes = payload.model_dump(exclude_none=True, exclude={"builtin_keys"})
    for name, value in changes.items():
        setattr(found, name, value)
    keys = None
    if payload.builtin_keys is not None:
        keys = list(SigningKey.objects.filter(org_id=found.org_id, name__in=payload.builtin_keys))
        unknown = sorted(set(payload.builtin_keys) - {key.name for key in keys})
        if unknown:
            raise HttpError(422, f"no signing key named {', '.join(unknown)} in this organization")
    services.save_product(actor(request), found, changes, via="api", builtin_keys=keys)
    return _product_out(found)


@router.delete("/orgs/{org}/products/{product}", response={204: None})
def delete_product(request: HttpRequest, org: str, product: str) -> Status[None]:
    found = require_product(request, org, product, Role.ADMIN)
    try:
        services.delete_product(actor(request), found, via="api")
    except services.ProductInUse as exc:
        raise HttpError(409, str(exc)) from None
    return Status(204, None)
