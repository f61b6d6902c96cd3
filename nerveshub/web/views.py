"""The organization pages. Every org view loads its org through
`access.get_org_for_user` (404 for outsiders, 403 for a lesser role) and
changes state only through the domain apps' services."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar, cast

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Model, Q, QuerySet
from django.forms import BaseForm
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.timesince import timesince
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from certificates import services as certificates
from certificates.models import CACertificate
from deployments import deltas, preflight, rollout, windows
from deployments.models import Deployment, DeviceUpdate, UpdateStatus
from deployments.rollout import FAILED_STATUSES
from deployments.timeline import rollout_timeline
from devices import health
from devices import services as devices
from devices.models import Device, ProductSharedSecret, online_q
from firmware import deltas as firmware_deltas
from firmware import services as firmware_services
from firmware.models import Firmware, FirmwareStatus, SigningKey
from nerveshub.lib.params import parse_int
from nerveshub.tenancy import accounts
from nerveshub.tenancy import audit_chain as audit_chain_service
from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import APIToken, AuditEvent, Membership, Product, Role
from nerveshub.tenancy.redaction import visible_events
from nerveshub.web import charts, cli_sessions, live, services
from nerveshub.web.access import OrgAccess, get_org_for_user, org_methods, orgs_of
from nerveshub.web.forms import (
    CACertificateForm,
    CAVerifyForm,
    DeploymentForm,
    EmailChangeForm,
    InviteForm,
    PasswordChangeForm,
    ProductForm,
    RoleForm,
    SigningKeyForm,
    SignUpForm,
    TagsForm,
    TokenForm,
    UploadForm,
    add_service_errors,
    split_tags,
)
from nerveshub.web.models import Invitation

LOGIN_URL = "/accounts/login/"
# Rows per page on the device and audit lists.
PAGE_SIZE = 50
# Counting stops here: COUNT(*) over 100k devices on every page view is the
# cost the list must not pay. Past the cap the page says "10000+".
COUNT_CAP = 10_000

page = login_required(login_url=LOGIN_URL)


def _user(request: HttpRequest) -> User:
    return cast(User, request.user)


def _render(
    request: HttpRequest, access: OrgAccess | None, template: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    context = {"access": access, "org": access.org if access else None, "switcher": orgs_of(request), **context}
    return render(request, template, context, status=status)


def _capped_count(queryset: QuerySet[Any]) -> tuple[int, bool]:
    count = int(queryset.order_by()[: COUNT_CAP + 1].count())
    return min(count, COUNT_CAP), count > COUNT_CAP


def _org_url(access: OrgAccess, name: str, *args: object) -> str:
    return reverse(f"web:{name}", args=[access.slug, *args])


M = TypeVar("M", bound=Model)
F = TypeVar("F", bound=BaseForm)


def _delete_row(
    request: HttpRequest,
    org: str,
    role: str,
    rows: QuerySet[M],
    pk: int,
    delete: Callable[[User, M], object],
    refused: type[Exception] | tuple[type[Exception], ...],
    done: str,
    back: str,
) -> HttpResponse:
    """The shape of every delete button: load the org's row, call the service,
    say what happened (or why the service refused), go back to the list."""
    access = get_org_for_user(request, org, role)
    row = get_object_or_404(rows, pk=pk, org=access.org)
    try:
        delete(_user(request), row)
        messages.success(request, done)
    except refused as exc:
        messages.error(request, str(exc))
    return redirect(back, access.slug)


def _create_from_form(
    request: HttpRequest,
    org: str,
    role: str,
    make_form: Callable[[OrgAccess, Any], F],
    create: Callable[[User, OrgAccess, dict[str, Any]], object],
    refused: tuple[type[Exception], ...],
    done: str,
    back: str,
) -> tuple[OrgAccess, F, HttpResponse | None]:
    """The shape of a list page with an add form: anyone in the org reads it, a
    POST needs `role` and goes to the service; the service's refusal shows on
    the form. Returns the access, the form to show, and the redirect after a
    successful add (None: render the page)."""
    access = get_org_for_user(request, org)
    if request.method != "POST":
        return access, make_form(access, None), None
    access = get_org_for_user(request, org, role)
    form = make_form(access, request.POST)
    if form.is_valid():
        try:
            create(_user(request), access, form.cleaned_data)
        except ValidationError as exc:
            add_service_errors(form, exc)
        except refused as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, done)
            return access, form, redirect(back, access.slug)
    return access, form, None


# --- Accounts ---------------------------------------------------------------------------


@page
def home(request: HttpRequest) -> HttpResponse:
    orgs = orgs_of(request)
    if len(orgs) == 1:
        return redirect("web:dashboard", orgs[0].slug)
    return _render(request, None, "web/orgs.html", {"orgs": orgs})


@page
def account(request: HttpRequest) -> HttpResponse:
    """The person's own settings: e-mail address and password."""
    user = _user(request)
    email_form = EmailChangeForm(user)
    password_form = PasswordChangeForm(user)
    status = 200
    if request.method == "POST":
        if request.POST.get("change") == "email":
            email_form = EmailChangeForm(user, request.POST)
            if email_form.is_valid():
                accounts.change_email(user, email_form.cleaned_data["email"])
                messages.success(request, "Your e-mail address is changed.")
                return redirect("web:account")
        elif request.POST.get("change") == "password":
            password_form = PasswordChangeForm(user, request.POST)
            if password_form.is_valid():
                accounts.change_password(user, password_form.cleaned_data["new_password1"])
                # This session stays signed in; the person's other sessions end.
                update_session_auth_hash(request, user)
                messages.success(request, "Your password is changed. Your other sessions are signed out.")
                return redirect("web:account")
        status = 400
    context = {"email_form": email_form, "password_form": password_form}
    return _render(request, None, "web/account.html", context, status=status)


