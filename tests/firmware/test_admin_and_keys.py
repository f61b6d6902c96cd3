"""Signing keys and firmware in the admin, and the key/deletion services behind it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks

from deployments.models import Deployment
from firmware import services
from firmware.models import Firmware, FirmwareStatus, SigningKey
from firmware.tasks import validate_firmware_task
from nerveshub.tenancy.models import AuditEvent
from tests.conftest import Tenant
from tests.firmware.conftest import Uploader, stored_files
from tests.support.fwup import FirmwareSpec, KeyPair, build_firmware, generate_keypair

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client: Client) -> User:
    user = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return user


def test_it_lists_public_keys_of_one_org_only(tenant: Tenant, keypair: KeyPair, other_tenant: Tenant) -> None:
    # given
    second = generate_keypair(padded=False)
    SigningKey.objects.create(org=tenant.org, name="second", key=second.public)
    SigningKey.objects.create(org=other_tenant.org, name="theirs", key=generate_keypair().public)
    # when
    keys = services.public_keys_for_org(tenant.org.pk)
    # then
    assert keys == [keypair.public, second.public]


def test_it_refuses_to_delete_a_key_that_signed_firmware(
    tenant: Tenant, keypair: KeyPair, spec: FirmwareSpec, upload: Uploader
) -> None:
    # given
    firmware = upload(spec)
    key = SigningKey.objects.get(key=keypair.public)
    assert firmware.signing_key == key
    # when
    with pytest.raises(services.SigningKeyInUse, match="signed 1 firmware"):
        services.delete_signing_key(tenant.admin, key)
    # then
    assert SigningKey.objects.filter(pk=key.pk).exists()


def test_it_deletes_an_unused_key_with_an_audit_event(tenant: Tenant, keypair: KeyPair) -> None:
    # given
    key = SigningKey.objects.get(key=keypair.public)
    # when
    services.delete_signing_key(tenant.admin, key)
    # then
    assert not SigningKey.objects.exists()
    assert AuditEvent.objects.filter(action="signing_key.deleted").exists()


def test_it_refuses_to_delete_firmware_used_by_a_deployment(
    tenant: Tenant, spec: FirmwareSpec, upload: Uploader, firmware_root: Path
) -> None:
    # given
    firmware = upload(spec)
    Deployment.objects.create(org=tenant.org, product=tenant.product, name="prod", firmware=firmware)
    # when
    with pytest.raises(services.FirmwareInUse, match="prod"):
        services.delete_firmware(tenant.admin, firmware)
    # then
    assert Firmware.objects.filter(pk=firmware.pk).exists()
    assert len(stored_files(firmware_root)) == 1


def test_it_deletes_firmware_and_its_file_on_commit(
    tenant: Tenant,
    spec: FirmwareSpec,
    upload: Uploader,
    firmware_root: Path,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    # given
    firmware = upload(spec)
    # when
    with django_capture_on_commit_callbacks(execute=True):
        services.delete_firmware(tenant.admin, firmware)
    # then
    assert not Firmware.objects.exists()
    assert stored_files(firmware_root) == []


def test_it_uploads_through_the_admin_add_view(
    operator: User,
    client: Client,
    tenant: Tenant,
    spec: FirmwareSpec,
    firmware_root: Path,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    # given
    data = build_firmware(spec)
    # when
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(
            reverse("admin:firmware_firmware_add"),
            {"product": tenant.product.pk, "file": SimpleUploadedFile("widget.fw", data)},
        )
    # then
    assert response.status_code == 302, response.content.decode()[:2000]
    firmware = Firmware.objects.get()
    assert firmware.status == FirmwareStatus.PENDING and firmware.original_filename == "widget.fw"
    assert len(callbacks) == 1
    validate_firmware_task(firmware.pk)
    firmware.refresh_from_db()
    assert firmware.status == FirmwareStatus.VALID
    change = client.get(reverse("admin:firmware_firmware_change", args=[firmware.pk]))
    assert change.status_code == 200 and str(firmware.uuid) in change.content.decode()


def test_it_offers_only_products_of_orgs_the_user_manages(client: Client, tenant: Tenant, other_tenant: Tenant) -> None:
    # given: the outsider manages globex only
    client.force_login(tenant.outsider)
    # when
    response = client.get(reverse("admin:firmware_firmware_add"))
    # then
    assert response.status_code == 200
    choices = set(response.context["adminform"].form.fields["product"].queryset)
    assert choices == {other_tenant.product}


def test_it_refuses_an_upload_to_another_orgs_product(
    client: Client, tenant: Tenant, other_tenant: Tenant, spec: FirmwareSpec, firmware_root: Path
) -> None:
    # given
    client.force_login(tenant.outsider)
    # when
    response = client.post(
        reverse("admin:firmware_firmware_add"),
        {"product": tenant.product.pk, "file": SimpleUploadedFile("x.fw", build_firmware(spec))},
    )
    # then
    assert response.status_code == 200  # the form again, with an error
    assert not Firmware.objects.exists()
    assert stored_files(firmware_root) == []


def test_it_explains_why_a_used_key_cannot_be_deleted_in_the_admin(
    operator: User, client: Client, keypair: KeyPair, spec: FirmwareSpec, upload: Uploader
) -> None:
    # given
    upload(spec)
    key = SigningKey.objects.get(key=keypair.public)
    # when
    response = client.post(reverse("admin:firmware_signingkey_delete", args=[key.pk]), {"post": "yes"}, follow=True)
    # then
    assert "cannot be deleted" in response.content.decode()
    assert SigningKey.objects.filter(pk=key.pk).exists()


def test_it_explains_why_deployed_firmware_cannot_be_deleted_in_the_admin(
    operator: User, client: Client, tenant: Tenant, spec: FirmwareSpec, upload: Uploader
) -> None:
    # given
    firmware = upload(spec)
    Deployment.objects.create(org=tenant.org, product=tenant.product, name="prod", firmware=firmware)
    # when
    response = client.post(reverse("admin:firmware_firmware_delete", args=[firmware.pk]), {"post": "yes"}, follow=True)
    # then
    assert "deployment(s) prod use it" in response.content.decode()
    assert Firmware.objects.filter(pk=firmware.pk).exists()


def test_it_revalidates_a_pending_file_through_the_admin_action(
    operator: User,
    client: Client,
    tenant: Tenant,
    spec: FirmwareSpec,
    upload: Uploader,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    # given: an upload whose validation task was lost (still pending)
    firmware = upload(spec)
    Firmware.objects.filter(pk=firmware.pk).update(status=FirmwareStatus.PENDING)
    # when
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(
            reverse("admin:firmware_firmware_changelist"), {"action": "revalidate", "_selected_action": [firmware.pk]}
        )
    # then
    assert response.status_code == 302
    assert len(callbacks) == 1
    validate_firmware_task(firmware.pk)
    firmware.refresh_from_db()
    assert firmware.status == FirmwareStatus.VALID


def test_it_never_judges_a_valid_file_again(
    operator: User,
    client: Client,
    tenant: Tenant,
    spec: FirmwareSpec,
    upload: Uploader,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    # given: a valid file a deployment uses
    firmware = upload(spec)
    assert firmware.status == FirmwareStatus.VALID
    Deployment.objects.create(org=tenant.org, product=tenant.product, name="prod", firmware=firmware)
    # when
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(
            reverse("admin:firmware_firmware_changelist"),
            {"action": "revalidate", "_selected_action": [firmware.pk]},
            follow=True,
        )
    # then: nothing queued, the row and its bytes untouched, the operator told why
    assert callbacks == []
    firmware.refresh_from_db()
    assert firmware.status == FirmwareStatus.VALID and firmware.storage_name
    assert "not judged again" in response.content.decode()


def test_it_renders_both_changelists(
    operator: User, client: Client, tenant: Tenant, spec: FirmwareSpec, upload: Uploader
) -> None:
    # given
    upload(spec)
    spec.key = None
    upload(spec)
    # when / then
    for name in ("firmware_firmware", "firmware_signingkey"):
        assert client.get(reverse(f"admin:{name}_changelist")).status_code == 200


def test_it_rejects_an_upload_service_call_with_an_empty_file(tenant: Tenant, firmware_root: Path) -> None:
    with pytest.raises(services.UploadRefused, match="empty"):
        services.upload_firmware(tenant.admin, tenant.product, io.BytesIO(b""), "empty.fw")
    assert stored_files(firmware_root) == []
