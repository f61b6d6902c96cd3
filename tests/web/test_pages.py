from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks

from certificates import pki
from certificates.models import CACertificate
from deployments.models import Deployment
from devices.models import Device
from firmware import services as firmware_services
from firmware.models import Firmware, SigningKey
from nerveshub.tenancy.models import AuditEvent
from tests.certificates.proof import add_unverified_ca, verification_pem
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware
from tests.support.fwup import FirmwareSpec, build_firmware, generate_keypair
from tests.web.conftest import Fleet, client_for

pytestmark = pytest.mark.django_db

PAGES = [
    "",
    "products/",
    "devices/",
    "devices/{device}/",
    "devices/{device}/audit/",
    "firmware/",
    "keys/",
    "certificates/",
    "deployments/",
    "deployments/{deployment}/",
    "deployments/{deployment}/preview/",
    "deployments/{deployment}/audit/",
    "members/",
    "audit/",
]


@pytest.mark.parametrize("page", PAGES)
def test_a_viewer_reads_every_page(fleet: Fleet, page: str) -> None:
    url = f"/org/{fleet.slug}/" + page.format(device=fleet.device.pk, deployment=fleet.deployment.pk)
    response = client_for(fleet.tenant.viewer).get(url)
    assert response.status_code == 200
    assert b"<h1>" in response.content


def test_the_device_list_filters(fleet: Fleet) -> None:
    product = fleet.tenant.product
    make_device(product, "dev-002", version="2.0.0", online=False)
    make_device(product, "dev-003", version="1.0.0", tags=["beta", "lab"])
    Device.objects.filter(identifier="dev-003").update(
        penalty_box_until=timezone.now() + timedelta(hours=1), deployment=fleet.deployment
    )
    client = client_for(fleet.tenant.viewer)

    def listed(query: str) -> list[str]:
        response = client.get(f"/org/{fleet.slug}/devices/?{query}")
        return [d.identifier for d in response.context["devices"]]

    assert listed("") == ["dev-001", "dev-002", "dev-003"]
    assert listed("tag=lab") == ["dev-003"]
    assert listed("online=no") == ["dev-002"]
    assert listed("online=yes") == ["dev-001", "dev-003"]
    assert listed("version=2.0.0") == ["dev-002"]
    assert listed(f"deployment={fleet.deployment.pk}") == ["dev-003"]
    assert listed("deployment=none") == ["dev-001", "dev-002"]
    assert listed("penalty=yes") == ["dev-003"]
    assert listed("q=002") == ["dev-002"]


def test_the_device_list_pages_by_keyset_with_a_fixed_number_of_queries(
    fleet: Fleet, django_assert_num_queries: Any
) -> None:
    # given: 120 devices (2 pages and a bit)
    product = fleet.tenant.product
    Device.objects.bulk_create(
        Device(org=product.org, product=product, identifier=f"bulk-{i:04d}", deployment=fleet.deployment)
        for i in range(120)
    )
    client = client_for(fleet.tenant.viewer)
    client.get(f"/org/{fleet.slug}/devices/")  # warm the session
    # when / then: session, user, memberships with their orgs, page rows, capped count, deployments
    with django_assert_num_queries(6):
        first = client.get(f"/org/{fleet.slug}/devices/?deployment={fleet.deployment.pk}")
    assert [d.identifier for d in first.context["devices"]][:2] == ["bulk-0000", "bulk-0001"]
    assert first.context["next_after"] == "bulk-0049"
    with django_assert_num_queries(6):
        second = client.get(f"/org/{fleet.slug}/devices/?deployment={fleet.deployment.pk}&after=bulk-0049")
    assert second.context["devices"][0].identifier == "bulk-0050"
    back = client.get(f"/org/{fleet.slug}/devices/?deployment={fleet.deployment.pk}&before=bulk-0050")
    assert back.context["devices"][-1].identifier == "bulk-0049"
    assert back.context["prev_before"] is None
    # the count is capped, never a full COUNT(*)
    with CaptureQueriesContext(connection) as queries:
        client.get(f"/org/{fleet.slug}/devices/")
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT" in sql.upper() for sql in counts)


def test_bulk_tags_are_added_and_removed(fleet: Fleet) -> None:
    other = make_device(fleet.tenant.product, "dev-009")
    client = client_for(fleet.tenant.manager)
    ids = [fleet.device.pk, other.pk]
    response = client.post(f"/org/{fleet.slug}/devices/tags/", {"device": ids, "tags": "field, eu", "operation": "add"})
    assert response.status_code == 302
    assert sorted(Device.objects.get(pk=other.pk).tags) == ["eu", "field"]
    client.post(f"/org/{fleet.slug}/devices/tags/", {"device": ids, "tags": "beta eu", "operation": "remove"})
    assert Device.objects.get(pk=fleet.device.pk).tags == ["field"]
    assert AuditEvent.objects.filter(action="device.tags_removed").count() == 2


