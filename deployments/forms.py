"""The deployment form both the admin and the organization pages build on: its
fields and its rules are written once, and the rules are the service's
(rollout.deployment_errors; saving goes through rollout.save_deployment)."""

from __future__ import annotations

from typing import Any

from django import forms

from deployments import rollout
from deployments.models import Deployment

FIELDS = [
    "product",
    "name",
    "firmware",
    "archive",
    "conditions_tags",
    "conditions_version",
    *rollout.SETTINGS_FIELDS,
]


# Rollout-safety settings a form may leave out: a form posted without them (an
# older page, a script) keeps what the deployment has, or the default.
OPTIONAL = ("soak_minutes", "gate_margin_percent", "gate_min_devices")


class DeploymentRulesForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = Deployment
        fields = FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in OPTIONAL:
            if name in self.fields:
                self.fields[name].required = False

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
