"""The `nerveshub` command line client against a real hub process: the CI
pipeline (key, publish and wait, deployment), devices and certificates, and
refusals with the exit codes scripts rely on."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certificates import pki, x509
from certificates.models import DeviceCertificate
from deployments.models import Deployment
from devices.models import Device
from firmware.models import Firmware, FirmwareStatus
from firmware.tasks import validate_firmware_task
from nerveshub.tenancy.models import AuditEvent
from tests.certificates.proof import add_unverified_ca
from tests.cli.conftest import Cli
from tests.conftest import Tenant
from tests.deployments.conftest import make_firmware
from tests.support.fwup import FirmwareSpec, build_firmware, generate_keypair
from tests.support.hub import HubLauncher

SCOPE = ("--org", "acme", "--product", "widget")


def _run_validation_while(process: subprocess.Popen[str]) -> None:
    """The worker's part: with REDIS_URL the hub queues validation for a Celery
    worker, which the tests do not run (embedded hubs have validated already)."""
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        for firmware_id in Firmware.objects.filter(status=FirmwareStatus.PENDING).values_list("pk", flat=True):
            validate_firmware_task(firmware_id)
        time.sleep(0.2)


def test_login_saves_a_private_config_that_later_commands_use(live_hub: HubLauncher, tenant: Tenant, cli: Cli) -> None:
    # given
    hub = live_hub()
    token = cli.as_user(tenant.viewer, hub.http_url).token
    config = cli.home / "nerveshub" / "config.json"
    # when
    refused = cli("login", "--url", hub.http_url, "--token", "nhu_wrong")
    assert not config.exists()
    login = cli("login", "--url", hub.http_url, "--token", token)
    whoami = cli("whoami", "--json")
    # then
    assert refused.code == 1 and "missing or invalid API token" in refused.stderr
    assert login.code == 0, login.stderr
    assert "victor" in login.stdout
    assert json.loads(config.read_text()) == {"url": hub.http_url, "token": token}
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert whoami.code == 0 and whoami.json()["username"] == "victor"
    # The environment wins over the file; --config picks another file.
    assert cli("whoami", env={"NERVESHUB_TOKEN": "nhu_other"}).code == 1
    elsewhere = cli.home / "other.json"
    assert cli("--config", str(elsewhere), "whoami").code == 2
    assert cli("login", "--config", str(elsewhere), "--url", hub.http_url, "--token", token).code == 0
    assert cli("whoami", "--config", str(elsewhere)).code == 0


def test_exit_codes_for_usage_and_connection_errors(live_hub: HubLauncher, tenant: Tenant, cli: Cli) -> None:
    hub = live_hub()
    unreachable = cli("whoami", env={"NERVESHUB_URL": "http://127.0.0.1:9", "NERVESHUB_TOKEN": "nhu_x"})
    assert unreachable.code == 3 and "cannot reach" in unreachable.stderr
    assert cli("whoami").code == 2  # not logged in
    assert cli("firmware").code == 2
    assert cli("firmware", "list", env={"NERVESHUB_URL": hub.http_url, "NERVESHUB_TOKEN": "nhu_x"}).code == 2
    assert cli("whoami", env={"NERVESHUB_URL": "ftp://example.com", "NERVESHUB_TOKEN": "nhu_x"}).code == 2
    wrong_url = cli("whoami", env={"NERVESHUB_URL": hub.http_url + "/elsewhere", "NERVESHUB_TOKEN": "nhu_x"})
    assert wrong_url.code == 1 and "HTTP 404" in wrong_url.stderr
    missing = cli.as_user(tenant.manager, hub.http_url)("firmware", "publish", "nope.fw", *SCOPE)
    assert missing.code == 2 and "no such file" in missing.stderr


def test_a_pipeline_adds_a_key_publishes_firmware_and_rolls_it_out(
    live_hub: HubLauncher, tenant: Tenant, cli: Cli
) -> None:
    # given
    hub = live_hub()
    admin = cli.as_user(tenant.admin, hub.http_url)
    manager = cli.as_user(tenant.manager, hub.http_url)
    keys = generate_keypair(padded=False)
    (cli.home / "fwup-key.pub").write_text(keys.public + "\n")
    firmware_file = cli.home / "widget-2.0.0.fw"
    firmware_file.write_bytes(build_firmware(FirmwareSpec(product="widget", version="2.0.0", key=keys)))
    # when
    added = admin("key", "add", "release", "--file", "fwup-key.pub", "--org", "acme")
    publishing = manager.popen("firmware", "publish", str(firmware_file), *SCOPE, "--wait", "--json")
    _run_validation_while(publishing)
    stdout, stderr = publishing.communicate(timeout=30)
    # then
    assert added.code == 0, added.stderr
    assert publishing.returncode == 0, stderr
    published = json.loads(stdout)
    assert published["status"] == "valid" and published["version"] == "2.0.0"
    assert published["signing_key"] == "release"
    listed = manager("firmware", "list", *SCOPE, "--json").json()
    assert [f["uuid"] for f in listed] == [published["uuid"]]
    assert "release" in admin("key", "list", "--org", "acme").stdout

    # and the deployment steps
    created = manager(
        "deployment", "create", "stable", "--firmware", published["uuid"], "--version", "< 2.0.0", *SCOPE, "--json"
    )
    assert created.code == 0, created.stderr
    assert created.json()["is_active"] is False
    updated = manager("deployment", "update", "stable", "--tag", "beta,field", *SCOPE, "--json")
    assert updated.json()["conditions"] == {"version": "< 2.0.0", "tags": ["beta", "field"]}
    assert manager("deployment", "update", "stable", *SCOPE).code == 2
    deltas_on = manager("deployment", "update", "stable", "--delta-updates", "on", *SCOPE, "--json")
    assert deltas_on.code == 0 and deltas_on.json()["delta_updates"] is True
    assert manager("deployment", "update", "stable", "--delta-updates", "maybe", *SCOPE).code == 2
    assert manager("deployment", "activate", "stable", *SCOPE).code == 0
    status = manager("deployment", "status", "stable", *SCOPE, "--json")
    assert status.json()["is_active"] is True and "members" in status.json()["counts"]
    assert manager("deployment", "deactivate", "stable", *SCOPE).code == 0
    assert Deployment.objects.get(name="stable").is_active is False
    assert AuditEvent.objects.filter(action="deployment.created").count() == 1


def test_publish_reports_a_rejected_firmware_with_exit_code_1(live_hub: HubLauncher, tenant: Tenant, cli: Cli) -> None:
    hub = live_hub()
    manager = cli.as_user(tenant.manager, hub.http_url)
    unsigned = cli.home / "unsigned.fw"
    unsigned.write_bytes(build_firmware(FirmwareSpec(product="widget", key=None)))
    publishing = manager.popen("firmware", "publish", str(unsigned), *SCOPE, "--wait")
    _run_validation_while(publishing)
    _, stderr = publishing.communicate(timeout=30)
    assert publishing.returncode == 1
    assert "firmware rejected" in stderr


def test_refusals_carry_the_hubs_message(live_hub: HubLauncher, tenant: Tenant, other_tenant: Tenant, cli: Cli) -> None:
    # given
    hub = live_hub()
    viewer = cli.as_user(tenant.viewer, hub.http_url)
    manager = cli.as_user(tenant.manager, hub.http_url)
    fw = cli.home / "fw.fw"
    fw.write_bytes(build_firmware(FirmwareSpec(product="widget", key=None)))
    # when
    viewer_publish = viewer("firmware", "publish", str(fw), *SCOPE)
    other_product = manager("firmware", "publish", str(fw), "--org", "globex", "--product", "gadget")
    other_list = manager("device", "list", "--org", "globex", "--product", "gadget")
    first = manager("device", "create", "dev-1", *SCOPE)
    duplicate = manager("device", "create", "dev-1", *SCOPE)
    bad_deployment = manager("deployment", "create", "x", "--firmware", "nope", *SCOPE)
    # then
    assert viewer_publish.code == 1 and "HTTP 403" in viewer_publish.stderr and "manage role" in viewer_publish.stderr
    assert other_product.code == 1 and "HTTP 404" in other_product.stderr and "globex" in other_product.stderr
    assert other_list.code == 1 and "HTTP 404" in other_list.stderr
    assert first.code == 0
    assert duplicate.code == 1 and "already exists" in duplicate.stderr
    assert bad_deployment.code == 1 and "not found" in bad_deployment.stderr
    assert not Firmware.objects.exists()


def test_devices_tags_and_a_certificate_signed_by_a_local_ca(live_hub: HubLauncher, tenant: Tenant, cli: Cli) -> None:
    # given
    hub = live_hub()
    manager = cli.as_user(tenant.manager, hub.http_url)
    ca = pki.create_ca("Acme factory CA")
    (cli.home / "ca.pem").write_bytes(ca.cert_pem)
    (cli.home / "ca-key.pem").write_bytes(ca.key_pem)
    # when
    created = manager("device", "create", "SN-0001", "--tag", "beta", "--description", "bench unit", *SCOPE)
    tagged = manager("device", "tag", "SN-0001", "field", "eu", *SCOPE, "--json")
    listed = manager("device", "list", "--tag", "eu", *SCOPE, "--json")
    cert = manager("device", "cert", "create", "SN-0001", "--ca-cert", "ca.pem", "--ca-key", "ca-key.pem", *SCOPE)
    again = manager("device", "cert", "create", "SN-0001", "--ca-cert", "ca.pem", "--ca-key", "ca-key.pem", *SCOPE)
    # then
    assert created.code == 0, created.stderr
    assert tagged.code == 0 and tagged.json()["tags"] == ["field", "eu"]
    assert [d["identifier"] for d in listed.json()] == ["SN-0001"]
    assert cert.code == 0, cert.stderr
    written = x509.load_one((cli.home / "SN-0001-cert.pem").read_bytes())
    key = serialization.load_pem_private_key((cli.home / "SN-0001-key.pem").read_bytes(), password=None)
    assert written.public_key() == key.public_key()
    assert x509.signed_by(written, ca.cert) and x509.common_name(written) == "SN-0001"
    assert stat.S_IMODE(os.stat(cli.home / "SN-0001-key.pem").st_mode) == 0o600
    stored = DeviceCertificate.objects.get()
    assert stored.device == Device.objects.get(identifier="SN-0001")
    assert stored.fingerprint == x509.fingerprint(written)
    assert again.code == 2 and "exists" in again.stderr
    certs = manager("device", "cert", "list", "SN-0001", *SCOPE, "--json").json()
    assert [c["serial"] for c in certs] == [stored.serial]


def test_a_viewer_cannot_register_a_certificate_and_nothing_is_written(
    live_hub: HubLauncher, tenant: Tenant, cli: Cli, tmp_path: Path
) -> None:
    hub = live_hub()
    make_firmware(tenant.product, "1.0.0")
    viewer = cli.as_user(tenant.viewer, hub.http_url)
    Device.objects.create(org=tenant.org, product=tenant.product, identifier="SN-9")
    ca = pki.create_ca("CA")
    Path(cli.home / "ca.pem").write_bytes(ca.cert_pem)
    Path(cli.home / "ca-key.pem").write_bytes(ca.key_pem)
    refused = viewer("device", "cert", "create", "SN-9", "--ca-cert", "ca.pem", "--ca-key", "ca-key.pem", *SCOPE)
    assert refused.code == 1 and "HTTP 403" in refused.stderr
    assert not (cli.home / "SN-9-key.pem").exists()
    assert not DeviceCertificate.objects.exists()


@pytest.mark.parametrize("argv", [["--help"], ["device", "cert", "create", "--help"]])
def test_help_exits_0(cli: Cli, argv: list[str]) -> None:
    assert cli(*argv).code == 0


def test_an_admin_registers_a_ca_with_proof_of_possession_and_jitp(
    live_hub: HubLauncher, tenant: Tenant, cli: Cli
) -> None:
    # given
    hub = live_hub()
    admin = cli.as_user(tenant.admin, hub.http_url)
    manager = cli.as_user(tenant.manager, hub.http_url)
    ca = pki.create_ca("Acme factory CA")
    (cli.home / "ca.pem").write_bytes(ca.cert_pem)
    code = admin("ca", "verification-code", "--org", "acme").stdout.strip()
    (cli.home / "proof.pem").write_bytes(pki.sign_device(ca, code).cert_pem)
    # when
    without_proof = admin("ca", "add", "--file", "ca.pem", "--org", "acme")
    refused = manager("ca", "add", "--file", "ca.pem", "--verification-file", "proof.pem", "--org", "acme")
    added = admin(
        "ca", "add", "--file", "ca.pem", "--verification-file", "proof.pem",
        "--jitp-product", "widget", "--jitp-tag", "factory", "--org", "acme", "--json",
    )  # fmt: skip
    # then
    assert without_proof.code == 2 and "proof of possession is required" in without_proof.stderr
    assert refused.code == 1 and "HTTP 403" in refused.stderr
    assert added.code == 0, added.stderr
    assert added.json()["jitp"] == {"product": "widget", "tags": ["factory"], "description": ""}
    assert added.json()["verified"] is True
    assert [c["ski"] for c in admin("ca", "list", "--org", "acme", "--json").json()] == [added.json()["ski"]]
    assert AuditEvent.objects.get(action="ca_certificate.registered").details["proof_of_possession"] is True


def test_an_admin_proves_possession_with_the_ca_key_and_verifies_a_legacy_ca(
    live_hub: HubLauncher, tenant: Tenant, other_tenant: Tenant, cli: Cli
) -> None:
    # given acme's CA and key on the admin's machine, and a CA registered before proof was required
    hub = live_hub()
    admin = cli.as_user(tenant.admin, hub.http_url)
    outsider = cli.as_user(tenant.outsider, hub.http_url)
    ca = pki.create_ca("Acme line 2 CA")
    (cli.home / "ca.pem").write_bytes(ca.cert_pem)
    (cli.home / "ca-key.pem").write_bytes(ca.key_pem)
    legacy = pki.create_ca("Acme legacy CA")
    (cli.home / "legacy-key.pem").write_bytes(legacy.key_pem)
    legacy_ski = add_unverified_ca(tenant.org, legacy).ski
    # when globex tries first without the key, then acme registers and verifies with its keys
    squat = outsider("ca", "add", "--file", "ca.pem", "--verification-file", "ca.pem", "--org", "globex")
    added = admin("ca", "add", "--file", "ca.pem", "--ca-key", "ca-key.pem", "--org", "acme", "--json")
    wrong_key = admin("ca", "verify", legacy_ski, "--ca-key", "ca-key.pem", "--org", "acme")
    verified = admin("ca", "verify", legacy_ski, "--ca-key", "legacy-key.pem", "--org", "acme", "--json")
    # then
    assert squat.code == 1 and "HTTP 422" in squat.stderr
    assert added.code == 0, added.stderr
    assert added.json()["verified"] is True
    assert wrong_key.code == 2 and "does not match" in wrong_key.stderr
    assert verified.code == 0, verified.stderr
    assert verified.json()["verified"] is True
    assert AuditEvent.objects.filter(action="ca_certificate.verified").count() == 1