def test_bulk_tags_ignore_another_orgs_devices(fleet: Fleet, other_tenant: Tenant) -> None:
    foreign = make_device(other_tenant.product, "their-1")
    client_for(fleet.tenant.manager).post(
        f"/org/{fleet.slug}/devices/tags/", {"device": [foreign.pk], "tags": "mine", "operation": "add"}
    )
    assert Device.objects.get(pk=foreign.pk).tags == []


@pytest.mark.parametrize(
    ("action", "audit_action"),
    [
        ("reboot", "device.reboot_requested"),
        ("identify", "device.identify_requested"),
        ("reconnect", "device.reconnect_requested"),
        ("health_check", "device.health_check_requested"),
        ("disable_updates", "device.updates_disabled"),
    ],
)
def test_device_actions_go_through_the_services(fleet: Fleet, action: str, audit_action: str) -> None:
    response = client_for(fleet.tenant.manager).post(
        f"/org/{fleet.slug}/devices/{fleet.device.pk}/action/", {"action": action}
    )
    assert response.status_code == 302
    assert AuditEvent.objects.filter(action=audit_action, subject_id=str(fleet.device.pk)).exists()


def test_the_penalty_box_is_cleared_and_tags_set(fleet: Fleet) -> None:
    Device.objects.filter(pk=fleet.device.pk).update(penalty_box_until=timezone.now() + timedelta(hours=1))
    client = client_for(fleet.tenant.manager)
    client.post(f"/org/{fleet.slug}/devices/{fleet.device.pk}/action/", {"action": "clear_penalty_box"})
    client.post(f"/org/{fleet.slug}/devices/{fleet.device.pk}/action/", {"action": "set_tags", "tags": "a b"})
    fleet.device.refresh_from_db()
    assert fleet.device.penalty_box_until is None
    assert fleet.device.tags == ["a", "b"]


def test_the_device_page_shows_history_health_and_the_console_link(fleet: Fleet) -> None:
    Device.objects.filter(pk=fleet.device.pk).update(health={"cpu_temp": 51}, health_reported_at=timezone.now())
    response = client_for(fleet.tenant.viewer).get(f"/org/{fleet.slug}/devices/{fleet.device.pk}/")
    assert b"disk full" in response.content
    assert b"cpu_temp" in response.content
    assert f'href="/console/{fleet.device.pk}/"'.encode() in response.content


def test_a_firmware_upload_returns_a_status_url_that_reports_validation(
    fleet: Fleet, firmware_root: Path, django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks
) -> None:
    # given
    keypair = generate_keypair()
    SigningKey.objects.create(org=fleet.tenant.org, name="ci", key=keypair.public)
    data = build_firmware(FirmwareSpec(product="widget", version="3.1.0", key=keypair))
    upload = io.BytesIO(data)
    upload.name = "widget-3.1.0.fw"
    client = client_for(fleet.tenant.manager)
    # when
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(
            f"/org/{fleet.slug}/firmware/",
            {"product": fleet.tenant.product.pk, "kind": "firmware", "file": upload},
            HTTP_ACCEPT="application/json",
        )
    assert response.status_code == 201
    status_url = response.json()["status_url"]
    assert client.get(status_url).json()["status"] == "pending"
    # the worker's part, called directly
    firmware_services.validate_firmware(response.json()["id"])
    # then
    result = client.get(status_url).json()
    assert result == {**result, "status": "valid", "version": "3.1.0", "done": True}


def test_a_rejected_upload_says_why(fleet: Fleet, firmware_root: Path) -> None:
    upload = io.BytesIO(b"not a zip at all")
    upload.name = "junk.fw"
    client = client_for(fleet.tenant.manager)
    response = client.post(
        f"/org/{fleet.slug}/firmware/",
        {"product": fleet.tenant.product.pk, "kind": "firmware", "file": upload},
        HTTP_ACCEPT="application/json",
    )
    firmware_services.validate_firmware(response.json()["id"])
    result = client.get(response.json()["status_url"]).json()
    assert result["status"] == "rejected" and result["reason"]


def test_a_viewer_cannot_upload(fleet: Fleet, firmware_root: Path) -> None:
    upload = io.BytesIO(b"x")
    upload.name = "x.fw"
    response = client_for(fleet.tenant.viewer).post(
        f"/org/{fleet.slug}/firmware/", {"product": fleet.tenant.product.pk, "file": upload}
    )
    assert response.status_code == 403
    assert Firmware.objects.count() == 1


def test_firmware_in_use_is_not_deleted(fleet: Fleet) -> None:
    client_for(fleet.tenant.manager).post(f"/org/{fleet.slug}/firmware/{fleet.firmware.pk}/delete/")
    assert Firmware.objects.filter(pk=fleet.firmware.pk).exists()


