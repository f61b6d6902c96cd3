"""The device pages' writes (create, delete, restore, move) and the product's
health thresholds, with the list's status computed from them."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devices import health
from devices.models import Device
from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import AuditEvent, Membership, Product
from tests.conftest import Tenant
from tests.deployments.conftest import make_device
from tests.web.conftest import Fleet, client_for

pytestmark = pytest.mark.django_db


def _other_product(fleet: Fleet, name: str = "gizmo") -> Product:
    product, _ = tenancy.get_or_create_product("test", fleet.tenant.org, name)
    return product


# --- Create -------------------------------------------------------------------------------


def test_it_creates_a_device(fleet: Fleet) -> None:
    # given
    client = client_for(fleet.tenant.manager)
    # when
    response = client.post(
        f"/org/{fleet.slug}/devices/new/",
        {"product": fleet.tenant.product.pk, "identifier": "sn-100", "tags": "lab, eu", "description": "bench"},
    )
    # then
    device = Device.objects.get(org=fleet.tenant.org, identifier="sn-100")
    assert response.status_code == 302 and response["Location"] == f"/org/{fleet.slug}/devices/{device.pk}/"
    assert (device.tags, device.description, device.product_id) == (["lab", "eu"], "bench", fleet.tenant.product.pk)
    assert AuditEvent.objects.filter(action="device.created", subject_id=str(device.pk)).exists()


def test_it_refuses_a_taken_identifier_and_points_at_the_bin(fleet: Fleet) -> None:
    client = client_for(fleet.tenant.manager)
    url = f"/org/{fleet.slug}/devices/new/"
    taken = client.post(url, {"product": fleet.tenant.product.pk, "identifier": "dev-001"})
    assert taken.status_code == 400 and "already exists" in taken.content.decode()
    # given: the device is deleted
    client.post(f"/org/{fleet.slug}/devices/{fleet.device.pk}/delete/")
    # when
    again = client.post(url, {"product": fleet.tenant.product.pk, "identifier": "dev-001"})
    # then
    assert again.status_code == 400 and "restore it from Deleted devices" in again.content.decode()
    assert Device.objects.filter(identifier="dev-001").count() == 1


@pytest.mark.parametrize("identifier", ["two words", "bad\u202eid", "x" * 201])
def test_it_refuses_a_bad_identifier_on_the_form(fleet: Fleet, identifier: str) -> None:
    response = client_for(fleet.tenant.manager).post(
        f"/org/{fleet.slug}/devices/new/", {"product": fleet.tenant.product.pk, "identifier": identifier}
    )
    assert response.status_code == 400
    assert response.context["form"].errors["identifier"]
    assert not Device.objects.filter(identifier=identifier).exists()


def test_it_offers_only_the_orgs_own_products(fleet: Fleet, other_tenant: Tenant) -> None:
    response = client_for(fleet.tenant.manager).post(
        f"/org/{fleet.slug}/devices/new/", {"product": other_tenant.product.pk, "identifier": "sn-x"}
    )
    assert response.status_code == 400 and response.context["form"].errors["product"]
    assert not Device.objects.filter(identifier="sn-x").exists()


# --- Delete and restore -------------------------------------------------------------------


def test_it_deletes_lists_and_restores_a_device(fleet: Fleet) -> None:
    client = client_for(fleet.tenant.manager)
    base = f"/org/{fleet.slug}/devices/"
    # when: deleted
    response = client.post(f"{base}{fleet.device.pk}/delete/")
    # then: gone from the list and its page, shown among the deleted
    assert response.status_code == 302 and response["Location"] == base
    assert client.get(f"{base}{fleet.device.pk}/").status_code == 404
    assert "dev-001" not in [d.identifier for d in client.get(base).context["devices"]]
    assert [d.identifier for d in client.get(f"{base}deleted/").context["devices"]] == ["dev-001"]
    # when: restored
    restored = client.post(f"{base}{fleet.device.pk}/restore/")
    # then
    assert restored.status_code == 302 and restored["Location"] == f"{base}{fleet.device.pk}/"
    assert Device.objects.get(pk=fleet.device.pk).deleted_at is None
    assert client.get(f"{base}deleted/").context["devices"] == []
    actions = list(AuditEvent.objects.filter(subject_id=str(fleet.device.pk)).values_list("action", flat=True))
    assert actions.count("device.deleted") == 1 and actions.count("device.restored") == 1
    # a live device is not "restored" again: 404, nothing audited
    assert client.post(f"{base}{fleet.device.pk}/restore/").status_code == 404
    assert AuditEvent.objects.filter(action="device.restored").count() == 1


def test_the_deleted_list_searches(fleet: Fleet) -> None:
    for name in ("old-1", "old-2"):
        Device.objects.filter(pk=make_device(fleet.tenant.product, name).pk).update(deleted_at=fleet.device.created_at)
    response = client_for(fleet.tenant.viewer).get(f"/org/{fleet.slug}/devices/deleted/?q=old-2")
    assert [d.identifier for d in response.context["devices"]] == ["old-2"]
    assert b"Restore" not in response.content  # the viewer has no button


# --- Move ---------------------------------------------------------------------------------


def test_it_moves_a_device_to_another_product(fleet: Fleet) -> None:
    # given: the device is in a deployment of its product
    gizmo = _other_product(fleet)
    Device.objects.filter(pk=fleet.device.pk).update(deployment=fleet.deployment)
    client = client_for(fleet.tenant.manager)
    # when
    response = client.post(f"/org/{fleet.slug}/devices/{fleet.device.pk}/move/", {"product": gizmo.pk})
    # then: in the new product, out of the old deployment, audited
    assert response.status_code == 302
    device = Device.objects.get(pk=fleet.device.pk)
    assert (device.product_id, device.deployment_id) == (gizmo.pk, None)
    assert AuditEvent.objects.filter(action="device.moved", subject_id=str(device.pk)).count() == 1
    page = client.get(response["Location"])
    assert "moved to gizmo" in page.content.decode()


def test_it_refuses_a_move_out_of_the_org_or_in_place(fleet: Fleet, other_tenant: Tenant) -> None:
    client = client_for(fleet.tenant.manager)
    url = f"/org/{fleet.slug}/devices/{fleet.device.pk}/move/"
    for product in (other_tenant.product.pk, fleet.tenant.product.pk, "x"):
        response = client.post(url, {"product": product}, follow=True)
        assert response.status_code == 200
        assert "Not moved" in response.content.decode() or "Choose a product" in response.content.decode()
    device = Device.objects.get(pk=fleet.device.pk)
    assert (device.org_id, device.product_id) == (fleet.tenant.org.pk, fleet.tenant.product.pk)
    assert not AuditEvent.objects.filter(action="device.moved").exists()


def test_the_device_page_offers_move_and_delete_to_the_manage_role_only(fleet: Fleet) -> None:
    _other_product(fleet)
    url = f"/org/{fleet.slug}/devices/{fleet.device.pk}/"
    managed = client_for(fleet.tenant.manager).get(url).content.decode()
    assert 'id="move-form"' in managed and 'id="delete-form"' in managed and ">gizmo<" in managed
    viewed = client_for(fleet.tenant.viewer).get(url).content.decode()
    assert 'id="move-form"' not in viewed and 'id="delete-form"' not in viewed


def test_it_disables_and_enables_updates_from_the_device_page(fleet: Fleet) -> None:
    client = client_for(fleet.tenant.manager)
    url = f"/org/{fleet.slug}/devices/{fleet.device.pk}/action/"
    client.post(url, {"action": "disable_updates"})
    assert Device.objects.get(pk=fleet.device.pk).updates_enabled is False
    assert "Enable updates" in client.get(f"/org/{fleet.slug}/devices/{fleet.device.pk}/").content.decode()
    client.post(url, {"action": "enable_updates"})
    assert Device.objects.get(pk=fleet.device.pk).updates_enabled is True


# --- Health thresholds --------------------------------------------------------------------


def test_a_product_sets_its_own_thresholds(fleet: Fleet) -> None:
    # given: a device at 50% CPU, healthy by the hub's defaults
    Device.objects.filter(pk=fleet.device.pk).update(health={"metrics": {"cpu_usage_percent": 50}})
    client = client_for(fleet.tenant.manager)
    assert client.get(f"/org/{fleet.slug}/devices/").context["devices"][0].health_status.level == health.HEALTHY
    # when: the product lowers the CPU limits
    response = client.post(
        f"/org/{fleet.slug}/products/{fleet.tenant.product.pk}/health/",
        {"cpu_usage_percent__warning": "30", "cpu_usage_percent__unhealthy": "45"},
    )
    # then
    assert response.status_code == 302
    product = Product.objects.get(pk=fleet.tenant.product.pk)
    assert product.health_thresholds == {"cpu_usage_percent": [30.0, 45.0]}
    assert AuditEvent.objects.filter(action="product.changed", subject_id=str(product.pk)).exists()
    listed = client.get(f"/org/{fleet.slug}/devices/").context["devices"][0].health_status
    assert listed.level == health.UNHEALTHY and "≥ 45" in listed.reasons[0]
    page = client.get(f"/org/{fleet.slug}/devices/{fleet.device.pk}/")
    assert page.context["health_status"].level == health.UNHEALTHY
    shown = client.get(f"/org/{fleet.slug}/products/{product.pk}/").content.decode()
    assert 'id="thresholds-form"' in shown and "this product" in shown


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"cpu_usage_percent__warning": "90", "cpu_usage_percent__unhealthy": "50"}, "is above the unhealthy one"),
        ({"cpu_usage_percent__warning": "30"}, "Give both limits"),
        ({"cpu_usage_percent__warning": "inf", "cpu_usage_percent__unhealthy": "1"}, "Enter a number"),
        ({"cpu_usage_percent__warning": "abc", "cpu_usage_percent__unhealthy": "1"}, "Enter a number"),
    ],
)
def test_it_refuses_bad_thresholds_with_the_reason(fleet: Fleet, data: dict[str, str], says: str) -> None:
    response = client_for(fleet.tenant.manager).post(
        f"/org/{fleet.slug}/products/{fleet.tenant.product.pk}/health/", data
    )
    assert response.status_code == 400 and says in response.content.decode()
    assert Product.objects.get(pk=fleet.tenant.product.pk).health_thresholds == {}


def test_clearing_a_pair_goes_back_to_the_default_and_keeps_other_metrics(fleet: Fleet) -> None:
    product = fleet.tenant.product
    product.health_thresholds = {"cpu_usage_percent": [1, 2], "fan_rpm": [4000, 6000]}
    tenancy.save_product("test", product, ["health_thresholds"], via="test")
    client_for(fleet.tenant.manager).post(f"/org/{fleet.slug}/products/{product.pk}/health/", {})
    assert Product.objects.get(pk=product.pk).health_thresholds == {"fan_rpm": [4000, 6000]}


def test_the_service_refuses_bad_thresholds_from_any_adapter(fleet: Fleet) -> None:
    from django.core.exceptions import ValidationError

    product = fleet.tenant.product
    for bad in ([1, 2], {"cpu_usage_percent": [2]}, {"cpu_usage_percent": [True, 3]}, {"": [1, 2]}):
        product.health_thresholds = bad
        with pytest.raises(ValidationError) as refused:
            tenancy.save_product("test", product, ["health_thresholds"], via="test")
        assert "health_thresholds" in refused.value.message_dict


def test_thresholds_override_the_defaults_per_metric(settings: Any) -> None:
    settings.HEALTH_THRESHOLDS = {"cpu_usage_percent": (80, 90), "mem_used_percent": (70, 80)}
    merged = health.thresholds_for({"cpu_usage_percent": [10, 20], "bogus": "x"})
    assert merged == {"cpu_usage_percent": (10.0, 20.0), "mem_used_percent": (70, 80)}
    assert health.thresholds_for(None) == settings.HEALTH_THRESHOLDS


def test_the_list_computes_health_for_10000_devices_with_a_fixed_number_of_queries(
    fleet: Fleet, django_assert_num_queries: Any
) -> None:
    # given: 10 000 devices in two products with different CPU limits, all at 50% CPU
    strict = _other_product(fleet, "strict")
    strict.health_thresholds = {"cpu_usage_percent": [20, 40]}
    tenancy.save_product("test", strict, ["health_thresholds"], via="test")
    report = {"metrics": {"cpu_usage_percent": 50}}
    Device.objects.bulk_create(
        (
            Device(
                org=fleet.tenant.org,
                product=strict if i % 2 else fleet.tenant.product,
                identifier=f"bulk-{i:05d}",
                health=report,
            )
            for i in range(10_000)
        ),
        batch_size=2000,
    )
    client = client_for(fleet.tenant.viewer)
    client.get(f"/org/{fleet.slug}/devices/")  # warm the session
    # when: session, user, memberships with their orgs, page rows (products joined), capped count, deployments
    started = time.perf_counter()
    with django_assert_num_queries(6):
        response = client.get(f"/org/{fleet.slug}/devices/?after=bulk-05000")
    elapsed = time.perf_counter() - started
    # then: each row's status follows its own product's limits
    levels = {(d.product.name, d.health_status.level) for d in response.context["devices"]}
    assert levels == {("widget", health.HEALTHY), ("strict", health.UNHEALTHY)}
    assert response.context["count_more"] is True  # 10 001 devices: the count stops at the cap
    assert elapsed < 5, f"the page took {elapsed:.2f}s"


# --- Refusals ------------------------------------------------------------------------------

WRITES = [
    ("devices/new/", {"identifier": "sn-9"}),
    ("devices/{device}/delete/", {}),
    ("devices/{device}/restore/", {}),
    ("devices/{device}/move/", {"product": "1"}),
    ("products/{product}/health/", {"cpu_usage_percent__warning": "1", "cpu_usage_percent__unhealthy": "2"}),
]


@pytest.mark.parametrize(("route", "data"), WRITES)
def test_a_removed_member_is_refused(fleet: Fleet, route: str, data: dict[str, str]) -> None:
    # given: the manager was a member, and is removed
    client = client_for(fleet.tenant.manager)
    Membership.objects.filter(user=fleet.tenant.manager, org=fleet.tenant.org).delete()
    url = f"/org/{fleet.slug}/" + route.format(device=fleet.device.pk, product=fleet.tenant.product.pk)
    # when / then: as an outsider, nothing is confirmed and nothing changes
    assert client.post(url, data).status_code == 404
    assert client.get(f"/org/{fleet.slug}/devices/deleted/").status_code == 404
    assert Device.objects.get(pk=fleet.device.pk).deleted_at is None
    assert not AuditEvent.objects.filter(actor_user=fleet.tenant.manager).exists()


@pytest.mark.parametrize(("route", "data"), WRITES)
def test_a_viewer_changes_nothing(fleet: Fleet, route: str, data: dict[str, str]) -> None:
    url = f"/org/{fleet.slug}/" + route.format(device=fleet.device.pk, product=fleet.tenant.product.pk)
    assert client_for(fleet.tenant.viewer).post(url, data).status_code == 403
    assert Device.objects.get(pk=fleet.device.pk).deleted_at is None
    assert Product.objects.get(pk=fleet.tenant.product.pk).health_thresholds == {}


# --- Hostile input -------------------------------------------------------------------------

HUGE = "9" * 30


@pytest.mark.parametrize(
    ("route", "data"),
    [
        ("devices/new/", {"product": HUGE, "identifier": "sn-1"}),
        ("devices/new/", {"product": "1", "identifier": "sn\x00-1", "tags": "a\x00b", "description": "\x00"}),
        ("devices/{device}/move/", {"product": HUGE}),
        ("devices/{device}/move/", {"product": "\x00"}),
        ("products/{product}/health/", {"cpu_usage_percent__warning": "1e400", "cpu_usage_percent__unhealthy": HUGE}),
        ("products/{product}/health/", {"cpu_usage_percent__warning": "\x00", "cpu_usage_percent__unhealthy": "-1"}),
    ],
)
def test_hostile_input_is_refused_with_a_reason_not_a_500(fleet: Fleet, route: str, data: dict[str, str]) -> None:
    url = f"/org/{fleet.slug}/" + route.format(device=fleet.device.pk, product=fleet.tenant.product.pk)
    response = client_for(fleet.tenant.manager).post(url, data, follow=True)
    assert response.status_code in (200, 400)
    text = response.content.decode()
    assert "errorlist" in text or "Choose a product" in text
    assert Device.objects.filter(org=fleet.tenant.org).count() == 1


@pytest.mark.parametrize("query", ["?q=%00", "?q=" + "x" * 5000])
def test_the_deleted_list_takes_any_search(fleet: Fleet, query: str) -> None:
    assert client_for(fleet.tenant.viewer).get(f"/org/{fleet.slug}/devices/deleted/{query}").status_code == 200
