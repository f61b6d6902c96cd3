"""Generated from the admin registry: for every registered model and every admin
action, an outsider (admin of another organization) and a viewer change nothing
of this organization's rows, and the outsider cannot even see them. A positive
control proves the harness notices changes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import User
from django.db import models
from django.db.models import Model
from django.test import Client, RequestFactory
from django.urls import NoReverseMatch, reverse
from pytest_django.fixtures import Settings

from certificates import pki
from certificates import services as cert_services
from deployments import rollout
from deployments.models import Deployment, DeploymentStage, DeviceUpdate
from devices import scripts
from devices import services as device_services
from devices.models import ConnectionStatus, Device, SupportScript
from firmware.models import Firmware, FirmwareStatus, SigningKey
from nerveshub.admin_base import OrgScopedAdmin
from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import APIToken, AuditEvent
from tests.certificates.proof import register_ca
from tests.conftest import Tenant
from tests.support.fwup import generate_keypair


@pytest.fixture
def world(tenant: Tenant, settings: Settings) -> Any:
    """One of everything in the tenant's organization."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    device = device_services.create_device("test", tenant.product, "d1", tags=["eu"])
    Device.objects.filter(pk=device.pk).update(
        connection_status=ConnectionStatus.CONNECTED, device_api_version="2.3.0", firmware_uuid="old"
    )
    device.refresh_from_db()
    device_services.create_product_secret("test", tenant.product)
    device_services.create_device_secret("test", device)
    key = SigningKey.objects.create(org=tenant.org, name="release", key=generate_keypair().public)
    firmware = Firmware.objects.create(
        org=tenant.org,
        product=tenant.product,
        uuid=str(uuid.uuid4()),
        version="2.0.0",
        size=10,
        sha256="ab" * 32,
        storage_name="x/fw.fw",
        status=FirmwareStatus.VALID,
        signing_key=key,
    )
    deployment = Deployment.objects.create(
        org=tenant.org, product=tenant.product, name="main", firmware=firmware, is_active=True
    )
    DeploymentStage.objects.create(deployment=deployment, position=1, name="canary", size_count=1)
    Device.objects.filter(pk=device.pk).update(deployment=deployment, penalty_box_until="2099-01-01T00:00:00Z")
    DeviceUpdate.objects.create(device=device, deployment=deployment, firmware=firmware)
    ca = pki.create_ca("acme device CA")
    register_ca("test", tenant.org, ca, description="main")
    cert_services.register_device_certificate("test", device, pki.sign_device(ca, "d1").cert_pem)
    script = SupportScript.objects.create(org=tenant.org, product=tenant.product, name="s", text="1 + 1")
    scripts.run_script("test", device, script)
    tenancy.create_api_token("test", tenant.admin, "ci")
    return tenant


def _snapshot() -> dict[str, list[dict[str, Any]]]:
    """Every row of every admin-registered model, plus the audit log."""
    rows = {}
    models: list[type[Model]] = [*admin.site._registry, AuditEvent]
    for model in models:
        values = list(model._default_manager.order_by("pk").values())
        for row in values:
            row.pop("last_login", None)  # logging the personas in is not a change
        rows[model._meta.label] = values
    return rows


def _tenant_rows(model: type[models.Model], model_admin: Any, tenant: Tenant) -> list[Any]:
    if isinstance(model_admin, OrgScopedAdmin):
        lookup = "pk" if model_admin.org_path == "pk" else model_admin.org_path
        return list(model._default_manager.filter(**{lookup: tenant.org.pk}).values_list("pk", flat=True))
    if model is APIToken:
        return list(APIToken.objects.filter(user__in=[tenant.admin, tenant.manager]).values_list("pk", flat=True))
    raise AssertionError(f"{model.__name__}: an admin without tenancy scoping")


def _every_action_post(model_admin: Any, pks: list[Any], superuser: Any) -> list[dict[str, Any]]:
    request = RequestFactory().post("/")
    request.user = superuser
    posts = []
    for name in model_admin.get_actions(request):
        posts.append(
            {
                "action": name,
                ACTION_CHECKBOX_NAME: [str(pk) for pk in pks],
                # What confirmation pages ask for, so an allowed action would run.
                "apply": "1",
                "post": "yes",
                "tags": "hacked",
                "script": [str(pk) for pk in SupportScript.objects.values_list("pk", flat=True)][:1],
            }
        )
    return posts


def _urls(model: type[models.Model], pk: Any) -> dict[str, str]:
    meta = model._meta
    urls = {"changelist": reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")}
    for view in ("change", "delete", "history"):
        try:
            urls[view] = reverse(f"admin:{meta.app_label}_{meta.model_name}_{view}", args=[pk])
        except NoReverseMatch:
            pass
    return urls


@pytest.mark.django_db
def test_every_admin_model_and_action_refuses_an_outsider_and_a_viewer(
    world: Tenant, django_user_model: type[User]
) -> None:
    # given
    superuser = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    before = _snapshot()
    checked_models, checked_actions = [], 0
    for persona in (world.outsider, world.viewer):
        client = Client()
        client.force_login(persona)
        for model, model_admin in admin.site._registry.items():
            if model._meta.app_label == "auth":
                # Users and groups: Django's own admin, for the hub's operators only.
                meta = model._meta
                listing = client.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
                assert listing.status_code == 403, (model.__name__, listing.status_code)
                continue
            pks = _tenant_rows(model, model_admin, world)
            if not pks:
                continue
            checked_models.append(model.__name__)
            # when: reading
            urls = _urls(model, pks[0])
            listing = client.get(urls["changelist"])
            if persona == world.outsider:
                shown = listing.context["cl"].result_list if listing.status_code == 200 else []
                assert not [obj for obj in shown if obj.pk in pks], (model.__name__, "listed to an outsider")
                for view in ("change", "history"):
                    if view in urls:
                        status = client.get(urls[view]).status_code
                        assert status in (302, 403, 404), (model.__name__, view, status)
            # when: writing, by every route the admin offers
            if "delete" in urls:
                client.post(urls["delete"], {"post": "yes"})
            for data in _every_action_post(model_admin, pks, superuser):
                client.post(urls["changelist"], data)
                checked_actions += 1
    # then
    assert _snapshot() == before
    assert {"Device", "Deployment", "Firmware", "CACertificate", "DeviceCertificate", "SupportScript"} <= set(
        checked_models
    )
    assert checked_actions >= 20


@pytest.mark.django_db
def test_the_isolation_harness_sees_a_change_made_by_a_member_with_the_role(world: Tenant) -> None:
    # given
    before = _snapshot()
    client = Client()
    client.force_login(world.manager)
    device = Device.objects.get(identifier="d1")
    # when
    client.post(
        reverse("admin:devices_device_changelist"),
        {"action": "clear_penalty_box", ACTION_CHECKBOX_NAME: [str(device.pk)]},
    )
    # then
    assert _snapshot() != before
    assert rollout.update_problems(Deployment.objects.get(), Device.objects.get(pk=device.pk)) is not None
