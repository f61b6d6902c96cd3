"""Business rules for organizations, members, products, API tokens and the audit log.

Every function that changes state writes its audit event in the same
transaction. Callers: admin actions, views, management commands, tasks.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, models, transaction
from django.utils import timezone
from django.utils.text import slugify

from devices import health, publish
from devices.models import ConnectionStatus, Device
from nerveshub.lib.validation import refuse_unless_valid
from nerveshub.tenancy import audit_chain
from nerveshub.tenancy.models import ROLE_RANK, APIToken, AuditEvent, Membership, Organization, Product, Role

if TYPE_CHECKING:
    # Types only: firmware's models build on tenancy's.
    from firmware.models import SigningKey

# Who did it: a user, a device (anything with .identifier), or a plain label such
# as "system" or "orchestrator".
Actor = AbstractBaseUser | AnonymousUser | models.Model | str | None


def _actor_fields(actor: Actor) -> tuple[Any, str]:
    if actor is None:
        return None, "system"
    if isinstance(actor, str):
        return None, actor
    if isinstance(actor, AnonymousUser):
        return None, "anonymous"
    if isinstance(actor, AbstractBaseUser):
        return actor, f"user:{actor.get_username()}"
    identifier = getattr(actor, "identifier", None)
    if identifier is not None:
        return None, f"device:{identifier}"
    return None, f"{actor._meta.model_name}:{actor.pk}"


def audit(
    actor: Actor,
    action: str,
    subject: models.Model | None = None,
    *,
    org: Organization | int | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Record that `actor` did `action` to `subject`. The org defaults to the
    subject's own org (subject.org / subject.org_id)."""
    user, actor_label = _actor_fields(actor)
    org_id: int | None
    if isinstance(org, Organization):
        org_id = org.pk
    elif org is not None:
        org_id = org
    elif isinstance(subject, Organization):
        org_id = subject.pk
    else:
        org_id = getattr(subject, "org_id", None)
    event = AuditEvent(
        org_id=org_id,
        actor_user=user,
        actor=actor_label[:200],
        action=action,
        subject_type=subject._meta.model_name or "" if subject is not None else "",
        subject_id=str(subject.pk) if subject is not None else "",
        subject=str(subject)[:200] if subject is not None else "",
        details=details or {},
    )
    # savepoint=False: inside the caller's transaction this adds no savepoint;
    # called outside one, the append and the hooks still commit together.
    with transaction.atomic(savepoint=False):
        # The hooks look before the append, which locks the org's chain until
        # commit: whatever they read is not read under that lock.
        then = [finish for hook in _audit_hooks if (finish := hook(event)) is not None]
        audit_chain.append(event)
        for finish in then:
            finish(event)
    return event


def save_audited(actor: Actor, obj: models.Model, fields: Iterable[str], *, via: str) -> bool:
    """Save a checked row and audit `<model>.created` or `<model>.changed` (with
    the adapter and the fields it set) in one transaction. True if it was new."""
    created = obj._state.adding
    with transaction.atomic():
        obj.save()
        action = "created" if created else "changed"
        audit(actor, f"{obj._meta.model_name}.{action}", obj, details={"via": via, "fields": sorted(set(fields))})
    return created


# Called with every new event inside the auditing transaction, before it is
# appended (no id or time yet); returns what to do with the appended event, or
# None for nothing. What a hook writes commits or rolls back with the event.
# Apps register in AppConfig.ready (webhooks writes its outbox rows this way);
# tenancy depends on none of them.
AuditHook = Callable[[AuditEvent], Callable[[AuditEvent], None] | None]
_audit_hooks: list[AuditHook] = []


def register_audit_hook(hook: AuditHook) -> None:
    if hook not in _audit_hooks:
        _audit_hooks.append(hook)


# --- Organizations and members -------------------------------------------------


def get_or_create_org(actor: Actor, name: str) -> tuple[Organization, bool]:
    with transaction.atomic():
        org, created = Organization.objects.get_or_create(name=name)
        if created:
            audit(actor, "org.created", org)
    return org, created


