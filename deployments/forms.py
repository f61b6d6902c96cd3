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


class DeploymentRulesForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = Deployment
        fields = FIELDS

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        org = cleaned.get("org")
        org_id = org.pk if org is not None else self.instance.org_id
        errors = rollout.deployment_errors(
            org_id, cleaned.get("product"), cleaned.get("firmware"), cleaned.get("archive")
        )
        for name, messages in errors.items():
            self.add_error(name if name in self.fields else None, messages)
        return cleaned
