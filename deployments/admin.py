from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.html import format_html, format_html_join

from deployments import preflight, revert, rollout
from deployments.forms import DeploymentRulesForm, WindowsField
from deployments.models import INFLIGHT_STATUSES, Deployment, DeploymentStage, DeviceUpdate
from nerveshub.admin_base import CappedCountPaginator, OrgScopedAdmin, org_ids_with_role, register_org_path
from nerveshub.tenancy.models import Role

register_org_path(Deployment, "org")


class DeploymentForm(DeploymentRulesForm):
    class Meta:
        model = Deployment
        fields = [
            "org",
            "product",
            "name",
            "firmware",
            "archive",
            "connecting_code",
            "conditions_tags",
            "conditions_version",
            "is_active",
            "windows",
            "preflight",
            *rollout.SETTINGS_FIELDS,
        ]


STAGE_FIELDS = [
    "position",
    "name",
    "size_count",
    "size_percent",
    "concurrent_updates",
    "failure_percent",
    "soak_minutes",
    "requires_approval",
    "windows",
]


class StageForm(forms.ModelForm):  # type: ignore[type-arg]
    # Lines of text, as on the deployment, rather than a JSON list.
    windows = WindowsField(label="Maintenance windows", help_text="Replace the deployment's while this stage runs.")

    class Meta:
        model = DeploymentStage
        fields = STAGE_FIELDS


class StageInline(admin.TabularInline):  # type: ignore[type-arg]
    model = DeploymentStage
    form = StageForm
    extra = 0
    fields = [*STAGE_FIELDS, "approved_at", "started_at", "completed_at"]
    readonly_fields = ["approved_at", "started_at", "completed_at"]


