"""Webhook endpoints and their delivery log: an org's admins only, since an
endpoint's secret and its payloads describe the whole fleet."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest

from nerveshub.admin_base import CappedCountPaginator, OrgScopedAdmin, org_ids_with_role, register_org_path
from nerveshub.tenancy.models import Role
from webhooks import services
from webhooks.models import EventType, WebhookDelivery, WebhookEndpoint

register_org_path(WebhookEndpoint, "org")


class EndpointForm(forms.ModelForm):  # type: ignore[type-arg]
    url = forms.URLField(max_length=500, assume_scheme="https", help_text="HTTPS address the hub POSTs events to.")
    event_types = forms.MultipleChoiceField(
        choices=EventType.choices, widget=forms.CheckboxSelectMultiple, required=False
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["org", "url", "description", "event_types", "is_active"]

    def clean_url(self) -> str:
        return services.check_url(self.cleaned_data["url"])

    def clean_event_types(self) -> list[str]:
        return services.check_event_types(list(self.cleaned_data["event_types"]))


def _admin_rows(request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
    # Actions act only on rows of orgs the user administers, whatever ids were posted.
    if request.user.is_superuser:
        return queryset
    return queryset.filter(org_id__in=org_ids_with_role(request, Role.ADMIN))


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(OrgScopedAdmin[WebhookEndpoint]):
    view_role = Role.ADMIN
    change_role = Role.ADMIN
    delete_role = Role.ADMIN
    form = EndpointForm
    list_display = ["url", "org", "events", "is_active", "created_at"]
    list_select_related = ["org"]
    search_fields = ["url", "description"]
    readonly_fields = ["signing_secret", "created_at"]
    actions = ["rotate_secret"]

    @admin.display(description="events")
    def events(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.event_types or []) or "—"

    @admin.display(description="signing secret")
    def signing_secret(self, obj: WebhookEndpoint) -> str:
        # Only the org's admins reach this page (view_role); the receiver needs it.
        return obj.secret if obj.pk else "generated when the endpoint is saved"

    def has_admin_permission(self, request: HttpRequest) -> bool:
        return self._allowed(request, Role.ADMIN, None)

    @admin.action(description="Rotate the signing secret", permissions=["admin"])
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        count = 0
        for endpoint in _admin_rows(request, queryset):
            services.rotate_secret(request.user, endpoint)
            count += 1
        self.message_user(request, f"Rotated the secret of {count} endpoint(s); update the receivers.")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(OrgScopedAdmin[WebhookDelivery]):
    """The delivery log: read-only, replayable. Capped COUNT(*) like the audit log."""

    view_role = Role.ADMIN
    change_role = Role.ADMIN
    delete_role = Role.ADMIN
    list_display = [
        "created_at",
        "event_type",
        "endpoint",
        "status",
        "attempts",
        "last_status",
        "next_attempt_at",
        "delivered_at",
    ]
    list_select_related = ["endpoint"]
    search_fields = ["=event_id", "=event_type"]
    paginator = CappedCountPaginator
    show_full_result_count = False
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    actions = ["replay"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: WebhookDelivery | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: WebhookDelivery | None = None) -> bool:
        return False

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return self._allowed(request, Role.ADMIN, None)

    @admin.action(description="Send the selected events again", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        count = 0
        for delivery in _admin_rows(request, queryset):
            try:
                services.replay_delivery(request.user, delivery)
            except PermissionDenied:
                continue
            count += 1
        self.message_user(request, f"Queued {count} replay(s).", messages.SUCCESS)
