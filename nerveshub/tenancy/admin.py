from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.db.models import (
    Case,
    CharField,
    Count,
    IntegerField,
    OuterRef,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.http import HttpRequest

from devices import health
from devices.models import Device
from devices.services import create_product_secret
from nerveshub.admin_base import CappedCountPaginator, OrgScopedAdmin, org_ids_with_role
from nerveshub.tenancy import redaction, services
from nerveshub.tenancy.models import APIToken, AuditEvent, Membership, Organization, Product, Role


def _count_devices(outer: str) -> Coalesce:
    # A correlated COUNT per row keeps the changelist at one query however many
    # devices there are (a JOIN + GROUP BY would scan them all).
    counts = (
        Device.objects.filter(**{outer: OuterRef("pk")}, deleted_at__isnull=True)
        .order_by()
        .values(outer)
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(counts, output_field=IntegerField()), 0)


@admin.register(Organization)
class OrganizationAdmin(OrgScopedAdmin[Organization]):
    org_path = "pk"
    operator_only = True
    list_display = ["name", "device_count", "created_at"]
    search_fields = ["name"]
    readonly_fields = ["created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Organization]:
        return super().get_queryset(request).annotate(device_count=_count_devices("org"))

    @admin.display(description="devices", ordering="device_count")
    def device_count(self, obj: Organization) -> int:
        return int(obj.device_count)  # type: ignore[attr-defined]


@admin.register(Membership)
class MembershipAdmin(OrgScopedAdmin[Membership]):
    change_role = Role.ADMIN
    delete_role = Role.ADMIN
    list_display = ["user", "org", "role", "created_at"]
    list_filter = ["role"]
    list_select_related = ["user", "org"]
    search_fields = ["user__username", "user__email", "org__name"]
    raw_id_fields = ["user"]
    readonly_fields = ["created_at"]


class ProductForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = Product
        fields = [
            "org",
            "name",
            "description",
            "extensions",
            "poll_interval_seconds",
            "builtin_keys",
            "health_thresholds",
        ]
        help_texts = {
            "health_thresholds": 'Per metric, the warning and the unhealthy limit, e.g. {"cpu_temp": [70, 85]}; '
            "a metric left out keeps the hub's default (HEALTH_THRESHOLDS)."
        }

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        if "extensions" in cleaned:
            for name, messages in services.product_errors(cleaned["extensions"]).items():
                self.add_error(name, messages)
        if "health_thresholds" in cleaned:
            if cleaned["health_thresholds"] is None:  # the field left empty: the hub's defaults
                cleaned["health_thresholds"] = {}
            for name, messages in health.threshold_errors(cleaned["health_thresholds"]).items():
                self.add_error(name, messages)
        org = cleaned.get("org") or (self.instance.org if self.instance.org_id else None)
        for name, messages in services.builtin_key_errors(org, cleaned.get("builtin_keys") or []).items():
            self.add_error(name, messages)
        return cleaned


@admin.register(Product)
class ProductAdmin(OrgScopedAdmin[Product]):
    form = ProductForm
    saved_by_service = True
    deleted_by_service = True
    add_role = Role.MANAGE
    change_role = Role.MANAGE
    delete_role = Role.ADMIN
    list_display = ["name", "org", "device_count", "extensions", "created_at"]
    list_select_related = ["org"]
    list_filter = ["org"]
    search_fields = ["name", "org__name"]
    readonly_fields = ["created_at"]
    actions = ["issue_shared_secret"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Product]:
        return super().get_queryset(request).annotate(device_count=_count_devices("product"))

    @admin.display(description="devices", ordering="device_count")
    def device_count(self, obj: Product) -> int:
        return int(obj.device_count)  # type: ignore[attr-defined]

    def save_model(self, request: HttpRequest, obj: Product, form: Any, change: bool) -> None:
        self.check_save_allowed(request, obj)
        # The form ran the same rule (ProductForm.clean): the service refuses nothing here.
        services.save_product(request.user, obj, form.changed_data, via="admin")

    def delete_model(self, request: HttpRequest, obj: Product) -> None:
        services.delete_product(request.user, obj, via="admin")

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Product]) -> None:
        for product in queryset:
            services.delete_product(request.user, product, via="admin")

    def has_issue_shared_secret_permission(self, request: HttpRequest) -> bool:
        return self._allowed(request, Role.ADMIN, None)

    @admin.action(description="Issue a product shared secret (shown once)", permissions=["issue_shared_secret"])
    def issue_shared_secret(self, request: HttpRequest, queryset: QuerySet[Product]) -> None:
        for product in queryset:
            if not self._allowed(request, Role.ADMIN, product):
                self.message_user(request, f"Not allowed for {product}.", messages.ERROR)
                continue
            _, issued = create_product_secret(request.user, product)
            self.message_user(
                request,
                f"{product}: key {issued.key}  secret {issued.secret}  — copy the secret now, it is not shown again.",
                messages.WARNING,
            )


class APITokenForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = APIToken
        fields = ["user", "note"]


@admin.register(APIToken)
class APITokenAdmin(admin.ModelAdmin[APIToken]):
    """Operators see every token; other staff see and create only their own."""

    form = APITokenForm
    list_display = ["prefix", "user", "note", "created_at", "last_used_at", "revoked_at"]
    list_select_related = ["user"]
    list_filter = ["revoked_at"]
    search_fields = ["prefix", "note", "user__username"]
    raw_id_fields = ["user"]
    actions = ["revoke"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[APIToken]:
        queryset = super().get_queryset(request)
        return queryset if request.user.is_superuser else queryset.filter(user__username=request.user.get_username())

    def _own(self, request: HttpRequest, obj: APIToken | None) -> bool:
        if not (request.user.is_active and request.user.is_staff):
            return False
        return request.user.is_superuser or obj is None or obj.user_id == request.user.pk

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._own(request, None)

    def has_view_permission(self, request: HttpRequest, obj: APIToken | None = None) -> bool:
        return self._own(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._own(request, None)

    def has_change_permission(self, request: HttpRequest, obj: APIToken | None = None) -> bool:
        return False  # tokens are created and revoked, never edited

    def has_delete_permission(self, request: HttpRequest, obj: APIToken | None = None) -> bool:
        return False

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return self._own(request, None)

    def get_fields(self, request: HttpRequest, obj: APIToken | None = None) -> Any:
        return ["user", "note"] if request.user.is_superuser else ["note"]

    def save_model(self, request: HttpRequest, obj: APIToken, form: Any, change: bool) -> None:
        owner = form.cleaned_data.get("user") if request.user.is_superuser else None
        user = owner or User.objects.get(username=request.user.get_username())
        issued = services.create_api_token(request.user, user, obj.note)
        obj.pk = issued.token.pk
        obj.refresh_from_db()
        self.message_user(request, f"Token {issued.clear} — copy it now, it is not shown again.", messages.WARNING)

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        return None  # create_api_token wrote the audit event

    @admin.action(description="Revoke selected tokens", permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[APIToken]) -> None:
        count = sum(services.revoke_api_token(request.user, token) for token in queryset)
        self.message_user(request, f"Revoked {count} token(s).")


@admin.register(AuditEvent)
class AuditEventAdmin(OrgScopedAdmin[AuditEvent]):
    """Read-only. The table grows without bound, so the changelist caps its COUNT(*)."""

    list_display = ["created_at", "org", "actor", "action", "subject_type", "shown_subject"]
    list_select_related = ["org"]
    # No list_filter: each one costs a SELECT DISTINCT over the whole table.
    search_fields = ["=action", "=actor", "subject", "=subject_id"]
    paginator = CappedCountPaginator
    show_full_result_count = False
    # subject and details through redaction (nerveshub.tenancy.redaction): a
    # member with the view role does not see credentials.
    readonly_fields = [
        *(f.name for f in AuditEvent._meta.fields if f.name not in ("subject", "details")),
        "shown_subject",
        "shown_details",
    ]
    exclude = ["subject", "details"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditEvent]:
        # The reader's role in each row's organization, decided with the row
        # (the display methods below get only the row, not the request).
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset.annotate(reader_role=Value(Role.ADMIN.value))
        admin_orgs = org_ids_with_role(request, Role.ADMIN)
        manage_orgs = org_ids_with_role(request, Role.MANAGE)
        return queryset.annotate(
            reader_role=Case(
                When(org_id__in=admin_orgs, then=Value(Role.ADMIN.value)),
                When(org_id__in=manage_orgs, then=Value(Role.MANAGE.value)),
                default=Value(Role.VIEW.value),
                output_field=CharField(),
            )
        )

    def _shown(self, event: AuditEvent) -> redaction.EventView:
        return redaction.visible(event, getattr(event, "reader_role", Role.VIEW))

    @admin.display(description="subject")
    def shown_subject(self, obj: AuditEvent) -> str:
        return self._shown(obj).subject

    @admin.display(description="details")
    def shown_details(self, obj: AuditEvent) -> str:
        return json.dumps(self._shown(obj).details, ensure_ascii=False, sort_keys=True)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[AuditEvent], search_term: str) -> Any:
        # Searching the subject would tell a viewer, a character at a time,
        # whether a key starts with what they typed.
        queryset, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        if search_term and not request.user.is_superuser:
            below = set(org_ids_with_role(request, Role.VIEW)) - set(org_ids_with_role(request, redaction.SEES_SECRETS))
            queryset = queryset.exclude(subject_type__in=redaction.SECRET_SUBJECT_TYPES, org_id__in=below)
        return queryset, may_have_duplicates

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False
