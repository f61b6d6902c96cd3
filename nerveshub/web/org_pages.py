"""Organization pages of their own: creating one (hub operators) and its
settings (its admins rename it). The rules are in nerveshub.tenancy.services
(create_organization, rename_organization).

The org's address (/org/<slug>/) is made from its name, so a rename moves it:
the page answers with a redirect to the new address and says so; links to the
old one answer 404 afterwards, as for any organization one cannot see.
"""

from __future__ import annotations

from typing import cast

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import Role
from nerveshub.web.access import get_org_for_user, org_methods, org_slug, orgs_of
from nerveshub.web.forms import add_service_errors

page = login_required(login_url="/accounts/login/")


class OrgNameForm(forms.Form):
    name = forms.CharField(
        max_length=tenancy.ORG_NAME_MAX,
        # Shown unescaped by Django: plain text only.
        help_text="Its page addresses are made from the name: Acme Robotics is at /org/acme-robotics/.",
    )


@page
def org_new(request: HttpRequest) -> HttpResponse:
    """Create an organization; hub operators (superusers) only."""
    user = cast(User, request.user)
    if not user.is_superuser:
        raise PermissionDenied("Only hub operators create organizations.")
    form = OrgNameForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                org = tenancy.create_organization(user, form.cleaned_data["name"])
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Organization {org.name} created; you are its admin.")
                return redirect("web:dashboard", org_slug(org))
        status = 400
    return render(request, "web/org_new.html", {"form": form, "switcher": orgs_of(request)}, status=status)


@page
@org_methods("GET", "POST")
def org_settings(request: HttpRequest, org: str) -> HttpResponse:
    """The organization's name; its admins change it."""
    access = get_org_for_user(request, org, Role.ADMIN)
    form = OrgNameForm(request.POST if request.method == "POST" else None, initial={"name": access.org.name})
    status = 200
    if request.method == "POST":
        if form.is_valid():
            old_slug = access.slug
            try:
                renamed = tenancy.rename_organization(cast(User, request.user), access.org, form.cleaned_data["name"])
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                new_slug = org_slug(renamed)
                if new_slug != old_slug:
                    messages.success(
                        request,
                        f"Renamed to {renamed.name}. Its pages are now under /org/{new_slug}/; "
                        f"links to /org/{old_slug}/ no longer work.",
                    )
                else:
                    messages.success(request, f"Renamed to {renamed.name}.")
                return redirect("web:org_settings", new_slug)
        status = 400
    context = {"access": access, "org": access.org, "switcher": orgs_of(request), "form": form}
    return render(request, "web/org_settings.html", context, status=status)
