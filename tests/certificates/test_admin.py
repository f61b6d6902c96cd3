"""Certificate admin pages: uploads and actions go through the services (one
audit event each), and lesser roles and other organizations are refused."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from certificates import pki, services
from certificates.models import CACertificate, DeviceCertificate
from certificates.pki import Issued
from devices.services import create_device
from nerveshub.tenancy.models import AuditEvent
from tests.certificates.proof import add_unverified_ca, register_ca, verification_pem
from tests.conftest import Tenant


def _upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/x-pem-file")


CA_ADD = reverse("admin:certificates_cacertificate_add")
CA_LIST = reverse("admin:certificates_cacertificate_changelist")
CERT_ADD = reverse("admin:certificates_devicecertificate_add")
CERT_LIST = reverse("admin:certificates_devicecertificate_changelist")


def _ca_form(tenant: Tenant, ca: pki.Issued, **extra: Any) -> dict[str, Any]:
    return {
        "org": tenant.org.pk,
        "description": "factory CA",
        "certificate_text": ca.cert_pem.decode(),
        "verification_file": _upload("proof.pem", verification_pem(ca, tenant.org)),
        "check_expiration": "on",
        "jitp_product": tenant.product.pk,
        "tags": "jitp, eu",
        "jitp_description": "",
        **extra,
    }


@pytest.fixture
def recorded(tenant: Tenant, device_ca: Issued) -> DeviceCertificate:
    register_ca("test", tenant.org, device_ca, jitp_product=tenant.product)
    services.authenticate_peer_certificate(pki.sign_device(device_ca, "ADM-1").cert_pem)
    return DeviceCertificate.objects.get()


def test_it_registers_a_ca_from_the_add_page(tenant: Tenant, client: Client, device_ca: Issued) -> None:
    # given
    client.force_login(tenant.admin)
    # when
    response = client.post(CA_ADD, _ca_form(tenant, device_ca))
    # then
    assert response.status_code == 302, response.content.decode()[-3000:]
    ca = CACertificate.objects.get()
    assert (ca.org, ca.jitp_product, ca.jitp_tags) == (tenant.org, tenant.product, ["jitp", "eu"])
    actions = list(AuditEvent.objects.filter(subject_type="cacertificate").values_list("action", flat=True))
    assert actions == ["ca_certificate.registered"]


def test_it_shows_why_a_ca_is_refused(tenant: Tenant, client: Client, device_ca: Issued) -> None:
    # given
    client.force_login(tenant.admin)
    leaf = pki.sign_device(device_ca, "not-a-ca")
    # when
    response = client.post(CA_ADD, _ca_form(tenant, leaf))
    # then
    assert response.status_code == 200
    assert b"not a CA certificate" in response.content
    assert not CACertificate.objects.exists()


def test_it_shows_verification_codes_and_checks_proof_of_possession(
    tenant: Tenant, client: Client, device_ca: Issued
) -> None:
    # given
    client.force_login(tenant.admin)
    page = client.get(CA_ADD)
    proof = pki.sign_device(device_ca, services.verification_code(tenant.org))
    # when
    response = client.post(
        CA_ADD, {**_ca_form(tenant, device_ca), "verification_file": _upload("proof.pem", proof.cert_pem)}
    )
    # then
    assert b"acme: " in page.content
    assert response.status_code == 302
    assert AuditEvent.objects.get(action="ca_certificate.registered").details["proof_of_possession"] is True


def test_it_refuses_a_ca_without_proof_of_possession(
    tenant: Tenant, other_tenant: Tenant, client: Client, device_ca: Issued
) -> None:
    # given an admin of globex with acme's public CA certificate and no key
    client.force_login(tenant.outsider)
    form = {**_ca_form(tenant, device_ca), "org": other_tenant.org.pk, "jitp_product": ""}
    del form["verification_file"]
    # when
    response = client.post(CA_ADD, form)
    # then
    assert response.status_code == 200
    assert b"verification certificate" in response.content
    assert not CACertificate.objects.exists()


def test_it_verifies_a_ca_registered_before_proof_was_required(
    tenant: Tenant, client: Client, device_ca: Issued
) -> None:
    # given
    ca = add_unverified_ca(tenant.org, device_ca, description="legacy")
    client.force_login(tenant.admin)
    change = reverse("admin:certificates_cacertificate_change", args=[ca.pk])
    page = client.get(change)
    form = {"description": "legacy", "check_expiration": "on", "jitp_tags": "[]", "jitp_description": ""}
    # when a wrong proof, then the right one, is uploaded
    other = pki.create_ca("Not acme's")
    wrong = client.post(change, {**form, "verification_file": _upload("p.pem", verification_pem(other, tenant.org))})
    right = client.post(
        change, {**form, "verification_file": _upload("p.pem", verification_pem(device_ca, tenant.org))}
    )
    # then
    assert f"Code (valid 1 h): {tenant.org.pk}:".encode() in page.content
    assert b"not signed by this CA" in wrong.content
    assert right.status_code == 302, right.content.decode()[-3000:]
    ca.refresh_from_db()
    assert ca.is_verified
    assert AuditEvent.objects.filter(action="ca_certificate.verified").count() == 1


def test_it_refuses_ca_registration_to_a_manager(tenant: Tenant, client: Client, device_ca: Issued) -> None:
    client.force_login(tenant.manager)
    assert client.get(CA_ADD).status_code == 403
    assert client.post(CA_ADD, _ca_form(tenant, device_ca)).status_code == 403
    assert not CACertificate.objects.exists()


def test_it_lists_cas_only_to_their_org(tenant: Tenant, client: Client, device_ca: Issued) -> None:
    # given
    register_ca("test", tenant.org, device_ca, description="acme fleet CA")
    # when
    client.force_login(tenant.viewer)
    mine = client.get(CA_LIST)
    client.force_login(tenant.outsider)
    theirs = client.get(CA_LIST)
    # then
    assert b"acme fleet CA" in mine.content
    assert b"acme fleet CA" not in theirs.content


def test_it_deletes_a_ca_through_the_service(tenant: Tenant, client: Client, device_ca: Issued) -> None:
    # given
    ca = register_ca("test", tenant.org, device_ca)
    client.force_login(tenant.admin)
    # when
    response = client.post(reverse("admin:certificates_cacertificate_delete", args=[ca.pk]), {"post": "yes"})
    # then
    assert response.status_code == 302
    assert not CACertificate.objects.exists()
    assert AuditEvent.objects.filter(subject_type="cacertificate", action__endswith="deleted").count() == 1


def test_it_uploads_a_device_certificate(tenant: Tenant, client: Client) -> None:
    # given
    device = create_device("test", tenant.product, "ADM-2")
    leaf = pki.self_signed_device("ADM-2")
    client.force_login(tenant.manager)
    # when
    response = client.post(CERT_ADD, {"device": device.pk, "certificate_text": leaf.cert_pem.decode()})
    # then
    assert response.status_code == 302, response.content.decode()[-3000:]
    assert DeviceCertificate.objects.get().device == device
    assert list(AuditEvent.objects.filter(subject_type="devicecertificate").values_list("action", flat=True)) == [
        "device_certificate.registered"
    ]


def test_it_revokes_and_lists_certificates(tenant: Tenant, client: Client, recorded: DeviceCertificate) -> None:
    # given
    client.force_login(tenant.manager)
    # when
    response = client.post(CERT_LIST, {"action": "revoke", "_selected_action": [recorded.pk]})
    listing = client.get(CERT_LIST + "?revoked=yes")
    # then
    assert response.status_code == 302
    recorded.refresh_from_db()
    assert recorded.revoked_at is not None
    assert AuditEvent.objects.filter(action="device_certificate.revoked").count() == 1
    assert b"ADM-1" in listing.content


def test_it_deletes_device_certificates_through_the_service(
    tenant: Tenant, client: Client, recorded: DeviceCertificate
) -> None:
    client.force_login(tenant.manager)
    response = client.post(CERT_LIST, {"action": "delete_selected", "_selected_action": [recorded.pk], "post": "yes"})
    assert response.status_code == 302
    assert not DeviceCertificate.objects.exists()
    assert AuditEvent.objects.filter(subject_type="devicecertificate", action__endswith="deleted").count() == 1


def test_it_refuses_to_revoke_for_a_viewer_or_an_outsider(
    tenant: Tenant, client: Client, recorded: DeviceCertificate
) -> None:
    for user in (tenant.viewer, tenant.outsider):
        client.force_login(user)
        client.post(CERT_LIST, {"action": "revoke", "_selected_action": [recorded.pk]})
    recorded.refresh_from_db()
    assert recorded.revoked_at is None
