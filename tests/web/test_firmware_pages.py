"""A firmware file's page (metadata, signer, deployments, download, delete) and
the list's status filter and status answer."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.test import Client
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks

from deployments.models import Deployment, DeviceUpdate
from firmware import downloads
from firmware import services as firmware_services
from firmware.models import Firmware, FirmwareStatus, SigningKey
from nerveshub.tenancy.models import AuditEvent, Membership
from tests.deployments.conftest import make_firmware
from tests.support.fwup import FirmwareSpec, build_firmware, generate_keypair
from tests.web.conftest import Fleet, client_for

pytestmark = pytest.mark.django_db


def _detail(client: Client, fleet: Fleet, firmware: Firmware) -> str:
    response = client.get(f"/org/{fleet.slug}/firmware/{firmware.pk}/")
    assert response.status_code == 200
    return str(response.content.decode())


def test_the_page_shows_what_validation_read_and_who_uses_it(fleet: Fleet) -> None:
    # given: a signed file with delta support, used by the fleet's deployment
    key = SigningKey.objects.create(org=fleet.tenant.org, name="release-key", key=generate_keypair().public)
    Firmware.objects.filter(pk=fleet.firmware.pk).update(
        signing_key=key,
        author="Acme Builds",
        description="Spring release",
        misc="build 42",
        delta_fwup_version="1.10.0",
        delta_resources=["rootfs.img"],
    )
    # when
    page = _detail(client_for(fleet.tenant.viewer), fleet, fleet.firmware)
    # then
    for shown in (
        "2.0.0",
        str(fleet.firmware.uuid),
        "rpi4",
        "arm",
        "Acme Builds",
        "Spring release",
        "build 42",
        "release-key",
        "ab" * 32,
        "(1024 bytes)",
        "fwup ≥ 1.10.0",
        "rootfs.img",
        "stable",
    ):
        assert shown in page, shown
    assert 'id="fw-download"' not in page  # the viewer gets no download link
    assert "Delete firmware" not in page


def test_a_manager_downloads_through_an_expiring_url(fleet: Fleet) -> None:
    client = client_for(fleet.tenant.manager)
    page = _detail(client, fleet, fleet.firmware)
    assert 'id="fw-download"' in page
    # when
    response = client.get(f"/org/{fleet.slug}/firmware/{fleet.firmware.pk}/download/")
    # then: a signed URL of this file, not cached anywhere
    assert response.status_code == 302 and response["Cache-Control"] == "no-store"
    token, name = response["Location"].split(downloads.PREFIX, 1)[1].split("/")
    assert downloads.read_token(token, name) == fleet.firmware.storage_name


def test_pending_firmware_is_not_downloadable(fleet: Fleet) -> None:
    pending = Firmware.objects.create(org=fleet.tenant.org, product=fleet.tenant.product, original_filename="x.fw")
    client = client_for(fleet.tenant.manager)
    assert 'id="fw-download"' not in _detail(client, fleet, pending)
    response = client.get(f"/org/{fleet.slug}/firmware/{pending.pk}/download/", follow=True)
    assert "Only valid firmware can be downloaded" in response.content.decode()


def test_firmware_in_use_says_why_and_keeps_the_file(fleet: Fleet) -> None:
    client = client_for(fleet.tenant.manager)
    page = _detail(client, fleet, fleet.firmware)
    assert "Used by deployment(s) stable" in page and "Delete firmware" not in page
    response = client.post(f"/org/{fleet.slug}/firmware/{fleet.firmware.pk}/delete/", follow=True)
    assert "stable" in response.content.decode()
    assert Firmware.objects.filter(pk=fleet.firmware.pk).exists()


def test_firmware_named_by_update_records_says_so(fleet: Fleet) -> None:
    # given: the deployment moved on, the devices' history still names the file
    newer = make_firmware(fleet.tenant.product, "2.1.0")
    Deployment.objects.filter(pk=fleet.deployment.pk).update(firmware=newer)
    assert DeviceUpdate.objects.filter(firmware=fleet.firmware).exists()
    client = client_for(fleet.tenant.manager)
    assert "update records name it" in _detail(client, fleet, fleet.firmware)
    response = client.post(f"/org/{fleet.slug}/firmware/{fleet.firmware.pk}/delete/", follow=True)
    assert "update records" in response.content.decode()
    assert Firmware.objects.filter(pk=fleet.firmware.pk).exists()


def test_unused_firmware_is_deleted_from_its_page(fleet: Fleet) -> None:
    spare = make_firmware(fleet.tenant.product, "3.0.0")
    client = client_for(fleet.tenant.manager)
    assert "Delete firmware" in _detail(client, fleet, spare)
    client.post(f"/org/{fleet.slug}/firmware/{spare.pk}/delete/")
    assert not Firmware.objects.filter(pk=spare.pk).exists()
    assert AuditEvent.objects.filter(action="firmware.deleted").exists()


def test_the_list_filters_by_status_and_links_each_file(fleet: Fleet) -> None:
    Firmware.objects.create(org=fleet.tenant.org, product=fleet.tenant.product, original_filename="p.fw")
    Firmware.objects.create(
        org=fleet.tenant.org,
        product=fleet.tenant.product,
        original_filename="r.fw",
        status=FirmwareStatus.REJECTED,
        rejected_reason="bad signature",
    )
    client = client_for(fleet.tenant.viewer)

    def listed(query: str) -> list[str]:
        return [
            f.original_filename or f.version
            for f in client.get(f"/org/{fleet.slug}/firmware/{query}").context["firmware"]
        ]

    assert sorted(listed("")) == ["2.0.0", "p.fw", "r.fw"]
    assert listed("?status=valid") == ["2.0.0"]
    assert listed("?status=rejected") == ["r.fw"]
    assert listed("?status=pending") == ["p.fw"]
    assert sorted(listed("?status=%00nonsense")) == ["2.0.0", "p.fw", "r.fw"]
    page = client.get(f"/org/{fleet.slug}/firmware/?status=pending").content.decode()
    assert f'href="/org/{fleet.slug}/firmware/' in page and "data-status-url=" in page


def test_an_upload_answers_with_what_the_list_row_needs(
    fleet: Fleet, firmware_root: Path, django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks
) -> None:
    keypair = generate_keypair()
    SigningKey.objects.create(org=fleet.tenant.org, name="ci", key=keypair.public)
    upload = io.BytesIO(build_firmware(FirmwareSpec(product="widget", version="3.2.0", key=keypair)))
    upload.name = "widget-3.2.0.fw"
    client = client_for(fleet.tenant.manager)
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(
            f"/org/{fleet.slug}/firmware/",
            {"product": fleet.tenant.product.pk, "kind": "firmware", "file": upload},
            HTTP_ACCEPT="application/json",
        )
    status = client.get(response.json()["status_url"]).json()
    assert status["product"] == "widget" and status["filename"] == "widget-3.2.0.fw" and status["size"] > 0
    assert status["url"] == f"/org/{fleet.slug}/firmware/{status['id']}/" and status["done"] is False
    firmware_services.validate_firmware(status["id"])
    done = client.get(response.json()["status_url"]).json()
    assert (done["status"], done["version"], done["done"]) == ("valid", "3.2.0", True)


@pytest.mark.parametrize("route", ["firmware/{pk}/", "firmware/{pk}/download/"])
def test_a_removed_member_is_refused(fleet: Fleet, route: str) -> None:
    client = client_for(fleet.tenant.manager)
    Membership.objects.filter(user=fleet.tenant.manager, org=fleet.tenant.org).delete()
    assert client.get(f"/org/{fleet.slug}/" + route.format(pk=fleet.firmware.pk)).status_code == 404


def test_an_outsider_cannot_see_another_orgs_firmware(fleet: Fleet) -> None:
    client = client_for(fleet.tenant.outsider)
    assert client.get(f"/org/{fleet.slug}/firmware/{fleet.firmware.pk}/").status_code == 404
    assert client.get(f"/org/globex/firmware/{fleet.firmware.pk}/").status_code == 404