ORG_NAME_MAX = Organization._meta.get_field("name").max_length or 100


def _org_slug(name: str) -> str:
    # The org's URL slug (nerveshub.web.access.org_slug, which falls back to
    # "org" for a name without one: check_org_name refuses such names).
    return slugify(name)


def check_org_name(name: str, *, org: Organization | None = None) -> str:
    """The name as stored (white space collapsed), or ValidationError on
    `name`: empty, too long, no letter or digit to make its address from, or
    another organization's name or address."""
    name = " ".join(str(name).split())
    problem = None
    if not name:
        problem = "An organization needs a name."
    elif len(name) > ORG_NAME_MAX:
        problem = f"At most {ORG_NAME_MAX} characters."
    elif not _org_slug(name):
        problem = "The name needs a letter or digit: the organization's address (/org/…/) is made from it."
    else:
        others = Organization.objects.all() if org is None else Organization.objects.exclude(pk=org.pk)
        slug = _org_slug(name)
        for other in others.values_list("name", flat=True):
            if other.lower() == name.lower():
                problem = "Another organization has this name."
                break
            if _org_slug(other) == slug:
                problem = f"Another organization's address is /org/{slug}/ already: choose a different name."
                break
    if problem:
        raise ValidationError({"name": [problem]}, code="invalid")
    return name


def create_organization(actor: User, name: str) -> Organization:
    """A new organization, made by a hub operator (superuser), who becomes
    its admin. ValidationError on `name` (check_org_name)."""
    if not (actor.is_active and actor.is_superuser):
        raise PermissionDenied("Only hub operators create organizations.")
    name = check_org_name(name)
    try:
        with transaction.atomic():
            org = Organization.objects.create(name=name)
            audit(actor, "org.created", org, details={"name": name, "slug": _org_slug(name)})
            set_membership(actor, org, actor, Role.ADMIN)
    except IntegrityError:  # the same name, created meanwhile
        raise ValidationError({"name": ["Another organization has this name."]}, code="invalid") from None
    return org


def rename_organization(actor: User, org: Organization, name: str) -> Organization:
    """Give the organization a new name; its admins only. The slug in its
    page addresses is made from the name, so it changes too: the old
    addresses answer 404 from then on, and the audit event records both."""
    if not has_role(actor, org, Role.ADMIN) or not actor.is_active:
        raise PermissionDenied("Renaming the organization needs the Admin role.")
    name = check_org_name(name, org=org)
    previous = org.name
    if name == previous:
        return org
    try:
        with transaction.atomic():
            # Compare-and-set on the name this form was filled in against.
            if not Organization.objects.filter(pk=org.pk, name=previous).update(name=name):
                raise ValidationError(
                    {"name": ["The organization was renamed meanwhile: reload the page."]}, code="stale"
                )
            org.name = name
            audit(
                actor,
                "org.renamed",
                org,
                details={
                    "from": previous,
                    "to": name,
                    "old_slug": _org_slug(previous),
                    "new_slug": _org_slug(name),
                    "old_addresses": "answer 404",
                },
            )
    except IntegrityError:  # the same name, taken meanwhile
        org.name = previous
        raise ValidationError({"name": ["Another organization has this name."]}, code="invalid") from None
    return org


def set_membership(actor: Actor, org: Organization, user: User, role: str) -> Membership:
    role = Role(role)
    with transaction.atomic():
        membership, created = Membership.objects.get_or_create(org=org, user=user, defaults={"role": role})
        if not created and membership.role != role:
            previous = membership.role
            membership.role = role
            membership.save(update_fields=["role"])
            audit(actor, "member.role_changed", membership, details={"from": previous, "to": role})
        elif created:
            audit(actor, "member.added", membership, details={"role": role})
    return membership


class MemberChangeRefused(Exception):
    """A member change the organization does not allow; the message says why."""


def _other_admins(membership: Membership) -> bool:
    return Membership.objects.filter(org_id=membership.org_id, role=Role.ADMIN).exclude(pk=membership.pk).exists()


