"""Admin for Device CAs and device certificates. Registration, revocation and
deletion go through certificates.services, which write the audit events; the
generic audit of OrgScopedAdmin is skipped where a service already wrote one."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from certificates import services
from certificates.models import CACertificate, DeviceCertificate
from devices.fields import normalise_tags
from nerveshub.admin_base import OrgScopedAdmin, org_ids_with_role
from nerveshub.tenancy.models import Organization, Role


def _read_pem(field: Any) -> bytes:
    if field is None:
        return b""
    if isinstance(field, str):
        return field.encode()
    data: bytes = field.read(64 * 1024 + 1)
    if len(data) > 64 * 1024:
        raise ValidationError("A certificate file is at most 64 KiB.")
    return data


class _PemFormMixin(forms.ModelForm):  # type: ignore[type-arg]
    actor: Any = None  # the request's user, set by get_form

    def _pem(self, file_field: str, text_field: str, *, required: bool) -> bytes:
        data = _read_pem(self.cleaned_data.get(file_field)) or _read_pem(self.cleaned_data.get(text_field) or None)
        if required and not data.strip():
            raise ValidationError("Upload a PEM file or paste the certificate.")
        return data

    def _post_clean(self) -> None:
        # The service built and saved the instance in clean(); constructing it
        # again from cleaned_data would only undo its normalisation.
        if self.instance.pk is None:
            super()._post_clean()  # type: ignore[misc]  # a Django hook django-stubs leaves out


class CACertificateAddForm(_PemFormMixin):
    certificate_file = forms.FileField(required=False, help_text="The CA certificate, PEM.")
    certificate_text = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 6}), label="or paste it")
    verification_file = forms.FileField(
        required=False,
        help_text="Required proof that you hold the CA key: a certificate signed by the CA whose CN "
        "(or SAN URI urn:nerveshub:verify:CODE) is the organization's verification code.",
    )
    tags = forms.CharField(required=False, label="JITP tags", help_text="Comma-separated.")

    class Meta:
        model = CACertificate
        fields = ["org", "description", "check_expiration", "jitp_product", "jitp_description"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors:
            return cleaned
        try:
            pem = self._pem("certificate_file", "certificate_text", required=True)
            verification = self._pem("verification_file", "verification_file", required=False)
            if not verification.strip():
                raise services.CertificateError("upload the verification certificate (proof of possession)")
            self.instance = services.register_ca_certificate(
                self.actor,
                cleaned["org"],
                pem,
                description=cleaned.get("description", ""),
                jitp_product=cleaned.get("jitp_product"),
                jitp_tags=normalise_tags(cleaned.get("tags") or ""),
                jitp_description=cleaned.get("jitp_description", ""),
                verification_pem=verification or None,
                check_expiration=bool(cleaned.get("check_expiration")),
            )
        except services.CertificateError as exc:
            raise ValidationError(str(exc)) from None
        return cleaned


class CACertificateChangeForm(forms.ModelForm):  # type: ignore[type-arg]
    actor: Any = None  # the request's user, set by get_form
    verification_file = forms.FileField(
        required=False,
        label="Verify with",
        help_text="For a CA registered before proof of possession was required: a certificate signed by "
        "the CA whose CN is the organization's verification code. Until then the CA provisions and "
        "authenticates no device.",
    )

    class Meta:
        model = CACertificate
        fields = ["description", "check_expiration", "jitp_product", "jitp_tags", "jitp_description"]

    def clean_jitp_product(self) -> Any:
        product = self.cleaned_data.get("jitp_product")
        for messages in services.ca_errors(self.instance.org_id, product).values():
            raise ValidationError(messages)
        return product

    def clean_verification_file(self) -> Any:
        upload = self.cleaned_data.get("verification_file")
        proof = _read_pem(upload)
        if proof.strip():
            try:
                services.verify_ca_certificate(self.actor, self.instance, proof)
            except services.CertificateError as exc:
                raise ValidationError(str(exc)) from None
        return upload


class _StampedFilter(admin.SimpleListFilter):
    """Yes/no on whether a timestamp column is set (verified_at, revoked_at)."""

    field = ""
    labels = ("", "")

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", self.labels[0]), ("no", self.labels[1])]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() in ("yes", "no"):
            return queryset.filter(**{f"{self.field}__isnull": self.value() == "no"})
        return queryset


class VerifiedFilter(_StampedFilter):
    title = "verified"
    parameter_name = "verified"
    field = "verified_at"
    labels = ("Verified", "Not verified")


@admin.register(CACertificate)
class CACertificateAdmin(OrgScopedAdmin[CACertificate]):
    # Who may add Device CAs decides who may add devices: admins only (as the reference).
    change_role = Role.ADMIN
    delete_role = Role.ADMIN
    saved_by_service = True
    deleted_by_service = True
    list_display = ["__str__", "org", "subject", "verified", "not_before", "not_after", "jitp_product", "last_used_at"]
    list_select_related = ["org", "jitp_product"]
    list_filter = [VerifiedFilter, "check_expiration", ("org", admin.RelatedOnlyFieldListFilter), "not_after"]
    search_fields = ["description", "subject", "=ski", "=serial"]
    readonly_fields = [
        "org",
        "subject",
        "serial",
        "ski",
        "aki",
        "public_key_fingerprint",
        "verified_at",
        "not_before",
        "not_after",
        "created_at",
        "last_used_at",
    ]

    @admin.display(description="verified", boolean=True)
    def verified(self, obj: CACertificate) -> bool:
        return obj.is_verified

    def get_form(
        self, request: HttpRequest, obj: CACertificate | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is not None:
            kwargs["form"] = CACertificateChangeForm
            change_form: Any = super().get_form(request, obj, change, **kwargs)
            change_form.actor = request.user
            if not obj.is_verified:
                code = services.verification_code(obj.org)
                change_form.base_fields["verification_file"].help_text += f" Code (valid 1 h): {code}"
            return change_form
        kwargs["form"] = CACertificateAddForm
        form: Any = super().get_form(request, obj, change, **kwargs)
        form.actor = request.user
        codes = [f"{org.name}: {services.verification_code(org)}" for org in self._admin_orgs(request)[:20]]
        form.base_fields["verification_file"].help_text += " Codes (valid 1 h): " + "; ".join(codes)
        return form

    def get_readonly_fields(self, request: HttpRequest, obj: CACertificate | None = None) -> list[str]:
        return list(self.readonly_fields) if obj is not None else []

    def get_fields(self, request: HttpRequest, obj: CACertificate | None = None) -> Any:
        if obj is None:
            return [
                "org",
                "description",
                "certificate_file",
                "certificate_text",
                "verification_file",
                "check_expiration",
                "jitp_product",
                "tags",
                "jitp_description",
            ]
        fields = [*self.readonly_fields, *CACertificateChangeForm.Meta.fields]
        return fields if obj.is_verified else [*fields, "verification_file"]

    def _admin_orgs(self, request: HttpRequest) -> QuerySet[Organization]:
        if request.user.is_superuser:
            return Organization.objects.all()
        return Organization.objects.filter(pk__in=org_ids_with_role(request, Role.ADMIN))

    def save_model(self, request: HttpRequest, obj: CACertificate, form: Any, change: bool) -> None:
        # On add, register_ca_certificate saved it (and audited it) in form.clean().
        if change:
            self.check_save_allowed(request, obj)
            fields = [name for name in form.changed_data if name in CACertificateChangeForm.Meta.fields]
            changes = {name: getattr(obj, name) for name in fields}
            # The form ran the same rule (clean_jitp_product): the service refuses nothing here.
            services.update_ca_certificate(request.user, obj, changes, via="admin")

    def delete_model(self, request: HttpRequest, obj: CACertificate) -> None:
        services.delete_ca_certificates(request.user, [obj])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[CACertificate]) -> None:
        if not request.user.is_superuser:
            queryset = queryset.filter(org_id__in=org_ids_with_role(request, Role.ADMIN))
        services.delete_ca_certificates(request.user, queryset)


class RevokedFilter(_StampedFilter):
    title = "revoked"
    parameter_name = "revoked"
    field = "revoked_at"
    labels = ("Revoked", "Not revoked")


class DeviceCertificateAddForm(_PemFormMixin):
    certificate_file = forms.FileField(required=False, help_text="The device certificate, PEM.")
    certificate_text = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 6}), label="or paste it")

    class Meta:
        model = DeviceCertificate
        fields = ["device"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors:
            return cleaned
        try:
            pem = self._pem("certificate_file", "certificate_text", required=True)
            self.instance = services.register_device_certificate(self.actor, cleaned["device"], pem)
        except services.CertificateError as exc:
            raise ValidationError(str(exc)) from None
        return cleaned


@admin.register(DeviceCertificate)
class DeviceCertificateAdmin(OrgScopedAdmin[DeviceCertificate]):
    list_display = [
        "device",
        "org",
        "serial",
        "not_before",
        "not_after",
        "short_fingerprint",
        "revoked",
        "last_used_at",
    ]
    list_select_related = ["device", "org"]
    list_filter = [RevokedFilter, ("org", admin.RelatedOnlyFieldListFilter), "not_after"]
    search_fields = ["^device__identifier", "=fingerprint", "=serial"]
    raw_id_fields = ["device"]
    list_per_page = 100
    show_full_result_count = False
    readonly_fields = [
        "device",
        "org",
        "serial",
        "subject",
        "ski",
        "aki",
        "fingerprint",
        "public_key_fingerprint",
        "not_before",
        "not_after",
        "revoked_at",
        "created_at",
        "last_used_at",
    ]
    actions = ["revoke"]

    @admin.display(description="fingerprint (SHA-256)")
    def short_fingerprint(self, obj: DeviceCertificate) -> str:
        return format_html('<span title="{}">{}…</span>', obj.fingerprint, obj.fingerprint[:16])

    @admin.display(description="revoked", boolean=True)
    def revoked(self, obj: DeviceCertificate) -> bool:
        return obj.revoked_at is not None

    def get_form(
        self, request: HttpRequest, obj: DeviceCertificate | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = DeviceCertificateAddForm
            form: Any = super().get_form(request, obj, change, **kwargs)
            form.actor = request.user
            return form
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: DeviceCertificate | None = None) -> Any:
        if obj is None:
            return ["device", "certificate_file", "certificate_text"]
        return self.readonly_fields

    def get_readonly_fields(self, request: HttpRequest, obj: DeviceCertificate | None = None) -> list[str]:
        return list(self.readonly_fields) if obj is not None else []

    def has_change_permission(self, request: HttpRequest, obj: DeviceCertificate | None = None) -> bool:
        # Certificates are facts: nothing in one can be edited, only revoked or deleted.
        return False if obj is not None else super().has_change_permission(request, obj)

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return self._allowed(request, Role.MANAGE, None)

    def _manageable(self, request: HttpRequest, queryset: QuerySet[DeviceCertificate]) -> QuerySet[DeviceCertificate]:
        if request.user.is_superuser:
            return queryset
        return queryset.filter(org_id__in=org_ids_with_role(request, Role.MANAGE))

    @admin.action(description="Revoke selected certificates", permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[DeviceCertificate]) -> None:
        count = services.revoke_device_certificates(request.user, self._manageable(request, queryset))
        self.message_user(request, f"Revoked {count} certificate(s).")

    def save_model(self, request: HttpRequest, obj: DeviceCertificate, form: Any, change: bool) -> None:
        pass  # register_device_certificate saved and audited it in form.clean()

    def log_addition(self, request: HttpRequest, obj: DeviceCertificate, message: Any) -> Any:
        return admin.ModelAdmin.log_addition(self, request, obj, message)

    def log_deletions(self, request: HttpRequest, queryset: Any) -> Any:
        return admin.ModelAdmin.log_deletions(self, request, queryset)

    def delete_model(self, request: HttpRequest, obj: DeviceCertificate) -> None:
        services.delete_device_certificates(request.user, [obj])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[DeviceCertificate]) -> None:
        services.delete_device_certificates(request.user, self._manageable(request, queryset))
