from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html_join

from devices import scripts, services
from devices.fields import normalise_tags
from devices.models import (
    Device,
    DeviceSharedSecret,
    ProductSharedSecret,
    ScriptRun,
    SupportScript,
    validate_tags,
)
from nerveshub.admin_base import OrgScopedAdmin, org_ids_with_role, register_org_path
from nerveshub.lib.params import parse_int
from nerveshub.tenancy.models import Role

register_org_path(Device, "org")
register_org_path(SupportScript, "org")


class DeletedFilter(admin.SimpleListFilter):
    """Soft-deleted devices are hidden unless asked for."""

    title = "deleted"
    parameter_name = "deleted"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("no", "Active"), ("yes", "Deleted"), ("all", "All")]

    def choices(self, changelist: Any) -> Any:
        value = self.value() or "no"
        for lookup, title in self.lookup_choices:
            yield {
                "selected": value == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value() or "no"
        if value == "yes":
            return queryset.filter(deleted_at__isnull=False)
        if value == "all":
            return queryset
        return queryset.filter(deleted_at__isnull=True)


class PenaltyBoxFilter(admin.SimpleListFilter):
    title = "penalty box"
    parameter_name = "penalty"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "In penalty box"), ("no", "Not in penalty box")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(penalty_box_until__gt=timezone.now())
        if self.value() == "no":
            return queryset.exclude(penalty_box_until__gt=timezone.now())
        return queryset


class TagsForm(forms.Form):
    tags = forms.CharField(help_text="Comma-separated, no spaces inside a tag.")

    def clean_tags(self) -> list[str]:
        tags = normalise_tags(self.cleaned_data["tags"])
        if not tags:
            raise ValidationError("Give at least one tag.")
        validate_tags(tags)
        return tags


_REPORTED_FIRMWARE = (
    "firmware_uuid",
    "firmware_product",
    "firmware_version",
    "firmware_platform",
    "firmware_architecture",
    "firmware_author",
    "firmware_vcs_identifier",
    "firmware_misc",
    "fwup_version",
    "device_api_version",
    "firmware_validation",
    "firmware_auto_revert_detected",
)
_CONNECTION = (
    "connection_status",
    "connected_at",
    "last_seen_at",
    "disconnected_at",
    "first_seen_at",
    "last_polled_at",
    "polling_until",
    "network_interface",
    "console_available",
    "console_version",
)
_HEALTH_AND_LOCATION = ("health", "health_reported_at", "location", "location_updated_at")
_LIFECYCLE = ("penalty_box_until", "created_at", "updated_at", "deleted_at")


