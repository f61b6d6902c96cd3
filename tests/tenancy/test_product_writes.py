"""One write path for products: the API and the admin are adapters over
tenancy.services.save_product / delete_product, so they refuse the same product
for the same reason and audit each write exactly once."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from nerveshub.tenancy.models import AuditEvent, Product
from tests.api.conftest import api_for
from tests.deployments.conftest import make_firmware

pytestmark = pytest.mark.django_db


def _logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _admin_add(tenant: Any, name: str, extensions: str) -> Any:
    form = {
        "org": tenant.org.pk,
        "name": name,
        "description": "",
        "extensions": extensions,
        "poll_interval_seconds": 3600,
    }
    return _logged_in(tenant.manager).post(reverse("admin:tenancy_product_add"), form)


def test_it_refuses_an_unknown_extension_with_one_reason_everywhere(tenant: Any) -> None:
    # when
    api = api_for(tenant.manager).patch("/orgs/acme/products/widget", {"extensions": ["health", "telepathy"]})
    admin = _admin_add(tenant, "gizmo", '["telepathy"]')
    # then
    reason = ["unknown extensions: telepathy"]
    assert api.status_code == 422 and api.json()["errors"] == {"extensions": reason}
    assert admin.status_code == 200
    assert admin.context["adminform"].form.errors == {"extensions": reason}
    assert not Product.objects.filter(name="gizmo").exists()
    assert Product.objects.get(name="widget").extensions == ["health"]
    assert not AuditEvent.objects.filter(action__in=["product.created", "product.changed"], actor__startswith="user:")


def test_each_adapter_audits_a_create_and_a_delete_exactly_once(tenant: Any) -> None:
    # when
    created_by_api = api_for(tenant.manager).post("/orgs/acme/products", {"name": "from-api"})
    created_by_admin = _admin_add(tenant, "from-admin", '["health"]')
    from_admin = Product.objects.get(name="from-admin")
    deleted_by_api = api_for(tenant.admin).delete("/orgs/acme/products/from-api")
    deleted_by_admin = _logged_in(tenant.admin).post(
        reverse("admin:tenancy_product_delete", args=[from_admin.pk]), {"post": "yes"}
    )
    # then
    assert (created_by_api.status_code, created_by_admin.status_code) == (201, 302)
    assert (deleted_by_api.status_code, deleted_by_admin.status_code) == (204, 302)
    assert not Product.objects.filter(name__startswith="from-").exists()
    events = AuditEvent.objects.filter(subject_type="product", subject__startswith="from-").order_by("id")
    assert [(e.subject, e.action, e.details["via"]) for e in events] == [
        ("from-api", "product.created", "api"),
        ("from-admin", "product.created", "admin"),
        ("from-api", "product.deleted", "api"),
        ("from-admin", "product.deleted", "admin"),
    ]


def test_a_product_with_firmware_is_kept_and_the_api_says_why(tenant: Any) -> None:
    # given
    make_firmware(tenant.product, "1.0.0")
    # when
    response = api_for(tenant.admin).delete("/orgs/acme/products/widget")
    # then
    assert response.status_code == 409
    assert response.json()["errors"] == {
        "detail": "widget still has 1 firmware: delete them or move the devices first."
    }
    assert Product.objects.filter(name="widget").exists()
    assert not AuditEvent.objects.filter(action="product.deleted").exists()


def test_the_admin_sets_health_limits_with_the_same_checks_as_the_api(tenant: Any) -> None:
    url = reverse("admin:tenancy_product_change", args=[tenant.product.pk])
    form = {
        "org": tenant.org.pk,
        "name": "widget",
        "description": "",
        "extensions": '["health"]',
        "poll_interval_seconds": 3600,
    }
    client = _logged_in(tenant.manager)
    # when: the warning limit above the unhealthy one
    refused = client.post(url, {**form, "health_thresholds": '{"cpu_temp": [90, 80]}'})
    api = api_for(tenant.manager).patch("/orgs/acme/products/widget", {"health_thresholds": {"cpu_temp": [90, 80]}})
    # then: the same reason from both, nothing stored
    assert refused.status_code == 200
    errors = refused.context["adminform"].form.errors["health_thresholds"]
    assert api.status_code == 422 and api.json()["errors"]["health_thresholds"] == errors
    assert Product.objects.get(pk=tenant.product.pk).health_thresholds == {}
    # when: right limits, then the field emptied
    assert client.post(url, {**form, "health_thresholds": '{"cpu_temp": [70, 85]}'}).status_code == 302
    assert Product.objects.get(pk=tenant.product.pk).health_thresholds == {"cpu_temp": [70, 85]}
    assert client.post(url, {**form, "health_thresholds": ""}).status_code == 302
    # then: back to the hub's defaults
    assert Product.objects.get(pk=tenant.product.pk).health_thresholds == {}
    # and a viewer cannot change them
    viewer = _logged_in(tenant.viewer).post(url, {**form, "health_thresholds": '{"cpu_temp": [1, 2]}'})
    assert viewer.status_code in (302, 403)
    assert Product.objects.get(pk=tenant.product.pk).health_thresholds == {}
