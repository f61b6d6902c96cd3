"""Every route of /api/ driven with the bodies NervesHub's tools send: the
answers' shapes, the `{"deployment": {KEY: "string"}}` updates, base64 PEM
bodies, deletes answering 204, and the 422s that say what is wrong."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from certificates import pki
from deployments.models import Deployment
from devices.models import Device
from firmware.models import Firmware
from nerveshub.tenancy.models import AuditEvent, Membership, Product, Role
from tests.api.nhapi.conftest import ORG, PRODUCT, Tool, b64, tool_for
from tests.conftest import Tenant
from tests.support.fwup import FirmwareSpec, KeyPair, build_firmware, generate_keypair

pytestmark = pytest.mark.django_db


def _publish(tool: Tool, keys: KeyPair, version: str) -> str:
    answer = tool.upload(PRODUCT + "/firmwares", build_firmware(FirmwareSpec(version=version, key=keys)))
    assert answer.status_code == 201, answer.content
    return str(answer.json()["data"]["uuid"])


@pytest.fixture
def keys(admin_tool: Tool) -> KeyPair:
    pair = generate_keypair()
    assert admin_tool.post(ORG + "/keys", {"name": "release", "key": pair.public}).status_code == 201
    return pair


# --- Users ---------------------------------------------------------------------------


def test_it_signs_in_with_the_e_mail_address_and_by_the_older_route(tenant: Tenant) -> None:
    by_email = Tool(Client(), None).post("/users/auth", {"email": "ALICE@example.com", "password": "pw-alice"})
    data = by_email.json()["data"]
    assert by_email.status_code == 200
    assert (data["name"], data["email"]) == ("alice", "alice@example.com")
    assert data["token"].startswith("nhu_")
    assert Tool(Client(), data["token"]).get("/users/me").json()["data"]["username"] == "alice"


def test_it_refuses_a_wrong_password_and_then_locks_the_account(tenant: Tenant) -> None:
    anonymous = Tool(Client(), None)
    wrong = [anonymous.post("/users/login", {"email": "alice", "password": "guess"}) for _ in range(5)]
    # Alternating name and e-mail address counts against the same account.
    right = anonymous.post("/users/login", {"email": "alice@example.com", "password": "pw-alice"})
    assert [w.status_code for w in wrong] == [401, 401, 401, 401, 429]
    assert wrong[0].json() == {"errors": {"detail": "invalid user name, e-mail address or password"}}
    assert right.status_code == 429 and "Try again" in right.json()["errors"]["detail"]
    assert AuditEvent.objects.filter(action="login.locked_out").count() == 1


def test_it_refuses_unknown_users_and_malformed_sign_ins(tenant: Tenant) -> None:
    anonymous = Tool(Client(), None)
    assert anonymous.post("/users/login", {"email": "nobody", "password": "x"}).status_code == 401
    missing = anonymous.post("/users/login", {"email": "alice"})
    assert missing.status_code == 422 and "password" in missing.json()["errors"]
    assert anonymous.get("/users/me").status_code == 401


def test_it_lists_the_users_organizations(admin_tool: Tool, outsider_tool: Tool) -> None:
    assert admin_tool.get("/orgs").json() == {"data": [{"name": "acme"}]}
    assert outsider_tool.get("/orgs").json() == {"data": [{"name": "globex"}]}


# --- Members -------------------------------------------------------------------------


def test_it_manages_members(tenant: Tenant, admin_tool: Tool, viewer_tool: Tool) -> None:
    # given
    newcomer = User.objects.create_user("nina", "nina@example.com", "pw-nina")
    # when
    listed = viewer_tool.get(ORG + "/users").json()["data"]
    added = admin_tool.post(ORG + "/users", {"username": "nina@example.com", "role": "read"})
    again = admin_tool.post(ORG + "/users", {"username": "nina", "role": "view"})
    fetched = viewer_tool.get(ORG + "/users/nina@example.com")
    changed = admin_tool.put(ORG + "/users/nina", {"role": "manage"})
    invited = admin_tool.post(ORG + "/users/invite", {"email": "olga@example.com", "role": "view"})
    removed = admin_tool.delete(ORG + "/users/nina")
    # then
    assert {m["username"]: m["role"] for m in listed} == {
        "alice": "admin",
        "mallory-manager": "manage",
        "victor": "view",
    }
    assert added.status_code == 201 and added.json()["data"]["role"] == "view"
    assert again.status_code == 409
    assert fetched.json()["data"] == {"name": "nina", "username": "nina", "email": "nina@example.com", "role": "view"}
    assert changed.json()["data"]["role"] == "manage"
    assert invited.status_code == 201 and "/invitations/" in invited.json()["data"]["invite_url"]
    assert removed.status_code == 204
    assert not Membership.objects.filter(user=newcomer).exists()


def test_member_changes_need_admin_and_keep_one_admin(tenant: Tenant, admin_tool: Tool, manager_tool: Tool) -> None:
    assert manager_tool.put(ORG + "/users/victor", {"role": "admin"}).status_code == 401
    assert manager_tool.post(ORG + "/users/invite", {"email": "x@example.com", "role": "admin"}).status_code == 401
    last = admin_tool.put(ORG + "/users/alice", {"role": "view"})
    assert last.status_code == 409 and "admin" in last.json()["errors"]["detail"]
    bad_role = admin_tool.put(ORG + "/users/victor", {"role": "owner"})
    assert bad_role.status_code == 422 and "role" in bad_role.json()["errors"]
    assert admin_tool.post(ORG + "/users", {"username": "ghost", "role": "view"}).status_code == 422
    assert admin_tool.get(ORG + "/users/ghost").status_code == 404


# --- Keys ----------------------------------------------------------------------------


def test_it_manages_keys(admin_tool: Tool, viewer_tool: Tool, keys: KeyPair) -> None:
    assert viewer_tool.get(ORG + "/keys").json() == {"data": [{"name": "release", "key": keys.public}]}
    assert viewer_tool.get(ORG + "/keys/release").json()["data"]["key"] == keys.public
    taken = admin_tool.post(ORG + "/keys", {"name": "release", "key": generate_keypair().public})
    assert taken.status_code == 422 and taken.json() == {"errors": {"name": ["has already been taken"]}}
    malformed = admin_tool.post(ORG + "/keys", {"name": "bad", "key": "not a key"})
    assert malformed.status_code == 422 and "key" in malformed.json()["errors"]
    assert admin_tool.delete(ORG + "/keys/release").status_code == 204
    assert viewer_tool.get(ORG + "/keys/release").status_code == 404


# --- Firmware ------------------------------------------------------------------------


def test_it_publishes_lists_gets_and_deletes_firmware(manager_tool: Tool, viewer_tool: Tool, keys: KeyPair) -> None:
    uuid = _publish(manager_tool, keys, "1.0.0")
    assert [f["uuid"] for f in viewer_tool.get(PRODUCT + "/firmwares").json()["data"]] == [uuid]
    assert viewer_tool.get(PRODUCT + "/firmwares/" + uuid).json()["data"]["version"] == "1.0.0"
    assert manager_tool.delete(PRODUCT + "/firmwares/" + uuid).status_code == 204
    assert viewer_tool.get(PRODUCT + "/firmwares/" + uuid).status_code == 404


def test_it_refuses_firmware_with_the_reason(manager_tool: Tool, keys: KeyPair) -> None:
    unsigned = manager_tool.upload(PRODUCT + "/firmwares", build_firmware(FirmwareSpec(key=None)))
    other_product = manager_tool.upload(PRODUCT + "/firmwares", build_firmware(FirmwareSpec(product="x", key=keys)))
    not_fw = manager_tool.upload(PRODUCT + "/firmwares", b"\x00" * 100)
    bad_ttl = manager_tool.upload(PRODUCT + "/firmwares", build_firmware(FirmwareSpec(key=keys)), ttl="-1")
    huge_ttl = manager_tool.upload(PRODUCT + "/firmwares", build_firmware(FirmwareSpec(key=keys)), ttl="9" * 40)
    no_part = manager_tool.client.post(
        "/api" + PRODUCT + "/firmwares", {"file": "x"}, HTTP_AUTHORIZATION=f"token {manager_tool.token}"
    )
    for answer in (unsigned, other_product, not_fw, no_part):
        assert answer.status_code == 422, answer.content
        assert answer.json()["errors"]["firmware"][0]
    assert "widget" in other_product.json()["errors"]["firmware"][0]
    assert bad_ttl.status_code == huge_ttl.status_code == 422
    assert "ttl" in bad_ttl.json()["errors"]


def test_firmware_in_a_deployment_is_kept(manager_tool: Tool, keys: KeyPair) -> None:
    uuid = _publish(manager_tool, keys, "1.0.0")
    manager_tool.post(PRODUCT + "/deployments", {"name": "main", "firmware": uuid})
    kept = manager_tool.delete(PRODUCT + "/firmwares/" + uuid)
    assert kept.status_code == 409 and kept.json()["errors"]["detail"]


# --- CA certificates -----------------------------------------------------------------


def test_it_registers_gets_and_deletes_a_ca(tenant: Tenant, admin_tool: Tool, viewer_tool: Tool) -> None:
    ca = pki.create_ca("Acme CA")
    token = admin_tool.get(ORG + "/ca_certificates/verification_token").json()["data"]["verification_token"]
    proof = pki.sign_verification(ca, token).cert_pem
    created = admin_tool.post(ORG + "/ca_certificates", {"cert": b64(ca.cert_pem), "verification_cert": b64(proof)})
    serial = str(ca.cert.serial_number)
    assert created.status_code == 201, created.content
    assert created.json()["data"]["jitp"] is None
    assert viewer_tool.get(ORG + "/ca_certificates/" + serial).json() == created.json()
    assert viewer_tool.get(ORG + "/ca_certificates/verification_token").status_code == 401
    assert admin_tool.delete(ORG + "/ca_certificates/" + serial).status_code == 204
    assert viewer_tool.get(ORG + "/ca_certificates/" + serial).status_code == 404


def test_a_ca_without_proof_is_refused_with_how_to_prove_it(admin_tool: Tool) -> None:
    ca = pki.create_ca("Acme CA")
    answer = admin_tool.post(ORG + "/ca_certificates", {"cert": b64(ca.cert_pem), "description": "x"})
    assert answer.status_code == 422
    assert "/api/orgs/acme/ca_certificates/verification_token" in answer.json()["errors"]["verification_cert"][0]


def test_a_ca_with_the_wrong_proof_or_bad_base64_is_refused(tenant: Tenant, admin_tool: Tool) -> None:
    ca, other = pki.create_ca("Acme CA"), pki.create_ca("Other CA")
    token = admin_tool.get(ORG + "/ca_certificates/verification_token").json()["data"]["verification_token"]
    wrong_signer = pki.sign_verification(other, token).cert_pem
    answers = [
        admin_tool.post(ORG + "/ca_certificates", {"cert": b64(ca.cert_pem), "verification_cert": b64(wrong_signer)}),
        admin_tool.post(ORG + "/ca_certificates", {"cert": "%%%not base64", "verification_cert": "x"}),
        admin_tool.post(ORG + "/ca_certificates", {"cert": b64(b"\xff\xfe binary"), "verification_cert": "x"}),
        admin_tool.post(ORG + "/ca_certificates", {"cert": b64("just text"), "verification_cert": "x"}),
        admin_tool.post(
            ORG + "/ca_certificates",
            {"cert": b64(ca.cert_pem), "verification_cert": b64(wrong_signer), "jitp": {"product_name": "nope"}},
        ),
    ]
    assert [a.status_code for a in answers] == [422] * 5
    assert [next(iter(a.json()["errors"])) for a in answers] == ["cert", "cert", "cert", "cert", "jitp.product_name"]


# --- Products ------------------------------------------------------------------------


def test_it_manages_products(tenant: Tenant, manager_tool: Tool, admin_tool: Tool, viewer_tool: Tool) -> None:
    flat = manager_tool.post(ORG + "/products", {"name": "gizmo"})
    wrapped = manager_tool.post(ORG + "/products", {"product": {"name": "doohickey", "description": "d"}})
    taken = manager_tool.post(ORG + "/products", {"name": "gizmo"})
    blank = manager_tool.post(ORG + "/products", {})
    put = manager_tool.put(ORG + "/products/gizmo", {"product": {"description": "new"}})
    patched = manager_tool.send("PATCH", ORG + "/products/gizmo", {"name": "gizmo-2"})
    assert flat.status_code == wrapped.status_code == 201
    assert taken.status_code == blank.status_code == 422
    assert put.json()["data"] == {"name": "gizmo", "description": "new"}
    assert patched.json()["data"] == {"name": "gizmo-2", "description": "new"}
    assert viewer_tool.get(ORG + "/products/gizmo-2").json()["data"]["name"] == "gizmo-2"
    names = [p["name"] for p in viewer_tool.get(ORG + "/products").json()["data"]]
    assert names == ["doohickey", "gizmo-2", "widget"]
    assert manager_tool.delete(ORG + "/products/doohickey").status_code == 401  # deleting needs admin
    assert admin_tool.delete(ORG + "/products/doohickey").status_code == 204
    assert not Product.objects.filter(name="doohickey").exists()


# --- Devices -------------------------------------------------------------------------


def test_it_creates_lists_updates_and_deletes_devices(tenant: Tenant, manager_tool: Tool, viewer_tool: Tool) -> None:
    for n in range(3):
        created = manager_tool.post(PRODUCT + "/devices", {"identifier": f"dev-{n}", "description": "", "tags": ["a"]})
        assert created.status_code == 201
    page = viewer_tool.get(PRODUCT + "/devices", {"pagination[page]": "2", "pagination[page_size]": "2"}).json()
    tagged = viewer_tool.get(PRODUCT + "/devices", {"filters[tag]": "b"}).json()
    flat = manager_tool.put(PRODUCT + "/devices/dev-1", {"tags": "b, c", "description": "desk"})
    wrapped = manager_tool.put(PRODUCT + "/devices/dev-1", {"device": {"updates_enabled": "false"}})
    fetched = viewer_tool.get(PRODUCT + "/devices/dev-1").json()["data"]
    taken = manager_tool.post(PRODUCT + "/devices", {"identifier": "dev-1"})
    deleted = manager_tool.delete(PRODUCT + "/devices/dev-2")
    assert [d["identifier"] for d in page["data"]] == ["dev-2"]
    assert page["pagination"] == {"page_number": 2, "page_size": 2, "total_entries": 3, "total_pages": 2}
    assert tagged["data"] == []
    assert flat.json()["data"]["tags"] == ["b", "c"]
    assert wrapped.json()["data"]["updates_enabled"] is False
    assert {k: fetched[k] for k in ("identifier", "description", "online", "connection_status", "version")} == {
        "identifier": "dev-1",
        "description": "desk",
        "online": False,
        "connection_status": "not_seen",
        "version": "",
    }
    assert fetched["firmware_metadata"] is None and fetched["deployment_group"] is None
    assert taken.status_code == 422 and taken.json() == {"errors": {"identifier": ["has already been taken"]}}
    assert deleted.status_code == 204
    assert Device.objects.get(identifier="dev-2").deleted_at is not None
    assert viewer_tool.get(PRODUCT + "/devices/dev-2").status_code == 404


def test_device_actions(tenant: Tenant, manager_tool: Tool, viewer_tool: Tool) -> None:
    manager_tool.post(PRODUCT + "/devices", {"identifier": "dev-1"})
    assert manager_tool.post(PRODUCT + "/devices/dev-1/reboot").status_code == 200
    assert manager_tool.post(PRODUCT + "/devices/dev-1/reconnect").status_code == 200
    assert manager_tool.delete(PRODUCT + "/devices/dev-1/penalty").status_code == 204
    assert viewer_tool.post(PRODUCT + "/devices/dev-1/reboot").status_code == 401
    actions = set(AuditEvent.objects.filter(actor_user=tenant.manager).values_list("action", flat=True))
    assert {"device.reboot_requested", "device.reconnect_requested"} <= actions


def test_device_certificates(tenant: Tenant, manager_tool: Tool, viewer_tool: Tool) -> None:
    manager_tool.post(PRODUCT + "/devices", {"identifier": "dev-1"})
    issued = pki.sign_device(pki.create_ca("Acme CA"), "dev-1")
    created = manager_tool.post(PRODUCT + "/devices/dev-1/certificates", {"cert": b64(issued.cert_pem)})
    serial = created.json()["data"]["serial"]
    assert created.status_code == 201
    assert [c["serial"] for c in viewer_tool.get(PRODUCT + "/devices/dev-1/certificates").json()["data"]] == [serial]
    assert viewer_tool.get(f"{PRODUCT}/devices/dev-1/certificates/{serial}").json() == created.json()
    bad = manager_tool.post(PRODUCT + "/devices/dev-1/certificates", {"cert": "bm90IGEgY2VydA=="})
    assert bad.status_code == 422 and "cert" in bad.json()["errors"]
    assert manager_tool.delete(f"{PRODUCT}/devices/dev-1/certificates/{serial}").status_code == 204
    assert viewer_tool.get(f"{PRODUCT}/devices/dev-1/certificates/{serial}").status_code == 404


# --- Deployments ---------------------------------------------------------------------


def test_deployment_updates_as_the_tool_sends_them(manager_tool: Tool, viewer_tool: Tool, keys: KeyPair) -> None:
    old, new = _publish(manager_tool, keys, "1.0.0"), _publish(manager_tool, keys, "2.0.0")
    created = manager_tool.post(
        PRODUCT + "/deployments",
        {"name": "main", "firmware": old, "conditions": {"version": "", "tags": []}, "is_active": False},
    )
    url = PRODUCT + "/deployments/main"
    steps: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"state": "on"}, {"is_active": True, "state": "on"}),
        ({"state": "off"}, {"is_active": False}),
        ({"is_active": "true"}, {"is_active": True}),
        ({"is_active": "false"}, {"is_active": False}),
        ({"firmware": new}, {"firmware_uuid": new, "firmware_version": "2.0.0"}),
        ({"version": "~> 1.0"}, {"conditions": {"version": "~> 1.0", "tags": []}}),
        ({"tags": "beta,lab"}, {"conditions": {"version": "~> 1.0", "tags": ["beta", "lab"]}}),
        ({"name": "stable"}, {"name": "stable"}),
    ]
    assert created.status_code == 201 and created.json()["data"]["state"] == "off"
    for change, expected in steps:
        answer = manager_tool.put(url, {"deployment": change})
        assert answer.status_code == 200, (change, answer.content)
        data = answer.json()["data"]
        assert {k: data[k] for k in expected} == expected, change
        url = PRODUCT + "/deployments/" + data["name"]
    assert [d["name"] for d in viewer_tool.get(PRODUCT + "/deployments").json()["data"]] == ["stable"]
    assert viewer_tool.get(url).json()["data"]["firmware_uuid"] == new


def test_deployment_updates_are_checked(manager_tool: Tool, keys: KeyPair) -> None:
    uuid = _publish(manager_tool, keys, "1.0.0")
    manager_tool.post(PRODUCT + "/deployments", {"name": "main", "firmware": uuid})
    url = PRODUCT + "/deployments/main"
    answers = {
        "state": manager_tool.put(url, {"deployment": {"state": "maybe"}}),
        "is_active": manager_tool.put(url, {"deployment": {"is_active": "perhaps"}}),
        "firmware": manager_tool.put(url, {"deployment": {"firmware": "0000"}}),
        "deployment.colour": manager_tool.put(url, {"deployment": {"colour": "red"}}),
        "deployment": manager_tool.put(url, {"is_active": True}),
        "conditions_version": manager_tool.put(url, {"deployment": {"version": "not a requirement"}}),
    }
    for field, answer in answers.items():
        assert answer.status_code == 422, (field, answer.content)
        assert field in answer.json()["errors"], (field, answer.json())
    missing = manager_tool.post(PRODUCT + "/deployments", {"name": "x", "firmware": "nope"})
    assert missing.status_code == 422 and "firmware" in missing.json()["errors"]


def test_deleting_a_deployment(manager_tool: Tool, keys: KeyPair) -> None:
    uuid = _publish(manager_tool, keys, "1.0.0")
    manager_tool.post(PRODUCT + "/deployments", {"name": "main", "firmware": uuid, "is_active": "true"})
    active = manager_tool.delete(PRODUCT + "/deployments/main")
    manager_tool.put(PRODUCT + "/deployments/main", {"deployment": {"state": "off"}})
    deleted = manager_tool.delete(PRODUCT + "/deployments/main")
    assert active.status_code == 409 and "deactivate" in active.json()["errors"]["detail"]
    assert deleted.status_code == 204
    assert not Deployment.objects.exists()
    assert AuditEvent.objects.filter(action="deployment.deleted").count() == 1
    assert Firmware.objects.filter(uuid=uuid).exists()


def test_roles_are_read_on_every_request(tenant: Tenant, manager_tool: Tool) -> None:
    # given: a token that worked
    assert manager_tool.get(PRODUCT + "/devices").status_code == 200
    # when: its holder is demoted, then removed
    Membership.objects.filter(user=tenant.manager).update(role=Role.VIEW)
    demoted = manager_tool.post(PRODUCT + "/devices", {"identifier": "dev-9"})
    Membership.objects.filter(user=tenant.manager).delete()
    removed = manager_tool.get(PRODUCT + "/devices")
    # then
    assert demoted.status_code == 401 and "manage" in demoted.json()["errors"]["detail"]
    assert removed.status_code == 404
    assert tool_for(None).get(PRODUCT + "/devices").status_code == 401


def test_moving_a_device(tenant: Tenant, other_tenant: Tenant, manager_tool: Tool, admin_tool: Tool) -> None:
    # given: a second product here, and alice made a manager in globex too
    Product.objects.create(org=tenant.org, name="gadget")
    Membership.objects.create(org=other_tenant.org, user=tenant.admin, role=Role.MANAGE)
    for identifier in ("dev-1", "dev-2"):
        manager_tool.post(PRODUCT + "/devices", {"identifier": identifier})
    Device.objects.create(org=other_tenant.org, product=other_tenant.product, identifier="dev-2")
    move = {"new_org_name": "acme", "new_product_name": "gadget"}
    # when
    within = manager_tool.post(PRODUCT + "/devices/dev-1/move", move)
    to_globex = {"new_org_name": "globex", "new_product_name": "gadget"}
    refused = manager_tool.post(ORG + "/products/gadget/devices/dev-1/move", to_globex)
    across = admin_tool.post(ORG + "/products/gadget/devices/dev-1/move", to_globex)
    clash = admin_tool.post(PRODUCT + "/devices/dev-2/move", to_globex)
    # then
    assert within.status_code == 200 and within.json()["data"]["product_name"] == "gadget"
    assert refused.status_code == 404  # the manager is no member of globex
    assert across.status_code == 200 and across.json()["data"]["org_name"] == "globex"
    assert Device.objects.get(identifier="dev-1").org_id == other_tenant.org.pk
    assert clash.status_code == 409 and "dev-2" in clash.json()["errors"]["detail"]
    moved = AuditEvent.objects.filter(action="device.moved")
    assert sorted(moved.values_list("org__name", flat=True)) == ["acme", "acme", "globex"]