@admin.register(Device)
class DeviceAdmin(OrgScopedAdmin[Device]):
    list_display = [
        "identifier",
        "product",
        "org",
        "firmware_version",
        "presence",
        "last_seen_at",
        "tag_list",
        "updates_enabled",
        "penalty_box_until",
        "deployment",
    ]
    list_select_related = ["product", "org", "deployment", "hub_lease"]
    list_filter = [
        DeletedFilter,
        "connection_status",
        "updates_enabled",
        PenaltyBoxFilter,
        "firmware_validation",
        ("product", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["^identifier", "=firmware_version", "=firmware_uuid"]
    raw_id_fields = ["deployment"]
    list_per_page = 100
    show_full_result_count = False
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "org",
                    "product",
                    "identifier",
                    "description",
                    "tags",
                    "updates_enabled",
                    "deployment",
                    "connecting_code",
                ]
            },
        ),
        (
            "Firmware (as reported)",
            {"fields": _REPORTED_FIRMWARE},
        ),
        (
            "Connection",
            {"fields": _CONNECTION},
        ),
        ("Health and location", {"fields": _HEALTH_AND_LOCATION}),
        ("Lifecycle", {"fields": _LIFECYCLE}),
    ]
    # What the device reports or the hub records: never typed in by hand.
    readonly_fields = [*_REPORTED_FIRMWARE, *_CONNECTION, *_HEALTH_AND_LOCATION, *_LIFECYCLE]
    actions = [
        "add_tags",
        "remove_tags",
        "enable_updates",
        "disable_updates",
        "clear_penalty_box",
        "issue_device_secret",
        "run_script",
        "soft_delete",
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Device | None = None) -> list[str]:
        # The org and identifier of an existing device never change: certificates
        # and shared secrets are bound to them.
        extra = ["org", "identifier"] if obj is not None else []
        return [*self.readonly_fields, *extra]

    @admin.display(description="connection status", ordering="connection_status")
    def presence(self, obj: Device) -> str:
        # What the row says, unless its hub process lost its lease (models.online_q).
        return obj.get_presence_display()

    @admin.display(description="tags")
    def tag_list(self, obj: Device) -> str:
        return format_html_join(" ", '<span class="nh-tag">{}</span>', ((t,) for t in obj.tags)) or "—"

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        # Devices are soft-deleted so their identifier stays reserved.
        actions.pop("delete_selected", None)
        return actions

    def has_delete_permission(self, request: HttpRequest, obj: Device | None = None) -> bool:
        return False

    def has_manage_permission(self, request: HttpRequest) -> bool:
        return self._allowed(request, Role.MANAGE, None)

    def _manageable(self, request: HttpRequest, queryset: QuerySet[Device]) -> QuerySet[Device]:
        # Actions act only on rows the user may change, whatever ids were posted.
        if request.user.is_superuser:
            return queryset
        return queryset.filter(org_id__in=org_ids_with_role(request, Role.MANAGE))

    def _tags_action(self, request: HttpRequest, queryset: QuerySet[Device], adding: bool) -> HttpResponse | None:
        queryset = self._manageable(request, queryset)
        if "apply" in request.POST:
            form = TagsForm(request.POST)
            if form.is_valid():
                tags = form.cleaned_data["tags"]
                if adding:
                    count = services.add_tags(request.user, queryset, tags)
                else:
                    count = services.remove_tags(request.user, queryset, tags)
                self.message_user(request, f"Changed the tags of {count} device(s).")
                return None
        else:
            form = TagsForm()
        context = {
            **self.admin_site.each_context(request),
            "title": "Add tags" if adding else "Remove tags",
            "form": form,
            "devices": queryset[:50],
            "count": queryset.count(),
            "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "action": "add_tags" if adding else "remove_tags",
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/devices/device/tags_action.html", context)

    @admin.action(description="Add tags…", permissions=["manage"])
    def add_tags(self, request: HttpRequest, queryset: QuerySet[Device]) -> HttpResponse | None:
        return self._tags_action(request, queryset, adding=True)

    @admin.action(description="Remove tags…", permissions=["manage"])
    def remove_tags(self, request: HttpRequest, queryset: QuerySet[Device]) -> HttpResponse | None:
        return self._tags_action(request, queryset, adding=False)

    @admin.action(description="Enable updates", permissions=["manage"])
    def enable_updates(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        count = services.set_updates_enabled(request.user, self._manageable(request, queryset), True)
        self.message_user(request, f"Enabled updates on {count} device(s).")

    @admin.action(description="Disable updates", permissions=["manage"])
    def disable_updates(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        count = services.set_updates_enabled(request.user, self._manageable(request, queryset), False)
        self.message_user(request, f"Disabled updates on {count} device(s).")

    @admin.action(description="Clear penalty box", permissions=["manage"])
    def clear_penalty_box(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        count = services.clear_penalty_box(request.user, self._manageable(request, queryset))
        self.message_user(request, f"Cleared the penalty box of {count} device(s).")

    @admin.action(description="Issue a device shared secret (shown once)", permissions=["manage"])
    def issue_device_secret(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        for device in self._manageable(request, queryset).filter(deleted_at__isnull=True)[:20]:
            _, issued = services.create_device_secret(request.user, device)
            self.message_user(
                request,
                f"{device}: key {issued.key}  secret {issued.secret}  — copy the secret now, it is not shown again.",
                messages.WARNING,
            )

    @admin.action(description="Run a support script…", permissions=["manage"])
    def run_script(self, request: HttpRequest, queryset: QuerySet[Device]) -> HttpResponse | None:
        queryset = self._manageable(request, queryset).filter(deleted_at__isnull=True)
        product_ids = set(queryset.values_list("product_id", flat=True)[:1000])
        choices = SupportScript.objects.filter(product_id__in=product_ids).select_related("product")
        if "apply" in request.POST:
            script_id = parse_int(request.POST.get("script"))
            script = choices.filter(pk=script_id).first() if script_id is not None else None
            if script is None:
                self.message_user(request, "Choose a script of the devices' product.", messages.ERROR)
                return None
            started = 0
            for device in queryset.filter(product_id=script.product_id)[:100]:
                try:
                    scripts.run_script(request.user, device, script)
                    started += 1
                except scripts.ScriptRefused as exc:
                    self.message_user(request, exc.reason, messages.WARNING)
            self.message_user(
                request, f"Sent {script.name!r} to {started} device(s); answers appear under Script runs."
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Run a support script",
            "scripts": choices,
            "devices": queryset[:50],
            "count": queryset.count(),
            "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "action": "run_script",
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/devices/device/script_action.html", context)

    @admin.action(description="Delete (identifier stays reserved)", permissions=["manage"])
    def soft_delete(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        count = services.soft_delete(request.user, self._manageable(request, queryset))
        self.message_user(request, f"Deleted {count} device(s).")


class SharedSecretAdminBase(OrgScopedAdmin[Any]):
    list_display = ["key", "owner", "created_at", "last_used_at", "deactivated_at"]
    list_filter = ["deactivated_at"]
    search_fields = ["=key"]
    exclude = ["secret_sealed"]
    readonly_fields = ["key", "created_at", "last_used_at", "deactivated_at"]
    actions = ["deactivate"]
    # Keys are not shown to the view role (docs/security.md), here as in the audit log.
    view_role = Role.MANAGE
    change_role = Role.ADMIN

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Keys are issued by the "issue … shared secret" actions, which show the
        # secret once; a form cannot invent one.
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_deactivate_permission(self, request: HttpRequest) -> bool:
        return self._allowed(request, Role.ADMIN, None)

    @admin.action(description="Deactivate selected keys", permissions=["deactivate"])
    def deactivate(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        if not request.user.is_superuser:
            queryset = queryset.filter(**{f"{self.org_path}__in": org_ids_with_role(request, Role.ADMIN)})
        count = services.deactivate_secrets(request.user, queryset)
        self.message_user(request, f"Deactivated {count} key(s).")


@admin.register(ProductSharedSecret)
class ProductSharedSecretAdmin(SharedSecretAdminBase):
    org_path = "product__org"
    list_select_related = ["product", "product__org"]

    @admin.display(description="product")
    def owner(self, obj: ProductSharedSecret) -> str:
        return str(obj.product)


@admin.register(DeviceSharedSecret)
class DeviceSharedSecretAdmin(SharedSecretAdminBase):
    org_path = "device__org"
    list_select_related = ["device"]

    @admin.display(description="device")
    def owner(self, obj: DeviceSharedSecret) -> str:
        return str(obj.device)


@admin.register(SupportScript)
class SupportScriptAdmin(OrgScopedAdmin[SupportScript]):
    list_display = ["name", "product", "timeout_ms", "updated_at"]
    list_select_related = ["product"]
    list_filter = ["product__org"]
    search_fields = ["name", "product__name"]
    readonly_fields = ["created_at", "updated_at"]

    def save_model(self, request: HttpRequest, obj: SupportScript, form: Any, change: bool) -> None:
        # The script lives where its product lives.
        obj.org_id = obj.product.org_id
        super().save_model(request, obj, form, change)

    def get_exclude(self, request: HttpRequest, obj: SupportScript | None = None) -> Any:
        return ["org"]


@admin.register(ScriptRun)
class ScriptRunAdmin(OrgScopedAdmin[ScriptRun]):
    """What each run sent and what the device answered; runs are made by the
    device action, never by hand."""

    list_display = ["created_at", "device", "script", "status", "short_return", "requested_by", "finished_at"]
    list_select_related = ["device", "script", "requested_by"]
    list_filter = ["status"]
    search_fields = ["=device__identifier", "=ref"]
    raw_id_fields = ["device", "script"]
    show_full_result_count = False
    readonly_fields = [
        "org",
        "device",
        "script",
        "ref",
        "text",
        "timeout_ms",
        "status",
        "output",
        "return_value",
        "reason",
        "requested_by",
        "created_at",
        "finished_at",
    ]

    @admin.display(description="returned")
    def short_return(self, obj: ScriptRun) -> str:
        return obj.return_value[:80]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ScriptRun | None = None) -> bool:
        return False
