from __future__ import annotations

import re
from typing import Any

from django import forms
from django.contrib.auth.forms import SetPasswordForm, UserCreationForm
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError

from deployments.forms import DeploymentRulesForm
from devices.fields import normalise_tags
from devices.models import validate_tags
from firmware.models import Firmware, FirmwareKind, FirmwareStatus
from nerveshub.tenancy import accounts
from nerveshub.tenancy.models import Organization, Product, Role


class InviteForm(forms.Form):
    email = forms.EmailField(
        required=False,
        help_text="Whom the link is for: an account made with it gets this address. "
        "Leave empty to let the person give theirs.",
    )
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEW)


class SignUpForm(UserCreationForm[User]):
    """An account made from an invitation. The invited address, when the
    invitation names one, is the account's and cannot be changed here."""

    email = forms.EmailField(help_text="You sign in and reset your password with it.")

    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username", "email")

    def __init__(self, *args: Any, invited_email: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if invited_email:
            # A disabled field takes its initial value whatever is posted.
            self.fields["email"].initial = invited_email
            self.fields["email"].disabled = True
            self.fields["email"].help_text = "The address you were invited with."

    def clean_email(self) -> str:
        return accounts.check_email(str(self.cleaned_data["email"]))


class EmailChangeForm(forms.Form):
    email = forms.EmailField(label="New e-mail address")
    current_password = forms.CharField(widget=forms.PasswordInput, strip=False)

    def __init__(self, user: User, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_current_password(self) -> str:
        password = str(self.cleaned_data["current_password"])
        if not self.user.check_password(password):
            raise ValidationError("This is not your current password.", code="password_incorrect")
        return password

    def clean_email(self) -> str:
        return accounts.check_email(str(self.cleaned_data["email"]), user=self.user)


class PasswordChangeForm(SetPasswordForm):  # type: ignore[type-arg]  # not generic at run time
    """Django's form: the current password, then the new one twice."""

    current_password = forms.CharField(widget=forms.PasswordInput, strip=False)
    field_order = ["current_password", "new_password1", "new_password2"]

    def clean_current_password(self) -> str:
        password = str(self.cleaned_data["current_password"])
        if not self.user.check_password(password):
            raise ValidationError("This is not your current password.", code="password_incorrect")
        return password


# What each extension lets a device do (docs/device-protocol.md §8).
EXTENSION_LABELS = {
    "health": "Health: the device reports CPU, memory, disk and alarms",
    "geo": "Location: the device looks itself up with a GeoIP service and reports where it is",
    "network_identity": "Network identity: the device reports its network interfaces",
    "local_shell": "Local shell: operators may open a shell on the device",
}


class ProductForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        help_text="Firmware is accepted only for the product its meta-product names: use the same name.",
    )
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    extensions = forms.MultipleChoiceField(
        choices=[(name, EXTENSION_LABELS.get(name, name)) for name in Product.KNOWN_EXTENSIONS],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="What the product's devices may attach. A change reaches connected devices at once.",
    )


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class TokenForm(forms.Form):
    note = forms.CharField(max_length=100, required=False, help_text="What the token is for, e.g. “CI”.")


class TagsForm(forms.Form):
    tags = forms.CharField(max_length=500, help_text="Space- or comma-separated.")


class SigningKeyForm(forms.Form):
    name = forms.CharField(max_length=100)
    key = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), help_text="The text of fwup-key.pub.")


class CACertificateForm(forms.Form):
    description = forms.CharField(max_length=200)
    pem = forms.CharField(label="CA certificate (PEM)", widget=forms.Textarea(attrs={"rows": 6}))
    verification_pem = forms.CharField(
        label="Verification certificate (PEM)",
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Signed by the CA, with the organization's verification code as its CN: proves you hold the key.",
    )
    jitp_product = forms.ModelChoiceField(
        queryset=Product.objects.none(), required=False, label="Register unknown devices in product (JITP)"
    )

    def __init__(self, *args: Any, org: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["jitp_product"].queryset = Product.objects.filter(org=org)  # type: ignore[attr-defined]


class CAVerifyForm(forms.Form):
    verification_pem = forms.CharField(
        label="Verification certificate (PEM)",
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Signed by the CA, with the organization's verification code as its CN.",
    )


class UploadForm(forms.Form):
    product = forms.ModelChoiceField(queryset=Product.objects.none())
    kind = forms.ChoiceField(choices=FirmwareKind.choices, initial=FirmwareKind.FIRMWARE)
    file = forms.FileField()

    def __init__(self, *args: Any, org: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["product"].queryset = Product.objects.filter(org=org)  # type: ignore[attr-defined]


def add_service_errors(form: forms.BaseForm, exc: ValidationError) -> None:
    """Show a service's refusal (field -> messages) on the form: on the field
    where the form has it, above the form where it does not."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for name, messages in exc.message_dict.items():
        form.add_error(name if name in form.fields else None, messages)


def split_tags(value: str) -> list[str]:
    """Tags never contain white space, so both commas and spaces separate them."""
    return normalise_tags(re.split(r"[,\s]+", value))


class DeploymentForm(DeploymentRulesForm):
    conditions_tags = forms.CharField(
        required=False, label="Tags", help_text="A device must have all of these tags (space- or comma-separated)."
    )

    def __init__(self, *args: Any, org: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only this organization's rows are choices: a form cannot point at another tenant's.
        self.fields["product"].queryset = Product.objects.filter(org=org)  # type: ignore[attr-defined]
        valid = Firmware.objects.filter(org=org, status=FirmwareStatus.VALID).select_related("product")
        self.fields["firmware"].queryset = valid.filter(kind=FirmwareKind.FIRMWARE)  # type: ignore[attr-defined]
        self.fields["archive"].queryset = valid.filter(kind=FirmwareKind.ARCHIVE)  # type: ignore[attr-defined]
        self.fields["firmware"].label_from_instance = _firmware_label  # type: ignore[attr-defined]
        self.fields["archive"].label_from_instance = _firmware_label  # type: ignore[attr-defined]
        if not self.is_bound:
            self.initial["conditions_tags"] = " ".join(self.instance.conditions_tags or [])
        if self.instance.pk:
            # Moving a deployment to another product would orphan its update history.
            self.fields["product"].disabled = True

    def clean_conditions_tags(self) -> list[str]:
        tags = split_tags(self.cleaned_data.get("conditions_tags") or "")
        try:
            validate_tags(tags)
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from None
        return tags


def _firmware_label(firmware: Firmware) -> str:
    return f"{firmware.product.name} {firmware.version or '?'} ({(firmware.uuid or '')[:8]})"
