"""The base every ModelAdmin of the hub derives from.

Two things it adds to Django's admin:

* Tenancy. Superusers (the hub's operators) see everything. Any other staff
  user sees only rows of organizations they belong to, and what they may do
  follows their role there (view < manage < admin), not Django's model
  permissions: `view_role`, `change_role` and `delete_role` name the role each
  kind of access needs on a model. Foreign-key choices are cut down the same way,
  so a form cannot point at another tenant's product.
* Audit. Every add, change and delete made through a form writes an audit event;
  admin actions call services, which write their own. A model whose writes have
  a service (deployments, products) saves or deletes through it and sets
  `saved_by_service` / `deleted_by_service`, so each write is audited once, by
  the service.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import models
from django.db.models import QuerySet
from django.forms import ModelChoiceField
from django.http import HttpRequest
from django.utils.functional import cached_property

from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import ROLE_RANK, Membership, Organization, Product, Role

M = TypeVar("M", bound=models.Model)

# Models whose foreign keys point at tenant-owned rows: field model -> path to its org.
_ORG_PATHS: dict[type[models.Model], str] = {Organization: "pk", Product: "org"}


def register_org_path(model: type[models.Model], path: str) -> None:
    """Declare how to reach the org from `model`, so foreign keys to it are scoped."""
    _ORG_PATHS[model] = path


def _is_operator(request: HttpRequest) -> bool:
    return bool(request.user.is_active and request.user.is_superuser)


def _roles(request: HttpRequest) -> dict[int, str]:
    # One query per request, cached on the request object.
    cached: dict[int, str] | None = getattr(request, "_nerveshub_roles", None)
    if cached is None:
        cached = (
            dict(Membership.objects.filter(user_id=request.user.pk).values_list("org_id", "role"))
            if request.user.is_authenticated
            else {}
        )
        request._nerveshub_roles = cached  # type: ignore[attr-defined]
    return cached


def org_ids_with_role(request: HttpRequest, role: str) -> list[int]:
    need = ROLE_RANK[Role(role)]
    return [org_id for org_id, r in _roles(request).items() if ROLE_RANK[Role(r)] >= need]


def has_org_role(request: HttpRequest, org_id: int | None, role: str) -> bool:
    if _is_operator(request):
        return True
    return org_id is not None and org_id in org_ids_with_role(request, role)


class CappedCountPaginator(Paginator):  # type: ignore[type-arg]
    """COUNT(*) over an ever-growing log table gets slower every day. Count at
    most CAP rows (SELECT COUNT(*) FROM (… LIMIT CAP)); past that the changelist
    shows CAP and the newest rows first."""

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        return int(self.object_list.order_by()[: self.CAP].count())  # type: ignore[attr-defined]


class OrgScopedAdmin(admin.ModelAdmin[M], Generic[M]):
    org_path: str = "org"  # lookup path from this model to its Organization
    view_role: str = Role.VIEW
    change_role: str = Role.MANAGE
    add_role: str | None = None  # defaults to change_role
    delete_role: str = Role.MANAGE
    operator_only: bool = False  # e.g. organizations themselves
    # True where save_model calls the app's service, which audits the add or
    # change itself: the admin then records only Django's LogEntry for it.
    saved_by_service: bool = False
    # Likewise where delete_model / delete_queryset call the app's service.
    deleted_by_service: bool = False

    # --- tenancy -------------------------------------------------------------

    def obj_org_id(self, obj: models.Model) -> int | None:
        if self.org_path == "pk":
            return int(obj.pk)
        *hops, last = self.org_path.split("__")
        value: Any = obj
        for hop in hops:
            value = getattr(value, hop, None)
            if value is None:
                return None
        # The last hop reads the foreign key's id column: no query for it.
        org_id = getattr(value, f"{last}_id", None)
        return int(org_id) if org_id is not None else None

    def get_queryset(self, request: HttpRequest) -> QuerySet[M]:
        queryset = super().get_queryset(request)
        if _is_operator(request):
            return queryset
        org_ids = org_ids_with_role(request, self.view_role)
        lookup = "pk__in" if self.org_path == "pk" else f"{self.org_path}__in"
        return queryset.filter(**{lookup: org_ids})

    def _allowed(self, request: HttpRequest, role: str, obj: models.Model | None) -> bool:
        if not (request.user.is_active and request.user.is_staff):
            return False
        if _is_operator(request):
            return True
        if self.operator_only and role != self.view_role:
            return False
        if obj is None:
            return bool(org_ids_with_role(request, role))
        return has_org_role(request, self.obj_org_id(obj), role)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._allowed(request, self.view_role, None)

    def has_view_permission(self, request: HttpRequest, obj: M | None = None) -> bool:
        return self._allowed(request, self.view_role, obj)

    def has_change_permission(self, request: HttpRequest, obj: M | None = None) -> bool:
        return self._allowed(request, self.change_role, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._allowed(request, self.add_role or self.change_role, None)

    def has_delete_permission(self, request: HttpRequest, obj: M | None = None) -> bool:
        return self._allowed(request, self.delete_role, obj)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> ModelChoiceField | None:  # type: ignore[type-arg]
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        related = db_field.related_model
        if field is not None and not _is_operator(request) and related in _ORG_PATHS:
            path = _ORG_PATHS[related]
            # Offer only rows of orgs where the user may make changes.
            org_ids = org_ids_with_role(request, self.change_role)
            lookup = "pk__in" if path == "pk" else f"{path}__in"
            field.queryset = field.queryset.filter(**{lookup: org_ids})  # type: ignore[union-attr]
        return field

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        field = super().formfield_for_manytomany(db_field, request, **kwargs)
        related = db_field.related_model
        if field is not None and not _is_operator(request) and related in _ORG_PATHS:
            # As for foreign keys: only rows of orgs where the user may make changes.
            path = _ORG_PATHS[related]
            lookup = "pk__in" if path == "pk" else f"{path}__in"
            field.queryset = field.queryset.filter(**{lookup: org_ids_with_role(request, self.change_role)})  # type: ignore[union-attr]
        return field

    def check_save_allowed(self, request: HttpRequest, obj: M) -> None:
        # Re-check against the org the row ends up in: the form may have moved it.
        if not _is_operator(request) and not has_org_role(request, self.obj_org_id(obj), self.change_role):
            raise PermissionDenied

    def save_model(self, request: HttpRequest, obj: M, form: Any, change: bool) -> None:
        self.check_save_allowed(request, obj)
        super().save_model(request, obj, form, change)

    # --- audit ---------------------------------------------------------------

    def _audit(self, request: HttpRequest, action: str, obj: models.Model, details: dict[str, Any]) -> None:
        tenancy.audit(request.user, action, obj, org=self.obj_org_id(obj), details=details)

    def log_addition(self, request: HttpRequest, obj: M, message: Any) -> Any:
        if not self.saved_by_service:
            self._audit(request, f"{obj._meta.model_name}.created", obj, {"via": "admin"})
        return super().log_addition(request, obj, message)

    def log_change(self, request: HttpRequest, obj: M, message: Any) -> Any:
        changed: list[str] = []
        for entry in message if isinstance(message, list) else []:
            changed += entry.get("changed", {}).get("fields", [])
        if not self.saved_by_service:
            self._audit(request, f"{obj._meta.model_name}.changed", obj, {"via": "admin", "fields": changed})
        return super().log_change(request, obj, message)

    def log_deletions(self, request: HttpRequest, queryset: QuerySet[M]) -> Any:
        for obj in queryset if not self.deleted_by_service else []:
            self._audit(request, f"{obj._meta.model_name}.deleted", obj, {"via": "admin"})
        return super().log_deletions(request, queryset)