def add_member(actor: Actor, org: Organization, user: User, role: str) -> Membership:
    """Make an existing user a member with `role`. Raises MemberChangeRefused
    when they are a member already (a role change is change_member_role)."""
    with transaction.atomic():
        if Membership.objects.filter(org=org, user=user).exists():
            raise MemberChangeRefused(f"{user.get_username()} is already a member of {org.name}.")
        return set_membership(actor, org, user, role)


def change_member_role(actor: Actor, membership: Membership, role: str) -> Membership:
    """Give a member another role. Raises MemberChangeRefused when that would
    leave the organization without an admin."""
    role = Role(role)
    with transaction.atomic():
        locked = Membership.objects.select_for_update().select_related("org", "user").get(pk=membership.pk)
        if locked.role == Role.ADMIN and role != Role.ADMIN and not _other_admins(locked):
            raise MemberChangeRefused("The organization needs at least one admin.")
        return set_membership(actor, locked.org, locked.user, role)


def remove_member(actor: Actor, membership: Membership) -> bool:
    """Take a member out of the organization. Returns False when they had left
    already. Raises MemberChangeRefused for the last admin."""
    with transaction.atomic():
        locked = Membership.objects.select_for_update().filter(pk=membership.pk).first()
        if locked is None:
            return False
        if locked.role == Role.ADMIN and not _other_admins(locked):
            raise MemberChangeRefused("The organization needs at least one admin.")
        audit(
            actor,
            "member.removed",
            locked,
            org=locked.org_id,
            details={"user": str(membership.user), "role": locked.role},
        )
        locked.delete()
    return True


def role_in(user: AbstractBaseUser | AnonymousUser, org: Organization | int) -> str | None:
    """The user's role in org, or None for an outsider. Superusers act as admin."""
    if not user.is_authenticated:
        return None
    if getattr(user, "is_superuser", False):
        return Role.ADMIN
    org_id = org.pk if isinstance(org, Organization) else org
    return Membership.objects.filter(org_id=org_id, user_id=user.pk).values_list("role", flat=True).first()


def has_role(user: AbstractBaseUser | AnonymousUser, org: Organization | int, role: str) -> bool:

    current = role_in(user, org)
    return current is not None and ROLE_RANK[Role(current)] >= ROLE_RANK[Role(role)]


def orgs_for(user: AbstractBaseUser | AnonymousUser, role: str = Role.VIEW) -> models.QuerySet[Organization]:
    """Organizations in which the user has at least `role` (all of them for superusers)."""
    if not user.is_authenticated:
        return Organization.objects.none()
    if getattr(user, "is_superuser", False):
        return Organization.objects.all()
    org_ids = Membership.objects.filter(user_id=user.pk).at_least(role).values("org_id")
    return Organization.objects.filter(pk__in=org_ids)


# --- Products -------------------------------------------------------------------


def get_or_create_product(actor: Actor, org: Organization, name: str) -> tuple[Product, bool]:
    with transaction.atomic():
        product, created = Product.objects.get_or_create(org=org, name=name, defaults={"extensions": ["health"]})
        if created:
            audit(actor, "product.created", product)
    return product, created


# The one way a product is created, changed or deleted: the admin and the API
# are adapters over these and map ValidationError (field -> messages) onto their
# own form errors or 422.


class ProductInUse(Exception):
    """The product still has devices or firmware, which keep it."""


def product_errors(extensions: object) -> dict[str, list[str]]:
    """What is wrong with the product's extensions, by field (empty: nothing).
    The admin's form runs it on its cleaned data; save_product runs it too."""
    if not isinstance(extensions, list) or not all(isinstance(name, str) for name in extensions):
        return {"extensions": ["Extensions are a list of names."]}
    unknown = set(extensions) - set(Product.KNOWN_EXTENSIONS)
    if unknown:
        return {"extensions": [f"unknown extensions: {', '.join(sorted(unknown))}"]}
    return {}


