"""CA certificates, device certificates and personal API tokens through the API."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from django.test import Client

from certificates import pki, x509
from certificates.models import CACertificate, DeviceCertificate
from devices.models import Device
from nerveshub.tenancy.models import APIToken, AuditEvent
from tests.api.conftest import ApiClient, api_for
from tests.certificates.proof import add_unverified_ca
from tests.conftest import Tenant
from tests.deployments.conftest import make_device

CAS = "/orgs/acme/ca_certificates"
CERTS = "/orgs/acme/products/widget/devices/dev-1/certificates"


def _pem(issued: pki.Issued) -> str:
    return issued.cert.public_bytes(serialization.Encoding.PEM).decode()


def _proof(client: ApiClient, ca: pki.Issued, org: str = "acme") -> str:
    """What the CA's owner sends: a certificate signed by the CA, CN = the org's code."""
    code = client.get(f"/orgs/{org}/ca_certificates/verification_code").json()["code"]
    return _pem(pki.sign_verification(ca, code))


@pytest.mark.django_db
def test_it_registers_a_ca_with_proof_of_possession_and_jitp_settings(
    tenant: Tenant, as_admin: ApiClient, as_viewer: ApiClient
) -> None:
    # given
    ca = pki.create_ca("Acme Device CA")
    code = as_admin.get(CAS + "/verification_code").json()["code"]
    proof = pki.sign_device(ca, code)
    # when
    created = as_admin.post(
        CAS,
        {
            "pem": _pem(ca),
            "description": "factory line 1",
            "verification_pem": _pem(proof),
            "jitp": {"product": "widget", "tags": ["factory", "line1"], "description": "provisioned"},
        },
    )
    # then
    assert created.status_code == 201, created.content
    body = created.json()
    ski = x509.computed_ski(ca.cert)
    assert body["ski"] == ski
    assert body["jitp"] == {"product": "widget", "tags": ["factory", "line1"], "description": "provisioned"}
    assert [c["ski"] for c in as_viewer.get(CAS).json()] == [ski]
    assert as_viewer.get(f"{CAS}/{ski}").json()["description"] == "factory line 1"
    event = AuditEvent.objects.get(action="ca_certificate.registered")
    assert event.details["proof_of_possession"] is True


@pytest.mark.django_db
def test_it_refuses_bad_cas_with_the_reason(tenant: Tenant, as_admin: ApiClient) -> None:
    leaf = pki.self_signed_device("not-a-ca")
    ca = pki.create_ca("Acme CA")
    wrong_signer = pki.sign_device(pki.create_ca("Someone else"), "whatever")
    proof = _proof(as_admin, ca)
    not_ca = as_admin.post(CAS, {"pem": _pem(leaf), "verification_pem": proof})
    garbage = as_admin.post(CAS, {"pem": "hello", "verification_pem": proof})
    no_proof = as_admin.post(CAS, {"pem": _pem(ca)})
    wrong_proof = as_admin.post(CAS, {"pem": _pem(ca), "verification_pem": _pem(wrong_signer)})
    unknown_product = as_admin.post(CAS, {"pem": _pem(ca), "verification_pem": proof, "jitp": {"product": "nope"}})
    assert not_ca.status_code == 422 and "not a CA" in not_ca.json()["errors"]["detail"]
    assert garbage.status_code == 422
    assert no_proof.status_code == 422 and "verification_pem" in no_proof.content.decode()
    assert wrong_proof.status_code == 422 and "not signed by this CA" in wrong_proof.json()["errors"]["detail"]
    assert unknown_product.status_code == 422
    assert not CACertificate.objects.exists()


@pytest.mark.django_db
def test_it_changes_jitp_settings_and_deletes_a_ca(tenant: Tenant, as_admin: ApiClient, as_manager: ApiClient) -> None:
    ca = pki.create_ca("Acme CA")
    ski = as_admin.post(CAS, {"pem": _pem(ca), "verification_pem": _proof(as_admin, ca)}).json()["ski"]
    assert as_manager.patch(f"{CAS}/{ski}", {"jitp": {"product": "widget"}}).status_code == 403
    changed = as_admin.patch(f"{CAS}/{ski}", {"jitp": {"product": "widget", "tags": ["a", "a", "b"]}})
    assert changed.json()["jitp"] == {"product": "widget", "tags": ["a", "b"], "description": ""}
    assert as_admin.patch(f"{CAS}/{ski}", {"jitp": {"product": "widget", "tags": ["a b"]}}).status_code == 422
    cleared = as_admin.patch(f"{CAS}/{ski}", {"clear_jitp": True, "check_expiration": False})
    assert cleared.json()["jitp"] is None and cleared.json()["check_expiration"] is False
    assert AuditEvent.objects.filter(action="ca_certificate.changed").count() == 2
    assert as_manager.delete(f"{CAS}/{ski}").status_code == 403
    assert as_admin.delete(f"{CAS}/{ski}").status_code == 204
    assert as_admin.get(f"{CAS}/{ski}").status_code == 404


@pytest.mark.django_db
def test_it_hides_a_ca_from_another_organization(tenant: Tenant, other_tenant: Tenant, as_admin: ApiClient) -> None:
    ca = pki.create_ca("Globex CA")
    theirs = api_for(other_tenant.admin)
    proof = _proof(theirs, ca, "globex")
    ski = theirs.post("/orgs/globex/ca_certificates", {"pem": _pem(ca), "verification_pem": proof}).json()["ski"]
    assert as_admin.get(f"{CAS}/{ski}").status_code == 404
    assert as_admin.delete(f"{CAS}/{ski}").status_code == 404
    assert as_admin.get(f"/orgs/globex/ca_certificates/{ski}").status_code == 404
    assert CACertificate.objects.filter(ski=ski).exists()


@pytest.mark.django_db
def test_an_outsider_cannot_register_acmes_ca_without_its_key(
    tenant: Tenant, other_tenant: Tenant, as_admin: ApiClient
) -> None:
    # given acme's CA certificate, which anybody may read, and acme's proof for it
    ca = pki.create_ca("Acme Device CA")
    acme_proof = _proof(as_admin, ca)
    theirs = api_for(other_tenant.admin)
    # when globex posts it with nothing, with acme's proof, with a proof of its own key
    bare = theirs.post("/orgs/globex/ca_certificates", {"pem": _pem(ca)})
    replayed = theirs.post("/orgs/globex/ca_certificates", {"pem": _pem(ca), "verification_pem": acme_proof})
    forged = pki.sign_verification(
        pki.Issued(cert=ca.cert, key=pki.new_key()),
        theirs.get("/orgs/globex/ca_certificates/verification_code").json()["code"],
    )
    own_key = theirs.post("/orgs/globex/ca_certificates", {"pem": _pem(ca), "verification_pem": _pem(forged)})
    # then every attempt is refused and acme registers its CA
    assert [r.status_code for r in (bare, replayed, own_key)] == [422, 422, 422]
    assert "another organization" in replayed.json()["errors"]["detail"]
    assert as_admin.post(CAS, {"pem": _pem(ca), "verification_pem": acme_proof}).status_code == 201
    assert as_admin.get(CAS).json()[0]["verified"] is True


@pytest.mark.django_db
def test_it_verifies_a_ca_registered_before_proof_was_required(
    tenant: Tenant, other_tenant: Tenant, as_admin: ApiClient, as_manager: ApiClient
) -> None:
    # given
    ca = pki.create_ca("Legacy CA")
    ski = add_unverified_ca(tenant.org, ca).ski
    theirs = api_for(other_tenant.admin)
    assert as_admin.get(f"{CAS}/{ski}").json()["verified"] is False
    # when
    by_manager = as_manager.post(f"{CAS}/{ski}/verify", {"verification_pem": _proof(as_admin, ca)})
    by_outsider = theirs.post(f"{CAS}/{ski}/verify", {"verification_pem": _proof(as_admin, ca)})
    wrong = as_admin.post(f"{CAS}/{ski}/verify", {"verification_pem": _proof(as_admin, pki.create_ca("Other"))})
    verified = as_admin.post(f"{CAS}/{ski}/verify", {"verification_pem": _proof(as_admin, ca)})
    # then
    assert (by_manager.status_code, by_outsider.status_code, wrong.status_code) == (403, 404, 422)
    assert verified.status_code == 200, verified.content
    assert verified.json()["verified"] is True and verified.json()["verified_at"]
    assert AuditEvent.objects.filter(action="ca_certificate.verified").count() == 1


@pytest.mark.django_db
def test_it_registers_revokes_and_deletes_device_certificates(
    tenant: Tenant, as_manager: ApiClient, as_viewer: ApiClient
) -> None:
    # given
    make_device(tenant.product, "dev-1")
    ca = pki.create_ca("Acme CA")
    cert = pki.sign_device(ca, "dev-1")
    # when
    created = as_manager.post(CERTS, {"pem": _pem(cert)})
    serial = created.json()["serial"]
    again = as_manager.post(CERTS, {"pem": _pem(cert)})
    refused_to_viewer = as_viewer.post(f"{CERTS}/{serial}/revoke")
    revoked = as_manager.post(f"{CERTS}/{serial}/revoke")
    # then
    assert created.status_code == 201, created.content
    assert created.json()["fingerprint"] == x509.fingerprint(cert.cert)
    assert again.status_code == 422 and "already registered" in again.json()["errors"]["detail"]
    assert refused_to_viewer.status_code == 403
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert [c["serial"] for c in as_viewer.get(CERTS).json()] == [serial]
    assert as_viewer.get(f"{CERTS}/{serial}").json()["pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert AuditEvent.objects.filter(action="device_certificate.revoked").count() == 1
    assert as_manager.delete(f"{CERTS}/{serial}").status_code == 204
    assert not DeviceCertificate.objects.exists()


@pytest.mark.django_db
def test_it_refuses_device_certificates_across_organizations(
    tenant: Tenant, other_tenant: Tenant, as_manager: ApiClient
) -> None:
    make_device(tenant.product, "dev-1")
    make_device(other_tenant.product, "dev-1")
    theirs = api_for(other_tenant.admin)
    cert = pki.sign_device(pki.create_ca("Acme CA"), "dev-1")
    assert (
        as_manager.post("/orgs/globex/products/gadget/devices/dev-1/certificates", {"pem": _pem(cert)}).status_code
        == 404
    )
    registered = theirs.post("/orgs/globex/products/gadget/devices/dev-1/certificates", {"pem": _pem(cert)})
    serial = registered.json()["serial"]
    assert as_manager.get(f"{CERTS}/{serial}").status_code == 404
    assert as_manager.post(f"{CERTS}/{serial}/revoke").status_code == 404
    assert DeviceCertificate.objects.get().revoked_at is None
    assert Device.objects.filter(identifier="dev-1").count() == 2


@pytest.mark.django_db
def test_a_user_creates_lists_and_revokes_own_tokens(
    tenant: Tenant, as_viewer: ApiClient, as_outsider: ApiClient
) -> None:
    # when
    created = as_viewer.post("/users/me/tokens", {"note": "ci"})
    token = created.json()["token"]
    listed = as_viewer.get("/users/me/tokens").json()
    # then
    assert created.status_code == 201
    assert token.startswith("nhu_") and created.json()["prefix"] == token[:12]
    assert {t["note"] for t in listed} == {"ci", "tests"}
    assert all("token" not in t for t in listed)
    assert Client().get("/api/v1/users/me", HTTP_AUTHORIZATION=f"Bearer {token}").json()["username"] == "victor"
    token_id = created.json()["id"]
    assert as_outsider.delete(f"/users/me/tokens/{token_id}").status_code == 404
    assert as_viewer.delete(f"/users/me/tokens/{token_id}").status_code == 204
    assert Client().get("/api/v1/users/me", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401
    assert APIToken.objects.get(pk=token_id).revoked_at is not None
    assert AuditEvent.objects.filter(action="api_token.revoked").count() == 1