def test_an_admin_adds_and_deletes_signing_keys(fleet: Fleet) -> None:
    client = client_for(fleet.tenant.admin)
    response = client.post(f"/org/{fleet.slug}/keys/", {"name": "release", "key": generate_keypair().public})
    assert response.status_code == 302
    key = SigningKey.objects.get(org=fleet.tenant.org, name="release")
    client.post(f"/org/{fleet.slug}/keys/{key.pk}/delete/")
    assert not SigningKey.objects.filter(pk=key.pk).exists()
    response = client.post(f"/org/{fleet.slug}/keys/", {"name": "bad", "key": "not a key"})
    assert response.status_code == 200 and not SigningKey.objects.filter(name="bad").exists()


def test_a_manager_cannot_add_signing_keys(fleet: Fleet) -> None:
    response = client_for(fleet.tenant.manager).post(
        f"/org/{fleet.slug}/keys/", {"name": "x", "key": generate_keypair().public}
    )
    assert response.status_code == 403


def test_an_admin_registers_and_deletes_a_ca(fleet: Fleet) -> None:
    ca = pki.create_ca("Acme Device CA")
    proof = verification_pem(ca, fleet.tenant.org).decode()
    client = client_for(fleet.tenant.admin)
    # without proof of possession the CA is refused
    response = client.post(f"/org/{fleet.slug}/certificates/", {"description": "factory", "pem": ca.cert_pem.decode()})
    assert response.status_code == 200 and not CACertificate.objects.exists()
    response = client.post(
        f"/org/{fleet.slug}/certificates/",
        {
            "description": "factory",
            "pem": ca.cert_pem.decode(),
            "verification_pem": proof,
            "jitp_product": fleet.tenant.product.pk,
        },
    )
    assert response.status_code == 302
    row = CACertificate.objects.get(org=fleet.tenant.org)
    assert row.jitp_product_id == fleet.tenant.product.pk and row.is_verified
    # a duplicate is refused with the service's sentence
    response = client.post(
        f"/org/{fleet.slug}/certificates/",
        {"description": "again", "pem": ca.cert_pem.decode(), "verification_pem": proof},
    )
    assert b"already has a CA certificate" in response.content
    client.post(f"/org/{fleet.slug}/certificates/{row.pk}/delete/")
    assert not CACertificate.objects.exists()
    assert AuditEvent.objects.filter(action="ca_certificate.deleted").exists()


def test_an_admin_verifies_a_ca_registered_before_proof_was_required(fleet: Fleet) -> None:
    # given
    ca = pki.create_ca("Legacy CA")
    row = add_unverified_ca(fleet.tenant.org, ca)
    client = client_for(fleet.tenant.admin)
    url = f"/org/{fleet.slug}/certificates/{row.pk}/verify/"
    assert b"not verified" in client.get(f"/org/{fleet.slug}/certificates/").content
    # when
    wrong = client.post(url, {"verification_pem": verification_pem(pki.create_ca("Other"), fleet.tenant.org).decode()})
    right = client.post(url, {"verification_pem": verification_pem(ca, fleet.tenant.org).decode()}, follow=True)
    # then
    assert wrong.status_code == 302
    assert b"CA certificate verified." in right.content
    row.refresh_from_db()
    assert row.is_verified


def test_a_manager_creates_edits_previews_and_activates_a_deployment(fleet: Fleet) -> None:
    client = client_for(fleet.tenant.manager)
    target = make_firmware(fleet.tenant.product, "3.0.0")
    form = {
        "product": fleet.tenant.product.pk,
        "name": "canary",
        "firmware": target.pk,
        "conditions_tags": "beta",
        "conditions_version": "~> 1.0",
        "concurrent_updates": 2,
        "inflight_timeout_minutes": 30,
        "penalty_attempts": 3,
        "penalty_rate_attempts": 5,
        "penalty_rate_seconds": 180,
        "penalty_minutes": 60,
        "breaker_failure_percent": 20,
        "breaker_min_attempts": 10,
    }
    response = client.post(f"/org/{fleet.slug}/deployments/new/", form)
    assert response.status_code == 302, response.content
    deployment = Deployment.objects.get(name="canary")
    assert deployment.conditions_tags == ["beta"] and not deployment.is_active
    response = client.post(f"/org/{fleet.slug}/deployments/{deployment.pk}/edit/", {**form, "concurrent_updates": 4})
    deployment.refresh_from_db()
    assert deployment.concurrent_updates == 4
    preview = client.get(f"/org/{fleet.slug}/deployments/{deployment.pk}/preview/")
    assert preview.context["eligible"] == 1
    client.post(f"/org/{fleet.slug}/deployments/{deployment.pk}/action/", {"action": "activate"})
    deployment.refresh_from_db()
    assert deployment.is_active
    # mypy keeps the narrowing from the assert before refresh_from_db() and calls this unreachable.
    actions = list(  # type: ignore[unreachable]
        AuditEvent.objects.filter(subject_type="deployment", subject_id=str(deployment.pk)).values_list(
            "action", flat=True
        )
    )
    assert {"deployment.created", "deployment.changed", "deployment.activated"} <= set(actions)


