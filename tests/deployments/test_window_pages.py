"""Maintenance windows and trust preflight on the organization pages and in
the admin: form errors with reasons, the activation's warning or refusal,
the preview's columns, and refusals for lesser roles."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from deployments.models import Deployment, Preflight
from firmware.models import Firmware, SigningKey
from nerveshub.tenancy.models import Product
from nerveshub.web.access import org_slug
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware
from tests.support.fwup import generate_keypair

pytestmark = pytest.mark.django_db


@pytest.fixture
def signed(tenant: Tenant) -> Deployment:
    key = SigningKey.objects.create(org=tenant.org, name="release", key=generate_keypair().public)
    firmware = make_firmware(tenant.product, "2.0.0")
    Firmware.objects.filter(pk=firmware.pk).update(signing_key=key)
    make_device(tenant.product, "keyless")
    return Deployment.objects.create(org=tenant.org, product=tenant.product, name="main", firmware=firmware)


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _form(deployment: Deployment, **changes: Any) -> dict[str, Any]:
    return {
        "product": deployment.product_id,
        "name": deployment.name,
        "firmware": deployment.firmware_id,
        "conditions_tags": "",
        "conditions_version": "",
        "windows": "",
        "preflight": deployment.preflight,
        "concurrent_updates": 10,
        "inflight_timeout_minutes": 30,
        "penalty_attempts": 3,
        "penalty_rate_attempts": 5,
        "penalty_rate_seconds": 180,
        "penalty_minutes": 60,
        "breaker_failure_percent": 20,
        "breaker_min_attempts": 10,
        **changes,
    }


def test_the_form_saves_windows_one_per_line_and_shows_them(tenant: Tenant, signed: Deployment) -> None:
    # given
    client = _client(tenant.manager)
    slug = org_slug(tenant.org)
    edit = f"/org/{slug}/deployments/{signed.pk}/edit/"
    # when
    response = client.post(
        edit, _form(signed, windows="mon-fri 01:00-05:00 Europe/Berlin\n\nsat 22:00-02:00 UTC\n", preflight="refuse")
    )
    # then
    assert response.status_code == 302, response.content
    signed.refresh_from_db()
    assert signed.windows == ["mon-fri 01:00-05:00 Europe/Berlin", "sat 22:00-02:00 UTC"]
    assert signed.preflight == Preflight.REFUSE
    assert "mon-fri 01:00-05:00 Europe/Berlin\nsat 22:00-02:00 UTC" in client.get(edit).content.decode()
    page = client.get(f"/org/{slug}/deployments/{signed.pk}/").content.decode()
    assert "<code>mon-fri 01:00-05:00 Europe/Berlin</code>" in page


def test_the_form_shows_why_a_window_is_refused(tenant: Tenant, signed: Deployment) -> None:
    response = _client(tenant.manager).post(
        f"/org/{org_slug(tenant.org)}/deployments/{signed.pk}/edit/",
        _form(signed, windows="mon-fri 01:00-05:00 Moon/Base\nmon 04:00-04:00 UTC"),
    )
    assert response.status_code == 200
    errors = response.context["form"].errors["windows"]
    assert any("unknown time zone 'Moon/Base'" in e for e in errors)
    assert any("the range 04:00-04:00 is empty" in e for e in errors)
    assert Deployment.objects.get(pk=signed.pk).windows == []


def test_activating_on_the_page_warns_or_refuses(tenant: Tenant, signed: Deployment) -> None:
    client = _client(tenant.manager)
    slug = org_slug(tenant.org)
    action = f"/org/{slug}/deployments/{signed.pk}/action/"
    # under refuse: an error, and nothing activated
    Deployment.objects.filter(pk=signed.pk).update(preflight=Preflight.REFUSE)
    refused = client.post(action, {"action": "activate"}, follow=True).content.decode()
    assert "Not activated: 1 of 1 matching device(s) would refuse this firmware" in refused
    assert not Deployment.objects.get(pk=signed.pk).is_active
    # under warn: activated, with the warning and the count
    Deployment.objects.filter(pk=signed.pk).update(preflight=Preflight.WARN)
    warned = client.post(action, {"action": "activate"}, follow=True).content.decode()
    assert "1 of 1 matching device(s) would refuse this firmware: keyless: does not have the signing key" in warned
    assert Deployment.objects.get(pk=signed.pk).is_active


def test_the_preview_shows_the_window_and_the_preflight(tenant: Tenant, signed: Deployment) -> None:
    Deployment.objects.filter(pk=signed.pk).update(windows=["mon 01:00-01:01 Pacific/Kiritimati"])
    page = _client(tenant.viewer).get(f"/org/{org_slug(tenant.org)}/deployments/{signed.pk}/preview/")
    text = page.content.decode()
    assert "outside the maintenance window; next window opens Mon" in text
    assert "does not have the signing key release" in text
    assert page.context["refusing"] == 1


def test_a_viewer_and_an_outsider_cannot_change_windows_or_activate(tenant: Tenant, signed: Deployment) -> None:
    slug = org_slug(tenant.org)
    for user in (tenant.viewer, tenant.outsider):
        client = _client(user)
        edit = client.post(f"/org/{slug}/deployments/{signed.pk}/edit/", _form(signed, windows="daily 00:00-24:00 UTC"))
        act = client.post(f"/org/{slug}/deployments/{signed.pk}/action/", {"action": "activate"})
        assert edit.status_code in (403, 404) and act.status_code in (403, 404), user
    signed.refresh_from_db()
    assert signed.windows == [] and not signed.is_active


def test_the_admin_activation_refuses_with_the_reason(tenant: Tenant, signed: Deployment) -> None:
    Deployment.objects.filter(pk=signed.pk).update(preflight=Preflight.REFUSE)
    client = _client(tenant.manager)
    response = client.post(
        reverse("admin:deployments_deployment_changelist"),
        {"action": "activate", "_selected_action": [signed.pk]},
        follow=True,
    )
    assert "Not activated: 1 of 1 matching device(s)" in response.content.decode()
    assert not Deployment.objects.get(pk=signed.pk).is_active
    viewer = _client(tenant.viewer)
    Deployment.objects.filter(pk=signed.pk).update(preflight=Preflight.WARN)
    viewer.post(
        reverse("admin:deployments_deployment_changelist"), {"action": "activate", "_selected_action": [signed.pk]}
    )
    assert not Deployment.objects.get(pk=signed.pk).is_active


def test_the_product_admin_offers_only_the_organizations_keys(tenant: Tenant, other_tenant: Tenant) -> None:
    own = SigningKey.objects.create(org=tenant.org, name="own", key=generate_keypair().public)
    theirs = SigningKey.objects.create(org=other_tenant.org, name="theirs", key=generate_keypair().public)
    client = _client(tenant.manager)
    url = reverse("admin:tenancy_product_change", args=[tenant.product.pk])
    form = {
        "org": tenant.org.pk,
        "name": tenant.product.name,
        "description": "",
        "extensions": '["health"]',
        "poll_interval_seconds": 3600,
    }
    refused = client.post(url, {**form, "builtin_keys": [theirs.pk]})
    assert refused.status_code == 200 and "builtin_keys" in refused.context["adminform"].form.errors
    saved = client.post(url, {**form, "builtin_keys": [own.pk]})
    assert saved.status_code == 302
    assert list(Product.objects.get(pk=tenant.product.pk).builtin_keys.all()) == [own]


def test_a_stage_gets_its_windows_in_the_admin(tenant: Tenant, signed: Deployment) -> None:
    # given: the hub's operator (stages are edited inline, with Django's model permissions)
    client = _client(User.objects.create_superuser("root", "root@example.com", "pw"))
    url = reverse("admin:deployments_deployment_change", args=[signed.pk])
    form = {
        "org": tenant.org.pk,
        "product": tenant.product.pk,
        "name": signed.name,
        "firmware": signed.firmware_id,
        "conditions_tags": "[]",
        "conditions_version": "",
        "windows": "",
        "preflight": "warn",
        "concurrent_updates": 10,
        "inflight_timeout_minutes": 30,
        "penalty_attempts": 3,
        "penalty_rate_attempts": 5,
        "penalty_rate_seconds": 180,
        "penalty_minutes": 1440,
        "breaker_failure_percent": 20,
        "breaker_min_attempts": 10,
        "stages-TOTAL_FORMS": 2,
        "stages-INITIAL_FORMS": 0,
        "stages-0-position": 1,
        "stages-0-name": "canary",
        "stages-0-size_count": 1,
        "stages-0-soak_minutes": 0,
        "stages-0-windows": "sat 10:00-12:00 Europe/Paris",
        "stages-1-position": 2,
        "stages-1-name": "rest",
        "stages-1-size_percent": 100,
        "stages-1-soak_minutes": 0,
        "stages-1-windows": "",
    }
    # when
    bad = client.post(url, {**form, "stages-0-windows": "sat 10:00-10:00 Europe/Paris"})
    saved = client.post(url, form)
    # then
    assert bad.status_code == 200 and "the range 10:00-10:00 is empty" in bad.content.decode()
    assert saved.status_code == 302, saved.content.decode()[-3000:]
    stages = {s.name: s.windows for s in signed.stages.all()}
    assert stages == {"canary": ["sat 10:00-12:00 Europe/Paris"], "rest": []}