@admin.register(Deployment)
class DeploymentAdmin(OrgScopedAdmin[Deployment]):
    form = DeploymentForm
    saved_by_service = True
    inlines = [StageInline]
    list_display = ["name", "product", "firmware", "is_active", "state", "inflight", "concurrent_updates", "updated_at"]
    list_select_related = ["product", "firmware", "firmware__product"]
    list_filter = ["is_active", ("product", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["name", "product__name"]
    raw_id_fields = ["firmware", "archive"]
    readonly_fields = ["progress_table", "paused_at", "paused_reason", "resumed_at", "created_at", "updated_at"]
    actions = ["activate", "deactivate", "pause", "resume", "retry_failed", "approve_next_stage", "revert_updated"]
    change_form_template = "admin/deployments/deployment/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Deployment]:
        inflight = (
            DeviceUpdate.objects.filter(deployment=OuterRef("pk"), status__in=INFLIGHT_STATUSES)
            .order_by()
            .values("deployment")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(inflight_count=Coalesce(Subquery(inflight, output_field=IntegerField()), 0))
        )

    @admin.display(description="in flight", ordering="inflight_count")
    def inflight(self, obj: Deployment) -> int:
        return int(obj.inflight_count)  # type: ignore[attr-defined]

    @admin.display(description="state")
    def state(self, obj: Deployment) -> str:
        if not obj.is_active:
            return "inactive"
        return "paused" if obj.paused_at else "rolling out"

    @admin.display(description="progress")
    def progress_table(self, obj: Deployment) -> str:
        if obj._state.adding:
            return "—"
        counts = rollout.progress(obj)
        shown = [(k.replace("_", " "), v) for k, v in counts.items() if v or k in ("members", "on_target")]
        return format_html("<table>{}</table>", format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", shown))

    def save_model(self, request: HttpRequest, obj: Deployment, form: Any, change: bool) -> None:
        self.check_save_allowed(request, obj)
        # The form ran the same rules (DeploymentRulesForm.clean): the service refuses nothing here.
        moved = rollout.save_deployment(request.user, obj, form.changed_data, via="admin")
        if moved:
            self.message_user(request, f"{moved} device(s) changed deployment.")

    # --- actions -------------------------------------------------------------

    def has_manage_permission(self, request: HttpRequest) -> bool:
        return self._allowed(request, Role.MANAGE, None)

    def _manageable(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> QuerySet[Deployment]:
        if request.user.is_superuser:
            return queryset
        return queryset.filter(org_id__in=org_ids_with_role(request, Role.MANAGE))

    def _each(self, request: HttpRequest, queryset: QuerySet[Deployment], verb: str, fn: Any) -> None:
        done = sum(1 for d in self._manageable(request, queryset) if fn(request.user, d))
        self.message_user(request, f"{verb} {done} deployment(s).")

    @admin.action(description="Activate", permissions=["manage"])
    def activate(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        done = 0
        for deployment in self._manageable(request, queryset).select_related("firmware", "product"):
            try:
                done += rollout.SWITCHES["activate"](request.user, deployment)
            except ValidationError as exc:
                self.message_user(request, f"{deployment}: {' '.join(exc.messages)}", messages.ERROR)
                continue
            warning = preflight.check(deployment).summary()
            if warning:
                self.message_user(request, f"{deployment}: {warning}", messages.WARNING)
        self.message_user(request, f"Activated {done} deployment(s).")

    @admin.action(description="Deactivate (stops new pushes at once)", permissions=["manage"])
    def deactivate(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        self._each(request, queryset, "Deactivated", rollout.SWITCHES["deactivate"])

    @admin.action(description="Pause", permissions=["manage"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        self._each(request, queryset, "Paused", rollout.SWITCHES["pause"])

    @admin.action(description="Resume", permissions=["manage"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        self._each(request, queryset, "Resumed", rollout.SWITCHES["resume"])

    @admin.action(description="Retry failed devices", permissions=["manage"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        for deployment in self._manageable(request, queryset):
            count = rollout.retry_failed(request.user, deployment)
            self.message_user(request, f"{deployment}: {count} device(s) may try again.", messages.INFO)

    @admin.action(description="Revert the devices it updated (paused or inactive)", permissions=["manage"])
    def revert_updated(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        for deployment in self._manageable(request, queryset).select_related("firmware"):
            try:
                result = revert.revert(request.user, deployment, via="admin")
            except revert.RevertRefused as exc:
                self.message_user(request, f"{deployment}: not reverted: {exc}.", messages.WARNING)
                continue
            names = ", ".join(d.name for d in result.deployments)
            self.message_user(request, f"{deployment}: reverting {result.devices} device(s) through {names}.")

    @admin.action(description="Approve the next stage", permissions=["manage"])
    def approve_next_stage(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        for deployment in self._manageable(request, queryset):
            stage = (
                DeploymentStage.objects.filter(
                    deployment=deployment, requires_approval=True, approved_at__isnull=True, started_at__isnull=True
                )
                .order_by("position")
                .first()
            )
            if stage is None:
                self.message_user(request, f"{deployment}: no stage waits for approval.", messages.WARNING)
            elif rollout.approve_stage(request.user, stage):
                self.message_user(request, f"{deployment}: approved stage {stage.name}.")

    # --- preview page ----------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        preview = path(
            "<int:pk>/preview/",
            self.admin_site.admin_view(self.preview_view),
            name="deployments_deployment_preview",
        )
        return [preview, *super().get_urls()]

    def preview_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        deployment = get_object_or_404(self.get_queryset(request).select_related("firmware"), pk=pk)
        if not self.has_view_permission(request, deployment):
            raise PermissionDenied
        rows = rollout.preview(deployment)
        reasons: dict[str, int] = {}
        for row in rows:
            for problem in row.problems:
                key = problem.split(" until ")[0]
                reasons[key] = reasons.get(key, 0) + 1
        context = {
            **self.admin_site.each_context(request),
            "title": f"Preview of {deployment}",
            "deployment": deployment,
            "rows": rows,
            "eligible": sum(1 for r in rows if r.eligible),
            "reasons": sorted(reasons.items(), key=lambda kv: -kv[1]),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/deployments/deployment/preview.html", context)


@admin.register(DeviceUpdate)
class DeviceUpdateAdmin(OrgScopedAdmin[DeviceUpdate]):
    """The history of every update the hub asked a device to make. Read-only:
    rows move only through the rollout services."""

    org_path = "device__org"
    list_display = [
        "created_at",
        "device",
        "firmware",
        "deployment",
        "status",
        "progress",
        "pushes",
        "reason",
        "finished_at",
    ]
    list_select_related = ["device", "firmware", "firmware__product", "deployment"]
    list_filter = ["status"]
    search_fields = ["=device__identifier", "=firmware__uuid"]
    raw_id_fields = ["device", "firmware", "deployment"]
    paginator = CappedCountPaginator
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DeviceUpdate | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DeviceUpdate | None = None) -> bool:
        return False