def test_the_deployment_form_refuses_firmware_of_another_product_or_org(fleet: Fleet, other_tenant: Tenant) -> None:
    foreign = make_firmware(other_tenant.product, "9.9.9")
    response = client_for(fleet.tenant.manager).post(
        f"/org/{fleet.slug}/deployments/new/",
        {"product": fleet.tenant.product.pk, "name": "x", "firmware": foreign.pk},
    )
    assert response.status_code == 200
    assert "firmware" in response.context["form"].errors
    assert not Deployment.objects.filter(name="x").exists()


def test_the_rollout_progress_endpoint_counts_and_lists_failures(fleet: Fleet) -> None:
    response = client_for(fleet.tenant.viewer).get(f"/org/{fleet.slug}/deployments/{fleet.deployment.pk}/progress.json")
    data = json.loads(response.content)
    assert data["counts"]["failed"] == 1
    assert data["failures"][0]["reason"] == "disk full"
    assert data["failures"][0]["device"] == "dev-001"


def test_pause_resume_and_retry(fleet: Fleet) -> None:
    client = client_for(fleet.tenant.manager)
    url = f"/org/{fleet.slug}/deployments/{fleet.deployment.pk}/action/"
    client.post(url, {"action": "pause"})
    fleet.deployment.refresh_from_db()
    assert fleet.deployment.paused_at is not None
    client.post(url, {"action": "resume"})
    client.post(url, {"action": "retry_failed"})
    fleet.deployment.refresh_from_db()
    assert fleet.deployment.paused_at is None
    # mypy keeps the narrowing from the assert before refresh_from_db() and calls this unreachable.
    assert AuditEvent.objects.filter(action="deployment.retry_failed").exists()  # type: ignore[unreachable]


def test_the_audit_pages_show_only_the_subjects_events(fleet: Fleet, other_tenant: Tenant) -> None:
    client = client_for(fleet.tenant.manager)
    client.post(f"/org/{fleet.slug}/devices/{fleet.device.pk}/action/", {"action": "identify"})
    page = client.get(f"/org/{fleet.slug}/devices/{fleet.device.pk}/audit/")
    assert {e.action for e in page.context["events"]} == {"device.created", "device.identify_requested"}
    org_page = client.get(f"/org/{fleet.slug}/audit/")
    assert all(e.org_id == fleet.tenant.org.pk for e in org_page.context["events"])


def test_the_audit_log_pages_by_id(fleet: Fleet) -> None:
    from nerveshub.tenancy.services import audit

    for i in range(60):
        audit("test", "test.event", fleet.device, details={"i": i})
    client = client_for(fleet.tenant.viewer)
    first = client.get(f"/org/{fleet.slug}/audit/")
    assert len(first.context["events"]) == 50 and first.context["next_before"]
    second = client.get(f"/org/{fleet.slug}/audit/?before={first.context['next_before']}")
    assert second.context["events"][0].pk < first.context["events"][-1].pk


def test_an_admin_verifies_and_exports_the_audit_chain_and_sees_tampering(fleet: Fleet) -> None:
    # given
    admin = client_for(fleet.tenant.admin)
    base = f"/org/{fleet.slug}/audit/"
    # when
    intact = admin.get(base + "chain/")
    export = admin.get(base + "export.jsonl")
    lines = [json.loads(line) for line in export.content.decode().splitlines()]
    victim = AuditEvent.objects.filter(org=fleet.tenant.org).order_by("id").first()
    assert victim is not None
    AuditEvent.objects.filter(pk=victim.pk).update(action="nothing.happened")
    broken = admin.get(base + "chain/")
    # then
    assert intact.context["result"].ok and b"Intact" in intact.content
    assert export["Content-Disposition"].startswith("attachment")
    assert lines and all("hash" in line and "prev_hash" in line for line in lines)
    assert not broken.context["result"].ok and broken.context["result"].first_bad_id == victim.pk
    assert b"Broken" in broken.content
    assert AuditEvent.objects.filter(action="audit.exported").exists()


def test_only_admins_verify_or_export_the_audit_chain(fleet: Fleet, other_tenant: Tenant) -> None:
    for user, status in ((fleet.tenant.viewer, 403), (fleet.tenant.manager, 403), (fleet.tenant.outsider, 404)):
        client = client_for(user)
        for page in ("chain/", "export.jsonl"):
            assert client.get(f"/org/{fleet.slug}/audit/{page}").status_code == status, (user, page)
