"""The deployment page's rollout-safety actions: reverting a paused or stopped
rollout (deployments/revert.py). What the page shows of the soak and the
gate is in web/_rollout_safety.html, from the deployment row."""

from __future__ import annotations

from typing import cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect

from deployments import revert
from deployments.models import Deployment
from nerveshub.tenancy.models import Role
from nerveshub.web.access import get_org_for_user, org_methods


@login_required(login_url="/accounts/login/")
@org_methods("POST")
def deployment_revert(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    access = get_org_for_user(request, org, Role.MANAGE)
    deployment = get_object_or_404(Deployment.objects.select_related("firmware"), pk=pk, org=access.org)
    try:
        result = revert.revert(cast(User, request.user), deployment, via="web")
    except revert.RevertRefused as exc:
        messages.error(request, f"Not reverted: {exc}.")
        return redirect("web:deployment", access.slug, deployment.pk)
    names = ", ".join(d.name for d in result.deployments)
    left = f" {result.left} device(s) with no known previous firmware stay as they are." if result.left else ""
    messages.success(request, f"Reverting {result.devices} device(s) through {names}.{left}")
    return redirect("web:deployment", access.slug, result.deployments[0].pk)