def builtin_key_errors(org: Organization | None, keys: Iterable[SigningKey]) -> dict[str, list[str]]:
    """A product's built-in keys must be signing keys of its organization."""
    foreign = [key.name for key in keys if org is None or key.org_id != org.pk]
    if foreign:
        return {"builtin_keys": [f"Not a signing key of this organization: {', '.join(sorted(foreign))}."]}
    return {}


def save_product(
    actor: Actor,
    product: Product,
    fields: Iterable[str],
    *,
    via: str,
    builtin_keys: Sequence[SigningKey] | None = None,
) -> Product:
    """Create (unsaved instance) or change a product whose `fields` the caller
    set: check, save and audit it in one transaction. Raises ValidationError
    and writes nothing when it may not be saved.

    Changed extensions (docs/device-protocol.md §8) reach the product's
    connected devices on commit, without waiting for their next reconnect:
    their sockets attach what became allowed and detach what no longer is
    (devices.publish.broadcast_extensions)."""
    product.extensions = list(dict.fromkeys(product.extensions or [])) if isinstance(product.extensions, list) else []
    errors = {**product_errors(product.extensions), **health.threshold_errors(product.health_thresholds)}
    if builtin_keys is not None:
        errors.update(builtin_key_errors(product.org, builtin_keys))
    refuse_unless_valid(product, errors)
    with transaction.atomic():
        previous = None
        if not product._state.adding and "extensions" in set(fields):
            previous = Product.objects.select_for_update().values_list("extensions", flat=True).get(pk=product.pk)
        save_audited(actor, product, [*fields, *(["builtin_keys"] if builtin_keys is not None else [])], via=via)
        if builtin_keys is not None:
            # Trust preflight reads them (deployments/preflight.py).
            product.builtin_keys.set(builtin_keys)
        if previous is not None and list(previous or []) != product.extensions:
            online = Device.objects.filter(
                product_id=product.pk, deleted_at__isnull=True, connection_status=ConnectionStatus.CONNECTED
            ).values_list("pk", flat=True)
            publish.broadcast_extensions(list(online), product.extensions)
    return product


def delete_product(actor: Actor, product: Product, *, via: str) -> None:
    """Delete the product and audit it; ProductInUse, saying what keeps it,
    while devices or firmware do (deleted devices too: their rows and history
    keep it)."""
    try:
        with transaction.atomic():
            audit(actor, "product.deleted", product, details={"via": via})
            product.delete()
    except models.ProtectedError as exc:
        raise ProductInUse(_in_use_reason(product, exc.protected_objects)) from None


def _in_use_reason(product: Product, keeping: Iterable[models.Model]) -> str:
    counts = Counter(str(row._meta.verbose_name_plural) for row in keeping)
    what = " and ".join(f"{count} {name}" for name, count in sorted(counts.items())) or "devices or firmware"
    return f"{product.name} still has {what}: delete them or move the devices first."


# --- API tokens -------------------------------------------------------------------

API_TOKEN_PREFIX = "nhu_"


@dataclass(frozen=True)
class IssuedToken:
    token: APIToken
    clear: str  # shown once, never stored


def _hash_token(clear: str) -> str:
    return hashlib.sha256(clear.encode()).hexdigest()


def create_api_token(actor: Actor, user: User, note: str = "") -> IssuedToken:
    clear = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = APIToken.objects.create(user=user, note=note, prefix=clear[:12], token_hash=_hash_token(clear))
        audit(actor, "api_token.created", token, details={"user": user.get_username(), "note": note})
    return IssuedToken(token=token, clear=clear)


def revoke_api_token(actor: Actor, token: APIToken) -> bool:
    with transaction.atomic():
        changed = APIToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        if changed:
            audit(actor, "api_token.revoked", token)
    return bool(changed)


def authenticate_api_token(clear: str) -> APIToken | None:
    if not clear.startswith(API_TOKEN_PREFIX):
        return None
    token = (
        APIToken.objects.select_related("user")
        .filter(token_hash=_hash_token(clear), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is not None:
        # Throttled: one write per token per minute at most.
        now = timezone.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            APIToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token
