"""The deployment form both the admin and the organization pages build on: its
fields and its rules are written once, and the rules are the service's
(rollout.deployment_errors; saving goes through rollout.save_deployment)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from deployments import rollout, windows
from deployments.models import Deployment, Preflight

FIELDS = [
    "product",
    "name",
    "firmware",
    "archive",
    "conditions_tags",
    "conditions_version",
    "windows",
    "preflight",
    *rollout.SETTINGS_FIELDS,
]


class WindowsField(forms.CharField):
    """Maintenance windows as lines of text (deployments/windows.py), each
    line checked with the reason beside the field."""

    widget = forms.Textarea(attrs={"rows": 3})

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault(
            "help_text",
            f"One window per line: {windows.SYNTAX}. Updates start only inside a window; none means any time.",
        )
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return "\n".join(str(line) for line in value)
        return value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value) or ""
        return [line.strip() for line in str(text).splitlines() if line.strip()]

    def validate(self, value: Any) -> None:
        try:
            windows.validate_windows(value)
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from None


# Rollout-safety settings a form may leave out: a form posted without them (an
# older page, a script) keeps what the deployment has, or the default.
OPTIONAL = ("soak_minutes", "gate_margin_percent", "gate_min_devices")


class DeploymentRulesForm(forms.ModelForm):  # type: ignore[type-arg]
    windows = WindowsField(label="Maintenance windows")

    class Meta:
        model = Deployment
        fields = FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "preflight" in self.fields:
            # Left out, the setting keeps its value (a new deployment: warn).
            self.fields["preflight"].required = False
        for name in OPTIONAL:
            if name in self.fields:
                self.fields[name].required = False

    def clean_preflight(self) -> str:
        return str(self.cleaned_data.get("preflight") or self.instance.preflight or Preflight.WARN)

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        for name in OPTIONAL:
            if name in self.fields and cleaned.get(name) is None:
                cleaned[name] = getattr(self.instance, name)
        org = cleaned.get("org")
        org_id = org.pk if org is not None else self.instance.org_id
        errors = rollout.deployment_errors(
            org_id, cleaned.get("product"), cleaned.get("firmware"), cleaned.get("archive")
        )
        for name, messages in errors.items():
            self.add_error(name if name in self.fields else None, messages)
        return cleaned
