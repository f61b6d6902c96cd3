"""Admin for signing keys and firmware. Every change goes through firmware.services:
the add view of firmware is an upload form, deletion and revalidation are services
that refuse with a reason the admin shows."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html

from firmware import services
from firmware.models import Firmware, FirmwareKind, FirmwareStatus, SigningKey
from nerveshub.admin_base import OrgScopedAdmin, register_org_path
from nerveshub.tenancy.models import Role

register_org_path(SigningKey, "org")
register_org_path(Firmware, "org")


@admin.register(SigningKey)
class SigningKeyAdmin(OrgScopedAdmin[SigningKey]):
    # Keys decide what devices will flash: only org admins add or remove them.
    change_role = Role.ADMIN
    delete_role = Role.ADMIN
    list_display = ["name", "org", "short_key", "firmware_count", "created_by", "created_at"]
    list_select_related = ["org", "created_by"]
    list_filter = ["org"]
    search_fields = ["name", "=key"]
    readonly_fields = ["created_by", "created_at"]
    fields = ["org", "name", "key", "created_by", "created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[SigningKey]:
        return super().get_queryset(request).annotate(firmware_total=Count("firmware"))

    @admin.display(description="key")
    def short_key(self, obj: SigningKey) -> str:
        return f"{obj.key[:12]}…"

    @admin.display(description="firmware signed", ordering="firmware_total")
    def firmware_count(self, obj: SigningKey) -> int:
        return int(getattr(obj, "firmware_total", 0))

    def save_model(self, request: HttpRequest, obj: SigningKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # Added as the org pages and the API add one: through the service, which audits it.
        self.check_save_allowed(request, obj)
        row = services.create_signing_key(request.user, obj.org, obj.name, obj.key)
        obj.pk = row.pk
        obj.refresh_from_db()

    def log_addition(self, request: HttpRequest, obj: SigningKey, message: Any) -> Any:
        # create_signing_key wrote the audit event; keep only Django's own LogEntry.
        return admin.ModelAdmin.log_addition(self, request, obj, message)

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> HttpResponse:
        key = self.get_object(request, object_id)
        if key is not None and self.has_delete_permission(request, key) and key.firmware.exists():
            # Django's page would list the protected firmware; say why instead.
            count = key.firmware.count()
            self.message_user(
                request,
                f"The key {key.name!r} cannot be deleted: it signed {count} firmware file(s) and is kept as "
                "evidence of who signed them. Delete that firmware first.",
                messages.ERROR,
            )
            return HttpResponseRedirect(reverse("admin:firmware_signingkey_change", args=[key.pk]))
        return super().delete_view(request, object_id, extra_context)

    def delete_model(self, request: HttpRequest, obj: SigningKey) -> None:
        services.delete_signing_key(request.user, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[SigningKey]) -> None:
        for key in queryset:
            try:
                services.delete_signing_key(request.user, key)
            except services.SigningKeyInUse as exc:
                self.message_user(request, exc.reason, messages.ERROR)

    def log_deletions(self, request: HttpRequest, queryset: QuerySet[SigningKey]) -> Any:
        # The service writes the audit event; keep only Django's own LogEntry.
        return admin.ModelAdmin.log_deletions(self, request, queryset)


class FirmwareUploadForm(forms.ModelForm):  # type: ignore[type-arg]
    file = forms.FileField(help_text="A .fw file made and signed by fwup.")
    kind = forms.ChoiceField(
        choices=FirmwareKind.choices,
        initial=FirmwareKind.FIRMWARE,
        required=False,
        help_text="An archive is handed to devices beside a deployment's firmware.",
    )

    class Meta:
        model = Firmware
        fields = ["product", "kind"]

    def clean_kind(self) -> str:
        return str(self.cleaned_data.get("kind") or FirmwareKind.FIRMWARE)

    def clean_file(self) -> Any:
        upload = self.cleaned_data["file"]
        if upload.size > settings.FIRMWARE_MAX_SIZE:
            raise forms.ValidationError(f"The file is larger than the {settings.FIRMWARE_MAX_SIZE:,}-byte limit.")
        if upload.size == 0:
            raise forms.ValidationError("The file is empty.")
        return upload


@admin.register(Firmware)
class FirmwareAdmin(OrgScopedAdmin[Firmware]):
    list_display = [
        "__str__",
        "product",
        "kind",
        "version",
        "short_uuid",
        "status",
        "size",
        "signing_key",
        "created_at",
    ]
    list_select_related = ["product__org", "signing_key__org"]
    list_filter = ["status", "kind", "product__org", "platform", "architecture"]
    search_fields = ["=uuid", "version", "original_filename", "product__name"]
    date_hierarchy = "created_at"
    actions = ["revalidate", "delete_selected"]
    fieldsets = [
        (None, {"fields": ["org", "product", "kind", "status", "rejected_reason", "original_filename", "uploaded_by"]}),
        ("Metadata", {"fields": ["uuid", "version", "platform", "architecture", "author", "description"]}),
        ("More metadata", {"fields": ["vcs_identifier", "misc"], "classes": ["collapse"]}),
        ("File", {"fields": ["size", "sha256", "part_count", "storage_name", "signing_key"]}),
        ("Delta updates", {"fields": ["delta_resources", "delta_fwup_version"]}),
        ("Times", {"fields": ["created_at", "validated_at"]}),
    ]
    readonly_fields = [
        "org",
        "product",
        "kind",
        "status",
        "rejected_reason",
        "original_filename",
        "uploaded_by",
        "uuid",
        "version",
        "platform",
        "architecture",
        "author",
        "description",
        "vcs_identifier",
        "misc",
        "size",
        "sha256",
        "part_count",
        "storage_name",
        "signing_key",
        "delta_resources",
        "delta_fwup_version",
        "created_at",
        "validated_at",
    ]

    @admin.display(description="uuid", ordering="uuid")
    def short_uuid(self, obj: Firmware) -> str:
        return (obj.uuid or "")[:8]

    @admin.display(description="1 MiB parts")
    def part_count(self, obj: Firmware) -> int:
        return len(obj.partial_sha256)

    # --- upload: the add view -------------------------------------------------

    def get_fieldsets(self, request: HttpRequest, obj: Firmware | None = None) -> Any:
        if obj is None:
            return [(None, {"fields": ["product", "kind", "file"]})]
        return super().get_fieldsets(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Firmware | None = None) -> Any:
        return [] if obj is None else self.readonly_fields

    def get_form(self, request: HttpRequest, obj: Firmware | None = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = FirmwareUploadForm
        return super().get_form(request, obj, change=change, **kwargs)

    def has_change_permission(self, request: HttpRequest, obj: Firmware | None = None) -> bool:
        # Every field is derived from the file; the change page is read-only.
        if obj is not None:
            return False
        return super().has_change_permission(request, obj)

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        try:
            return super().add_view(request, form_url, extra_context)
        except services.StorageUnavailable as exc:
            # The store refused the bytes (upload_firmware kept nothing): say so
            # on the form's page instead of a server error.
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        if change:
            return super().save_form(request, form, change)
        upload = form.cleaned_data["file"]
        return services.upload_firmware(
            request.user, form.cleaned_data["product"], upload, upload.name, kind=form.cleaned_data["kind"]
        )

    def save_model(self, request: HttpRequest, obj: Firmware, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        if change:
            super().save_related(request, form, formsets, change)

    def log_addition(self, request: HttpRequest, obj: Firmware, message: Any) -> Any:
        # upload_firmware wrote the audit event (firmware.uploaded).
        return admin.ModelAdmin.log_addition(self, request, obj, message)

    def response_add(self, request: HttpRequest, obj: Firmware, post_url_continue: str | None = None) -> HttpResponse:
        obj.refresh_from_db()
        if obj.status == FirmwareStatus.PENDING:
            self.message_user(request, "Uploaded; validation is queued.", messages.INFO)
        elif obj.status == FirmwareStatus.REJECTED:
            self.message_user(request, f"Uploaded but rejected: {obj.rejected_reason}", messages.ERROR)
        return HttpResponseRedirect(reverse("admin:firmware_firmware_change", args=[obj.pk]))

    # --- revalidate and delete through services ---------------------------------

    @admin.action(description="Validate pending files again", permissions=["change"])
    def revalidate(self, request: HttpRequest, queryset: QuerySet[Firmware]) -> None:
        queued = sum(services.revalidate_firmware(request.user, firmware) for firmware in queryset)
        skipped = queryset.count() - queued
        self.message_user(request, f"Validation queued for {queued} pending file(s).", messages.SUCCESS)
        if skipped:
            self.message_user(
                request,
                f"{skipped} file(s) skipped: validation already decided them (a valid file is not judged again; "
                "a rejected one has no bytes left: upload it again).",
                messages.WARNING,
            )

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> HttpResponse:
        firmware = self.get_object(request, object_id)
        if firmware is not None and self.has_delete_permission(request, firmware):
            names = list(firmware.deployments.values_list("name", flat=True)[:5])
            if names:
                self.message_user(
                    request,
                    format_html(
                        "This firmware cannot be deleted: deployment(s) {} use it. Point them at other firmware first.",
                        ", ".join(names),
                    ),
                    messages.ERROR,
                )
                return HttpResponseRedirect(reverse("admin:firmware_firmware_change", args=[firmware.pk]))
        return super().delete_view(request, object_id, extra_context)

    def delete_model(self, request: HttpRequest, obj: Firmware) -> None:
        services.delete_firmware(request.user, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Firmware]) -> None:
        for firmware in queryset:
            try:
                services.delete_firmware(request.user, firmware)
            except services.FirmwareInUse as exc:
                self.message_user(request, f"{firmware}: {exc.reason}", messages.ERROR)

    def log_deletions(self, request: HttpRequest, queryset: QuerySet[Firmware]) -> Any:
        return admin.ModelAdmin.log_deletions(self, request, queryset)
