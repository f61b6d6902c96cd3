"""One write path for deployments: the API, the organization pages and the admin
are adapters over rollout.save_deployment, so they refuse the same deployment
for the same reason and audit each write exactly once."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from deployments.models import Deployment
from firmware.models import Firmware, FirmwareStatus
from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import AuditEvent
from nerveshub.web.access import org_slug
from tests.api.conftest import api_for
from tests.deployments.conftest import make_firmware

pytestmark = pytest.mark.django_db

API = "/orgs/acme/products/widget/deployments"
SETTINGS = {
    "concurrent_updates": 10,
    "inflight_timeout_minutes": 30,
    "penalty_attempts": 3,
    "penalty_rate_attempts": 5,
    "penalty_rate_seconds": 180,
    "penalty_minutes": 1440,
    "breaker_failure_percent": 20,
    "breaker_min_attempts": 10,
}


def _logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _via_api(tenant: Any, name: str, firmware: Firmware, version: str = "") -> tuple[int, dict[str, list[str]]]:
    body = {"name": name, "firmware": firmware.uuid, "conditions": {"version": version}}
    response = api_for(tenant.manager).post(API, body)
    return response.status_code, response.json().get("errors", {})


def _via_page(tenant: Any, name: str, firmware: Firmware, version: str = "") -> tuple[int, dict[str, list[str]]]:
    form = {"product": tenant.product.pk, "name": name, "firmware": firmware.pk, "conditions_version": version}
    url = f"/org/{org_slug(tenant.org)}/deployments/new/"
    response = _logged_in(tenant.manager).post(url, {**form, **SETTINGS})
    errors = response.context["form"].errors if response.status_code == 200 else {}
    return response.status_code, {k: list(v) for k, v in errors.items()}


def _via_admin(tenant: Any, name: str, firmware: Firmware, version: str = "") -> tuple[int, dict[str, list[str]]]:
    form = {
        "org": tenant.org.pk,
        "product": tenant.product.pk,
        "name": name,
        "firmware": firmware.pk,
        "conditions_tags": "[]",
        "conditions_version": version,
        "stages-TOTAL_FORMS": 0,
        "stages-INITIAL_FORMS": 0,
    }
    response = _logged_in(tenant.manager).post(reverse("admin:deployments_deployment_add"), {**form, **SETTINGS})
    errors = response.context["adminform"].form.errors if response.status_code == 200 else {}
    return response.status_code, {k: list(v) for k, v in errors.items()}


ADAPTERS = {"api": _via_api, "page": _via_page, "admin": _via_admin}


def test_it_refuses_a_bad_version_requirement_with_one_reason_everywhere(tenant: Any) -> None:
    # given
    firmware = make_firmware(tenant.product, "2.0.0")
    # when: each adapter is asked for the same invalid deployment
    answers = {via: write(tenant, f"bad-{via}", firmware, ">= 1.0") for via, write in ADAPTERS.items()}
    # then: each refuses it, on the same field, with the same words
    assert answers["api"][0] == 422
    assert answers["page"][0] == answers["admin"][0] == 200
    reasons = {via: errors.get("conditions_version") for via, (_, errors) in answers.items()}
    assert reasons["api"] and reasons["api"] == reasons["page"] == reasons["admin"], reasons
    assert not Deployment.objects.exists()
    assert not AuditEvent.objects.filter(subject_type="deployment").exists()


def test_it_refuses_firmware_that_is_not_validated_with_one_reason(tenant: Any) -> None:
    # given: firmware still being validated (the org pages do not even offer it)
    pending = make_firmware(tenant.product, "2.0.0")
    Firmware.objects.filter(pk=pending.pk).update(status=FirmwareStatus.PENDING)
    pending.refresh_from_db()
    # when
    api = _via_api(tenant, "from-api", pending)
    admin = _via_admin(tenant, "from-admin", pending)
    # then
    assert api == (422, {"firmware": ["Only validated firmware can be deployed."]})
    assert admin == (200, {"firmware": ["Only validated firmware can be deployed."]})
    assert not Deployment.objects.exists()


def test_it_refuses_firmware_of_a_sibling_product_with_one_reason(tenant: Any) -> None:
    # given: firmware of another product of the same organization
    sibling, _ = tenancy.get_or_create_product("test", tenant.org, "sibling")
    foreign = make_firmware(sibling, "2.0.0")
    # when
    page = _via_page(tenant, "from-page", foreign)
    admin = _via_admin(tenant, "from-admin", foreign)
    # then (the API names firmware by uuid inside the product: it answers 404)
    assert page == admin == (200, {"firmware": ["The firmware belongs to another product."]})
    assert _via_api(tenant, "from-api", foreign)[0] == 404
    assert not Deployment.objects.exists()


@pytest.mark.parametrize("via", list(ADAPTERS))
def test_each_adapter_writes_exactly_one_audit_event(tenant: Any, via: str) -> None:
    # given
    firmware = make_firmware(tenant.product, "2.0.0")
    # when
    status, errors = ADAPTERS[via](tenant, "main", firmware, "~> 1.0")
    # then
    assert status in (201, 302), errors
    deployment = Deployment.objects.get(name="main")
    events = AuditEvent.objects.filter(subject_type="deployment", subject_id=str(deployment.pk))
    assert list(events.values_list("action", flat=True)) == ["deployment.created"]
    assert events.get().details["via"] == {"api": "api", "page": "web", "admin": "admin"}[via]


def test_each_adapter_audits_a_change_exactly_once(tenant: Any) -> None:
    # given
    firmware = make_firmware(tenant.product, "2.0.0")
    deployment = Deployment.objects.create(org=tenant.org, product=tenant.product, name="main", firmware=firmware)
    slug = org_slug(tenant.org)
    page_form = {"product": tenant.product.pk, "name": "main", "firmware": firmware.pk, **SETTINGS}
    admin_form = {
        "org": tenant.org.pk,
        "product": tenant.product.pk,
        "name": "main",
        "firmware": firmware.pk,
        "conditions_tags": "[]",
        "stages-TOTAL_FORMS": 0,
        "stages-INITIAL_FORMS": 0,
        **SETTINGS,
    }
    # when
    api = api_for(tenant.manager).patch(API + "/main", {"concurrent_updates": 2})
    page = _logged_in(tenant.manager).post(
        f"/org/{slug}/deployments/{deployment.pk}/edit/", {**page_form, "concurrent_updates": 3}
    )
    admin = _logged_in(tenant.manager).post(
        reverse("admin:deployments_deployment_change", args=[deployment.pk]), {**admin_form, "concurrent_updates": 4}
    )
    # then
    assert (api.status_code, page.status_code, admin.status_code) == (200, 302, 302)
    deployment.refresh_from_db()
    assert deployment.concurrent_updates == 4
    changed = AuditEvent.objects.filter(subject_type="deployment", action="deployment.changed").order_by("id")
    assert [e.details["via"] for e in changed] == ["api", "web", "admin"]
