"""Create (or reuse) an organization, its admin, a product and a product key:
what a demo, a script or a first start needs. Used by the `bootstrap` and
`quickstart` management commands."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass

from django.contrib.auth.models import User
from django.db import transaction

from devices.models import ProductSharedSecret
from devices.services import create_product_secret
from nerveshub.lib.sealed import unseal
from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import Role

ACTOR = "bootstrap"


@dataclass(frozen=True)
class Bootstrapped:
    org: str
    product: str
    product_key: str
    product_secret: str
    admin_username: str
    admin_password: str | None  # only when this call created the user

    def as_dict(self) -> dict[str, str | None]:
        data = asdict(self)
        if data["admin_password"] is None:
            del data["admin_password"]
        return data


def bootstrap(org_name: str, product_name: str, admin_username: str = "admin") -> Bootstrapped:
    with transaction.atomic():
        org, _ = tenancy.get_or_create_org(ACTOR, org_name)
        password: str | None = None
        user = User.objects.filter(username=admin_username).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            user = User.objects.create_user(admin_username, password=password, is_staff=True, is_superuser=True)
            tenancy.audit(ACTOR, "user.created", user, org=org, details={"superuser": True})
        tenancy.set_membership(ACTOR, org, user, Role.ADMIN)
        product, _ = tenancy.get_or_create_product(ACTOR, org, product_name)
        existing = ProductSharedSecret.objects.filter(product=product, deactivated_at__isnull=True).first()
        if existing is not None:
            key, secret = existing.key, unseal(existing.secret_sealed)
        else:
            _, issued = create_product_secret(ACTOR, product)
            key, secret = issued.key, issued.secret
    return Bootstrapped(
        org=org.name,
        product=product.name,
        product_key=key,
        product_secret=secret,
        admin_username=user.get_username(),
        admin_password=password,
    )
