"""A release pipeline as NervesHub's tools run it against /api/: sign in, import
a key, publish firmware, register a CA with its verification certificate,
create a device and a deployment, switch the deployment to the new firmware."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client

from certificates import pki
from nerveshub.tenancy.models import AuditEvent
from tests.api.nhapi.conftest import ORG, PRODUCT, Tool, b64
from tests.conftest import Tenant
from tests.support.fwup import FirmwareSpec, build_firmware, generate_keypair


def _iso(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


@pytest.mark.django_db
def test_it_runs_a_release_pipeline_with_the_tools_requests(tenant: Tenant) -> None:
    # given: the person types their user name where the tool asks for an e-mail
    signed_in = Tool(Client(), None).post("/users/login", {"email": "alice", "password": "pw-alice", "note": "ci"})
    assert signed_in.status_code == 200, signed_in.content
    tool = Tool(Client(), signed_in.json()["data"]["token"])
    keys = generate_keypair()
    ca = pki.create_ca("Acme Device CA")

    # when
    me = tool.get("/users/me")
    key = tool.post(ORG + "/keys", {"name": "release", "key": keys.public})
    first = tool.upload(PRODUCT + "/firmwares", build_firmware(FirmwareSpec(version="1.0.0", key=keys)))
    second = tool.upload(PRODUCT + "/firmwares", build_firmware(FirmwareSpec(version="1.1.0", key=keys)), ttl="3600")
    old, new = first.json()["data"]["uuid"], second.json()["data"]["uuid"]
    token = tool.get(ORG + "/ca_certificates/verification_token").json()["data"]["verification_token"]
    # As NervesHub documents it: CN "ownership-verification", the token in a SAN URI.
    verification = pki.sign_device(ca, "ownership-verification", san_uri=f"urn:nerveshub:verify:{token}").cert_pem
    registered = tool.post(
        ORG + "/ca_certificates",
        {
            "cert": b64(ca.cert_pem),
            "verification_cert": b64(verification),
            "description": "factory CA",
            "jitp": {"product_name": "widget", "tags": ["factory"], "description": "new"},
        },
    )
    device = tool.post(PRODUCT + "/devices", {"identifier": "dev-1", "description": "bench", "tags": ["beta"]})
    created = tool.post(
        PRODUCT + "/deployments",
        {"name": "beta", "firmware": old, "conditions": {"version": "", "tags": ["beta"]}, "is_active": False},
    )
    switched = tool.put(PRODUCT + "/deployments/beta", {"deployment": {"firmware": new}})
    activated = tool.put(PRODUCT + "/deployments/beta", {"deployment": {"is_active": "true"}})

    # then
    assert me.json() == {"data": {"name": "alice", "username": "alice", "email": "alice@example.com"}}
    assert key.status_code == 201 and key.json()["data"] == {"name": "release", "key": keys.public}
    assert first.status_code == 201 and second.status_code == 201, second.content
    assert second["location"] == f"/api{PRODUCT}/firmwares/{new}"
    assert second.json()["data"] | {"uuid": new} == {
        "uuid": new,
        "product": "widget",
        "version": "1.1.0",
        "platform": "rpi4",
        "architecture": "arm",
        "author": "The Nerves Team",
        "description": "",
        "vcs_identifier": "",
        "misc": "",
    }
    assert registered.status_code == 201, registered.content
    ca_out = registered.json()["data"]
    assert ca_out["serial"] == str(ca.cert.serial_number)
    assert _iso(ca_out["not_before"]) < _iso(ca_out["not_after"])
    assert ca_out["jitp"] == {"product_name": "widget", "tags": ["factory"], "description": "new"}
    assert device.status_code == 201 and device.json()["data"]["tags"] == ["beta"]
    assert created.status_code == 201 and created.json()["data"]["is_active"] is False
    assert switched.json()["data"]["firmware_uuid"] == new
    assert activated.json()["data"] | {"updated_at": None} == {
        "name": "beta",
        "is_active": True,
        "state": "on",
        "firmware_uuid": new,
        "firmware_version": "1.1.0",
        "conditions": {"version": "", "tags": ["beta"]},
        "paused": False,
        "updated_at": None,
    }
    listed = tool.get(PRODUCT + "/firmwares").json()["data"]
    assert sorted(f["version"] for f in listed) == ["1.0.0", "1.1.0"]
    assert tool.get(ORG + "/ca_certificates").json()["data"] == [ca_out]
    actions = set(AuditEvent.objects.filter(actor_user=tenant.admin).values_list("action", flat=True))
    assert {"firmware.uploaded", "ca_certificate.registered", "device.created", "deployment.activated"} <= actions