@page
@never_cache  # the answer to a POST holds the new token
def tokens(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    issued = None
    form = TokenForm()
    if request.method == "POST":
        form = TokenForm(request.POST)
        if form.is_valid():
            issued = tenancy.create_api_token(user, user, form.cleaned_data["note"])
            form = TokenForm()
    rows = APIToken.objects.filter(user=user).order_by("-created_at")
    return _render(request, None, "web/tokens.html", {"tokens": rows, "form": form, "issued": issued})


@page
def cli_session(request: HttpRequest, public_id: str) -> HttpResponse:
    """Approve (or deny) a command-line tool's sign-in: the tool then receives
    a new API token of the signed-in person's (nerveshub.web.cli_sessions)."""
    session = cli_sessions.find_open_session(public_id)
    if session is None:
        return _render(request, None, "web/cli_session.html", {"session": None}, status=404)
    if request.method == "POST":
        if request.POST.get("action") == "approve":
            if cli_sessions.approve_cli_session(_user(request), session):
                messages.success(request, "Signed in: the command-line tool receives its token now.")
        else:
            cli_sessions.deny_cli_session(_user(request), session)
            messages.success(request, "Sign-in refused.")
        return redirect("web:tokens")
    return _render(request, None, "web/cli_session.html", {"session": session})


@page
@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    # Another user's token id is "not found", never "forbidden".
    token = get_object_or_404(APIToken, pk=pk, user=_user(request))
    if tenancy.revoke_api_token(_user(request), token):
        messages.success(request, f"Token {token.prefix}… revoked.")
    return redirect("web:tokens")


def invitation(request: HttpRequest, token: str) -> HttpResponse:
    """The invitation link. A signed-in person joins with one click; anybody
    else first creates an account (or signs in and comes back)."""
    try:
        found = services.find_invitation(token)
    except services.InvitationInvalid as exc:
        return render(request, "web/invitation.html", {"error": str(exc)}, status=404)
    form = SignUpForm(invited_email=found.email)
    if request.method == "POST":
        if request.user.is_authenticated:
            user = _user(request)
        else:
            form = SignUpForm(request.POST, invited_email=found.email)
            if not form.is_valid():
                return render(request, "web/invitation.html", {"invitation": found, "form": form}, status=400)
            with transaction.atomic():
                user = form.save()
                tenancy.audit(user, "user.signed_up", user, org=found.org_id, details={"email": user.email})
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        try:
            services.accept_invitation(user, token)
        except services.InvitationInvalid as exc:
            return render(request, "web/invitation.html", {"error": str(exc)}, status=404)
        messages.success(request, f"You are now a member of {found.org.name}.")
        return redirect("web:dashboard", OrgAccess(found.org, Role(found.role)).slug)
    return render(request, "web/invitation.html", {"invitation": found, "form": form})


# --- Members ------------------------------------------------------------------------------


@page
def members(request: HttpRequest, org: str) -> HttpResponse:
    access = get_org_for_user(request, org, Role.VIEW)
    issued_link = None
    form = InviteForm()
    if request.method == "POST":
        access = get_org_for_user(request, org, Role.ADMIN)
        form = InviteForm(request.POST)
        if form.is_valid():
            issued = services.create_invitation(
                _user(request), access.org, form.cleaned_data["role"], form.cleaned_data["email"]
            )
            issued_link = request.build_absolute_uri(reverse("web:invitation", args=[issued.clear]))
            form = InviteForm()
    rows = Membership.objects.filter(org=access.org).select_related("user").order_by("user__username")
    invitations = Invitation.objects.filter(
        org=access.org, accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now()
    )
    context = {
        "members": rows,
        "invitations": invitations,
        "form": form,
        "issued_link": issued_link,
        "roles": Role.choices,
    }
    return _render(request, access, "web/members.html", context)


@page
@org_methods("POST")
def member_role(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    access = get_org_for_user(request, org, Role.ADMIN)
    membership = get_object_or_404(Membership, pk=pk, org=access.org)
    form = RoleForm(request.POST)
    if form.is_valid():
        try:
            tenancy.change_member_role(_user(request), membership, form.cleaned_data["role"])
            messages.success(request, f"{membership.user} is now {Role(form.cleaned_data['role']).label}.")
        except tenancy.MemberChangeRefused as exc:
            messages.error(request, str(exc))
    return redirect("web:members", access.slug)


@page
@org_methods("POST")
def member_remove(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    access = get_org_for_user(request, org, Role.ADMIN)
    membership = get_object_or_404(Membership.objects.select_related("user"), pk=pk, org=access.org)
    try:
        tenancy.remove_member(_user(request), membership)
        messages.success(request, f"{membership.user} removed.")
    except tenancy.MemberChangeRefused as exc:
        messages.error(request, str(exc))
    return redirect("web:members", access.slug)


@page
@org_methods("POST")
def invitation_revoke(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    access = get_org_for_user(request, org, Role.ADMIN)
    found = get_object_or_404(Invitation, pk=pk, org=access.org)
    services.revoke_invitation(_user(request), found)
    return redirect("web:members", access.slug)


# --- Dashboard and products ------------------------------------------------------------------


@page
@org_methods("GET")
def dashboard(request: HttpRequest, org: str) -> HttpResponse:
    access = get_org_for_user(request, org)
    context = {
        # The same figures the page refetches as devices change (live.counts).
        **live.counts(access.org),
        "deployments": Deployment.objects.filter(org=access.org, is_active=True).select_related("product", "firmware"),
        "firmware": Firmware.objects.filter(org=access.org).select_related("product").order_by("-created_at")[:5],
        "events": visible_events(AuditEvent.objects.filter(org=access.org).order_by("-id")[:10], access.role),
    }
    return _render(request, access, "web/dashboard.html", context)


@page
@org_methods("GET", "POST")
def products(request: HttpRequest, org: str) -> HttpResponse:
    access, form, done = _create_from_form(
        request,
        org,
        Role.MANAGE,
        lambda access, data: ProductForm(data, initial={"extensions": ["health"]}),
        lambda user, access, data: tenancy.save_product(
            user,
            Product(org=access.org, name=data["name"], description=data["description"], extensions=data["extensions"]),
            ["name", "description", "extensions"],
            via="pages",
        ),
        (),
        "Product created.",
        "web:products",
    )
    if done is not None:
        return done
    rows = (
        Product.objects.filter(org=access.org)
        .annotate(device_count=Count("devices", filter=Q(devices__deleted_at__isnull=True)))
        .prefetch_related("deployments")
        .order_by("name")
    )
    return _render(request, access, "web/products.html", {"products": rows, "form": form})


def _product_page(
    request: HttpRequest,
    access: OrgAccess,
    product: Product,
    form: ProductForm | None = None,
    issued: devices.IssuedSecret | None = None,
    status: int = 200,
) -> HttpResponse:
    if form is None:
        form = ProductForm(
            initial={"name": product.name, "description": product.description, "extensions": product.extensions}
        )
    context = {
        "product": product,
        "form": form,
        "issued": issued,
        "secrets": product.shared_secrets.order_by("-created_at"),
        "device_count": product.devices.filter(deleted_at__isnull=True).count(),
        "firmware_count": Firmware.objects.filter(product=product).count(),
        "deployments": product.deployments.order_by("name"),
    }
    return _render(request, access, "web/product.html", context, status=status)


@page
@org_methods("GET", "POST")
def product_detail(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    """A product: rename it, describe it, choose its extensions (manage); its
    shared secrets (admin)."""
    access = get_org_for_user(request, org, Role.MANAGE if request.method == "POST" else Role.VIEW)
    product = get_object_or_404(Product, pk=pk, org=access.org)
    if request.method != "POST":
        return _product_page(request, access, product)
    form = ProductForm(request.POST)
    if form.is_valid():
        fields = ["name", "description", "extensions"]
        for name in fields:
            setattr(product, name, form.cleaned_data[name])
        try:
            tenancy.save_product(_user(request), product, fields, via="pages")
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, "Product saved.")
            return redirect("web:product", access.slug, product.pk)
    product.refresh_from_db()
    return _product_page(request, access, product, form=form, status=400)


@page
@org_methods("POST")
def product_delete(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    return _delete_row(
        request,
        org,
        Role.ADMIN,
        Product.objects.all(),
        pk,
        lambda user, product: tenancy.delete_product(user, product, via="pages"),
        tenancy.ProductInUse,
        "Product deleted.",
        "web:products",
    )


@page
@never_cache  # the answer holds the secret: no cache may keep it
@org_methods("POST")
def product_secret_new(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    """Issue a product shared secret; the page shows it this once."""
    access = get_org_for_user(request, org, Role.ADMIN)
    product = get_object_or_404(Product, pk=pk, org=access.org)
    _, issued = devices.create_product_secret(_user(request), product)
    return _product_page(request, access, product, issued=issued)


@page
@org_methods("POST")
def product_secret_deactivate(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    access = get_org_for_user(request, org, Role.ADMIN)
    secret = get_object_or_404(ProductSharedSecret.objects.select_related("product"), pk=pk, product__org=access.org)
    if devices.deactivate_secrets(_user(request), [secret]):
        messages.success(request, f"Key {secret.key} deactivated: devices can no longer connect with it.")
    return redirect("web:product", access.slug, secret.product_id)


# --- Devices -------------------------------------------------------------------------------


def _ignored(request: HttpRequest, name: str) -> None:
    messages.warning(request, f"Ignored the {name} filter: it is not a valid value.")


def _text(request: HttpRequest, params: Any, name: str) -> str:
    value = (params.get(name) or "").strip()
    if "\x00" in value:
        # PostgreSQL cannot compare with a NUL; no stored value holds one.
        _ignored(request, name)
        return ""
    return str(value)


def _filtered_devices(request: HttpRequest, access: OrgAccess, params: Any) -> tuple[QuerySet[Device], dict[str, str]]:
    queryset = Device.objects.filter(org=access.org, deleted_at__isnull=True)
    applied: dict[str, str] = {}
    q = _text(request, params, "q")
    if q:
        queryset = queryset.filter(Q(identifier__icontains=q) | Q(description__icontains=q))
        applied["q"] = q
    tag = _text(request, params, "tag")
    if tag:
        queryset = queryset.filter(tags__has_tag=tag)
        applied["tag"] = tag
    online = params.get("online") or ""
    if online in ("yes", "no"):
        connected = online_q()
        queryset = queryset.filter(connected if online == "yes" else ~connected)
        applied["online"] = online
    version = _text(request, params, "version")
    if version:
        queryset = queryset.filter(firmware_version=version)
        applied["version"] = version
    deployment = params.get("deployment") or ""
    if deployment == "none":
        queryset = queryset.filter(deployment__isnull=True)
        applied["deployment"] = deployment
    elif deployment:
        deployment_id = parse_int(deployment)
        if deployment_id is None:
            _ignored(request, "deployment")
        else:
            queryset = queryset.filter(deployment_id=deployment_id)
            applied["deployment"] = deployment
    product = params.get("product") or ""
    if product:
        product_id = parse_int(product)
        if product_id is None:
            _ignored(request, "product")
        else:
            queryset = queryset.filter(product_id=product_id)
            applied["product"] = product
    if params.get("penalty") == "yes":
        queryset = queryset.filter(penalty_box_until__gt=timezone.now())
        applied["penalty"] = "yes"
    return queryset, applied


@page
@org_methods("GET")
def device_list(request: HttpRequest, org: str) -> HttpResponse:
    """Keyset pagination on the identifier (unique in the org): a page costs the
    same at row 100 000 as at row 0, and there is no OFFSET to scan."""
    access = get_org_for_user(request, org)
    queryset, applied = _filtered_devices(request, access, request.GET)
    after = _text(request, request.GET, "after")
    before = _text(request, request.GET, "before")
    listed = queryset.select_related("product", "deployment", "hub_lease")
    if before:
        rows = list(listed.filter(identifier__lt=before).order_by("-identifier")[: PAGE_SIZE + 1])
        has_prev = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE][::-1]
        has_next = True
    else:
        if after:
            listed = listed.filter(identifier__gt=after)
        rows = list(listed.order_by("identifier")[: PAGE_SIZE + 1])
        has_next = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        has_prev = bool(after)
    count, count_more = _capped_count(queryset)
    for row in rows:
        row.health_status = health.device_status(row)  # type: ignore[attr-defined]
    context = {
        "devices": rows,
        "applied": applied,
        "count": count,
        "count_more": count_more,
        "next_after": rows[-1].identifier if rows and has_next else None,
        "prev_before": rows[0].identifier if rows and has_prev else None,
        "deployment_choices": Deployment.objects.filter(org=access.org).only("pk", "name").order_by("name"),
        "now": timezone.now(),
        "tags_form": TagsForm(),
    }
    return _render(request, access, "web/devices.html", context)


@page
@org_methods("POST")
def device_bulk_tags(request: HttpRequest, org: str) -> HttpResponse:
    access = get_org_for_user(request, org, Role.MANAGE)
    form = TagsForm(request.POST)
    ids = [i for i in (parse_int(v) for v in request.POST.getlist("device")) if i is not None]
    operation = request.POST.get("operation")
    if not form.is_valid() or not ids or operation not in ("add", "remove"):
        messages.error(request, "Choose devices, tags and whether to add or remove them.")
    else:
        targets = Device.objects.filter(org=access.org, deleted_at__isnull=True, pk__in=ids)
        tags = split_tags(form.cleaned_data["tags"])
        try:
            if operation == "add":
                changed = devices.add_tags(_user(request), targets, tags)
            else:
                changed = devices.remove_tags(_user(request), targets, tags)
            messages.success(request, f"Tags changed on {changed} device(s).")
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
    back = request.POST.get("next") or ""
    return redirect(back if back.startswith(_org_url(access, "devices")) else _org_url(access, "devices"))


def _device(access: OrgAccess, pk: int) -> Device:
    return get_object_or_404(
        Device.objects.select_related("product", "deployment", "hub_lease"),
        pk=pk,
        org=access.org,
        deleted_at__isnull=True,
    )


def _console_url(device: Device) -> str | None:
    try:
        return reverse("console:page", args=[device.pk])
    except NoReverseMatch:
        return None


@page
@org_methods("GET")
def device_detail(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    access = get_org_for_user(request, org)
    device = _device(access, pk)
    context = {
        "device": device,
        "updates": DeviceUpdate.objects.filter(device=device)
        .select_related("firmware", "deployment")
        .order_by("-created_at")[:20],
        "events": visible_events(_subject_events(access, "device", device.pk)[:20], access.role),
        "console_url": _console_url(device),
        "in_penalty_box": device.in_penalty_box(),
        "tags_text": " ".join(device.tags),
    }
    series, alarmed = health.history(device)
    context.update(
        {
            "health_status": health.device_status(device),
            "health_series": series,
            "alarmed_reports": alarmed[:20],
            "map": charts.map_view(device.location, settings.MAP_TILE_URL),
        }
    )
    return _render(request, access, "web/device.html", context)


DEVICE_ACTIONS: dict[str, tuple[str, Callable[[User, Device], object]]] = {
    "reboot": ("Reboot requested.", lambda actor, d: devices.reboot_device(actor, d)),
    "identify": ("Identify requested.", lambda actor, d: devices.identify_device(actor, d)),
    "reconnect": ("Reconnect requested.", lambda actor, d: devices.reconnect_device(actor, d)),
    "health_check": ("Health check requested.", lambda actor, d: devices.request_health_check(actor, d)),
    "enable_updates": (
        "Updates enabled.",
        lambda actor, d: devices.set_updates_enabled(actor, Device.objects.filter(pk=d.pk), True),
    ),
    "disable_updates": (
        "Updates disabled.",
        lambda actor, d: devices.set_updates_enabled(actor, Device.objects.filter(pk=d.pk), False),
    ),
    "clear_penalty_box": (
        "Penalty box cleared.",
        lambda actor, d: devices.clear_penalty_box(actor, Device.objects.filter(pk=d.pk)),
    ),
}


@page
@org_methods("POST")
def device_action(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    access = get_org_for_user(request, org, Role.MANAGE)
    device = _device(access, pk)
    action = request.POST.get("action", "")
    if action == "set_tags":
        try:
            devices.set_tags(_user(request), device, split_tags(request.POST.get("tags", "")))
            messages.success(request, "Tags saved.")
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
    elif action in DEVICE_ACTIONS:
        text, call = DEVICE_ACTIONS[action]
        call(_user(request), device)
        messages.success(request, text)
    else:
        messages.error(request, "Unknown action.")
    return redirect("web:device", access.slug, device.pk)


# --- Firmware, keys, certificates ------------------------------------------------------------


@page
def firmware_list(request: HttpRequest, org: str) -> HttpResponseBase:
    access = get_org_for_user(request, org)
    form = UploadForm(org=access.org)
    if request.method == "POST":
        access = get_org_for_user(request, org, Role.MANAGE)
        form = UploadForm(request.POST, request.FILES, org=access.org)
        wants_json = request.headers.get("Accept", "").startswith("application/json")
        if form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                row = firmware_services.upload_firmware(
                    _user(request), form.cleaned_data["product"], upload, upload.name, kind=form.cleaned_data["kind"]
                )
            except (firmware_services.UploadRefused, firmware_services.StorageUnavailable) as exc:
                if wants_json:
                    status = 503 if isinstance(exc, firmware_services.StorageUnavailable) else 400
                    return JsonResponse({"error": str(exc)}, status=status)
                messages.error(request, str(exc))
                return redirect("web:firmware", access.slug)
            if wants_json:
                return JsonResponse(
                    {"id": row.pk, "status_url": _org_url(access, "firmware_status", row.pk)}, status=201
                )
            messages.success(request, f"{upload.name} uploaded; validating.")
            return redirect("web:firmware", access.slug)
        if wants_json:
            return JsonResponse(
                {"error": "; ".join(f"{k}: {' '.join(str(m) for m in v)}" for k, v in form.errors.items())}, status=400
            )
    rows = Firmware.objects.filter(org=access.org)
    shown = request.GET.get("status") or ""
    if shown in FirmwareStatus.values:
        rows = rows.filter(status=shown)
    else:
        shown = ""
    rows = rows.select_related("product").order_by("-created_at")[:200]
    context = {"firmware": rows, "form": form, "shown": shown, "statuses": FirmwareStatus.choices}
    return _render(request, access, "web/firmware.html", context)


@page
@org_methods("GET")
def firmware_status(request: HttpRequest, org: str, pk: int) -> JsonResponse:
    access = get_org_for_user(request, org)
    row = get_object_or_404(Firmware.objects.select_related("product"), pk=pk, org=access.org)
    return JsonResponse(
        {
            "id": row.pk,
            "status": row.status,
            "status_label": FirmwareStatus(row.status).label,
            "reason": row.rejected_reason,
            "version": row.version,
            "uuid": row.uuid,
            "done": row.status != FirmwareStatus.PENDING,
            # What the list needs to show a just-uploaded file as a row.
            "product": row.product.name,
            "kind_label": row.get_kind_display(),
            "filename": row.original_filename,
            "size": row.size,
            "delta_fwup_version": row.delta_fwup_version,
            "url": _org_url(access, "firmware_detail", row.pk),
        }
    )


@page
@org_methods("POST")
def firmware_delete(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    return _delete_row(
        request,
        org,
        Role.MANAGE,
        Firmware.objects.all(),
        pk,
        firmware_services.delete_firmware,
        firmware_services.FirmwareInUse,
        "Firmware deleted.",
        "web:firmware",
    )


@page
def signing_keys(request: HttpRequest, org: str) -> HttpResponse:
    access, form, done = _create_from_form(
        request,
        org,
        Role.ADMIN,
        lambda access, data: SigningKeyForm(data),
        lambda user, access, data: firmware_services.create_signing_key(user, access.org, data["name"], data["key"]),
        (),
        "Signing key added.",
        "web:keys",
    )
    if done is not None:
        return done
    rows = SigningKey.objects.filter(org=access.org).order_by("name")
    return _render(request, access, "web/keys.html", {"keys": rows, "form": form})


@page
@org_methods("POST")
def signing_key_delete(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    return _delete_row(
        request,
        org,
        Role.ADMIN,
        SigningKey.objects.all(),
        pk,
        firmware_services.delete_signing_key,
        firmware_services.SigningKeyInUse,
        "Signing key deleted.",
        "web:keys",
    )


@page
def ca_certificates(request: HttpRequest, org: str) -> HttpResponse:
    access, form, done = _create_from_form(
        request,
        org,
        Role.ADMIN,
        lambda access, data: CACertificateForm(data, org=access.org),
        lambda user, access, data: certificates.register_ca_certificate(
            user,
            access.org,
            data["pem"],
            description=data["description"],
            jitp_product=data["jitp_product"],
            verification_pem=data["verification_pem"],
        ),
        (certificates.CertificateError,),
        "CA certificate registered.",
        "web:certificates",
    )
    if done is not None:
        return done
    rows = CACertificate.objects.filter(org=access.org).select_related("jitp_product").order_by("-created_at")
    context = {
        "cas": rows,
        "form": form,
        "verification_code": certificates.verification_code(access.org) if access.is_admin else None,
        "verify_form": CAVerifyForm(),
    }
    return _render(request, access, "web/certificates.html", context)


@page
@org_methods("POST")
def ca_certificate_verify(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    """Verify a CA registered before proof of possession was required."""
    access = get_org_for_user(request, org, Role.ADMIN)
    ca = get_object_or_404(CACertificate.objects.select_related("org"), pk=pk, org=access.org)
    form = CAVerifyForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Paste the verification certificate.")
        return redirect("web:certificates", access.slug)
    try:
        certificates.verify_ca_certificate(_user(request), ca, form.cleaned_data["verification_pem"])
        messages.success(request, "CA certificate verified.")
    except certificates.CertificateError as exc:
        messages.error(request, str(exc))
    return redirect("web:certificates", access.slug)


@page
@org_methods("POST")
def ca_certificate_delete(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    return _delete_row(
        request,
        org,
        Role.ADMIN,
        CACertificate.objects.all(),
        pk,
        lambda user, ca: certificates.delete_ca_certificates(user, [ca]),
        (),
        "CA certificate deleted.",
        "web:certificates",
    )


# --- Deployments -------------------------------------------------------------------------------


def _deployment(access: OrgAccess, pk: int) -> Deployment:
    return get_object_or_404(Deployment.objects.select_related("product", "firmware"), pk=pk, org=access.org)


@page
@org_methods("GET")
def deployment_list(request: HttpRequest, org: str) -> HttpResponse:
    access = get_org_for_user(request, org)
    rows = (
        Deployment.objects.filter(org=access.org)
        .select_related("product", "firmware")
        .order_by("product__name", "name")
    )
    return _render(request, access, "web/deployments.html", {"deployments": rows})


@page
def deployment_form(request: HttpRequest, org: str, pk: int | None = None) -> HttpResponse:
    access = get_org_for_user(request, org, Role.MANAGE)
    instance = _deployment(access, pk) if pk is not None else Deployment(org=access.org)
    form = DeploymentForm(request.POST or None, instance=instance, org=access.org)
    if request.method == "POST" and form.is_valid():
        deployment = form.save(commit=False)
        try:
            moved = rollout.save_deployment(_user(request), deployment, form.changed_data, via="web")
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f"Deployment saved; {moved} device(s) changed deployment.")
            return redirect("web:deployment", access.slug, deployment.pk)
    return _render(request, access, "web/deployment_form.html", {"form": form, "deployment": instance if pk else None})


@page
@org_methods("GET")
def deployment_detail(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    access = get_org_for_user(request, org)
    deployment = _deployment(access, pk)
    context = {
        "deployment": deployment,
        "progress": _progress(access, deployment),
        "progress_url": _org_url(access, "deployment_progress", deployment.pk),
        "events": visible_events(_subject_events(access, "deployment", deployment.pk)[:10], access.role),
        "deltas": deltas.pairs(deployment),
        "deltas_available": firmware_deltas.deltas_available(),
        "window_note": windows.closed_reason(rollout.current_windows(deployment), timezone.now()),
    }
    timeline = rollout_timeline(deployment)
    context["timeline_chart"] = charts.multi_line_chart(timeline.series()) if timeline else None
    return _render(request, access, "web/deployment.html", context)


def _readable_time(moment: datetime) -> str:
    """ "2026-12-07 10:09:12 UTC (3 minutes ago)": what people read in a list."""
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({timesince(moment)} ago)"


def _progress(access: OrgAccess, deployment: Deployment) -> dict[str, Any]:
    counts = rollout.progress(deployment)
    failed = (
        DeviceUpdate.objects.filter(
            deployment=deployment,
            firmware_id=deployment.firmware_id,
            status__in=(*FAILED_STATUSES, UpdateStatus.IGNORED),
        )
        .select_related("device")
        .order_by("-updated_at")[:20]
    )
    inflight = sum(
        counts.get(s, 0) for s in ("requested", "received", "started", "downloading", "updating", "completed")
    )
    members = counts.get("members", 0)
    on_target = counts.get("on_target", 0)
    return {
        "counts": counts,
        "members": members,
        "on_target": on_target,
        "inflight": inflight,
        "percent": round(100 * on_target / members) if members else 0,
        "is_active": deployment.is_active,
        "paused": deployment.paused_at is not None,
        "paused_reason": deployment.paused_reason,
        "failures": [
            {
                "device": u.device.identifier,
                "device_url": _org_url(access, "device", u.device_id),
                "status": u.status,
                "reason": u.reason,
                "at": _readable_time(u.updated_at),
                "at_iso": u.updated_at.isoformat(),
            }
            for u in failed
        ],
    }


@page
@org_methods("GET")
def deployment_progress(request: HttpRequest, org: str, pk: int) -> JsonResponse:
    access = get_org_for_user(request, org)
    deployment = _deployment(access, pk)
    return JsonResponse(_progress(access, deployment))


@page
@org_methods("GET")
def deployment_preview(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    access = get_org_for_user(request, org)
    deployment = _deployment(access, pk)
    rows = rollout.preview(deployment, limit=200)
    context = {
        "deployment": deployment,
        "rows": rows,
        "eligible": sum(1 for r in rows if r.eligible),
        "refusing": sum(1 for r in rows if r.preflight),
        "window_note": windows.closed_reason(rollout.current_windows(deployment), timezone.now()),
    }
    return _render(request, access, "web/deployment_preview.html", context)


@page
@org_methods("POST")
def deployment_action(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    access = get_org_for_user(request, org, Role.MANAGE)
    deployment = _deployment(access, pk)
    user = _user(request)
    action = request.POST.get("action", "")
    if action in rollout.SWITCHES:
        try:
            rollout.SWITCHES[action](user, deployment)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            if action == "activate":
                warning = preflight.check(deployment).summary()
                if warning:
                    messages.warning(request, warning)
    elif action == "retry_failed":
        count = rollout.retry_failed(user, deployment)
        messages.success(request, f"{count} device(s) may try again.")
    else:
        messages.error(request, "Unknown action.")
    return redirect("web:deployment", access.slug, deployment.pk)


# --- Audit log ----------------------------------------------------------------------------------


def _subject_events(access: OrgAccess, subject_type: str, pk: int) -> QuerySet[AuditEvent]:
    # The org filter matters: subject ids are only unique per type, not per org.
    return AuditEvent.objects.filter(org=access.org, subject_type=subject_type, subject_id=str(pk)).order_by("-id")


def _audit_page(request: HttpRequest, access: OrgAccess, events: QuerySet[AuditEvent], title: str) -> HttpResponse:
    before = request.GET.get("before") or ""
    if before:
        before_id = parse_int(before)
        if before_id is None:
            messages.warning(request, "Ignored the page position: it is not a valid value.")
        else:
            events = events.filter(id__lt=before_id)
    rows = list(events[: PAGE_SIZE + 1])
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    context = {
        "events": visible_events(rows, access.role),
        "title": title,
        "next_before": rows[-1].pk if more and rows else None,
    }
    return _render(request, access, "web/audit.html", context)


@page
@org_methods("GET")
def audit_log(request: HttpRequest, org: str) -> HttpResponse:
    access = get_org_for_user(request, org)
    events = AuditEvent.objects.filter(org=access.org).order_by("-id")
    return _audit_page(request, access, events, f"Audit log of {access.org.name}")


@page
@org_methods("GET")
def audit_chain(request: HttpRequest, org: str) -> HttpResponse:
    """Recompute the organization's hash chain and say whether it is intact."""
    access = get_org_for_user(request, org, Role.ADMIN)
    result = audit_chain_service.verify_chain(access.org)
    return _render(request, access, "web/audit_chain.html", {"result": result})


@page
@org_methods("GET")
def audit_export(request: HttpRequest, org: str) -> HttpResponseBase:
    """The chain as JSON lines, hashes included, for verification elsewhere
    (docs/audit-log.md)."""
    access = get_org_for_user(request, org, Role.ADMIN)

    class _Lines:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def write(self, text: str) -> int:
            self.lines.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    out = _Lines()
    audit_chain_service.export_chain(access.org, out)
    tenancy.audit(request.user, "audit.exported", access.org, details={"events": len(out.lines), "via": "pages"})
    response = HttpResponse("".join(out.lines), content_type="application/x-ndjson")
    response["Content-Disposition"] = f'attachment; filename="audit-{access.slug}.jsonl"'
    return response


@page
@org_methods("GET")
def device_audit(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    access = get_org_for_user(request, org)
    device = _device(access, pk)
    return _audit_page(request, access, _subject_events(access, "device", device.pk), f"Audit log of {device}")


@page
@org_methods("GET")
def deployment_audit(request: HttpRequest, org: str, pk: int) -> HttpResponse:
    access = get_org_for_user(request, org)
    deployment = _deployment(access, pk)
    events = _subject_events(access, "deployment", deployment.pk)
    return _audit_page(request, access, events, f"Audit log of deployment {deployment}")
