"""Trust preflight (deployments/preflight.py): which devices would refuse a
deployment's firmware and why, what activation does about them under warn
and refuse, and that refused devices are never claimed."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError

from deployments import preflight, rollout
from deployments.models import Deployment, DeviceUpdate, FwupKeysSent, Preflight
from devices.models import Device
from firmware import fwfile
from firmware.models import Firmware, SigningKey
from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import AuditEvent
from tests.conftest import Tenant
from tests.deployments.conftest import make_device, make_firmware
from tests.support.fwup import generate_keypair

pytestmark = pytest.mark.django_db


@pytest.fixture
def release_key(tenant: Tenant) -> SigningKey:
    return SigningKey.objects.create(org=tenant.org, name="release", key=generate_keypair().public)


@pytest.fixture
def signed(tenant: Tenant, release_key: SigningKey) -> Deployment:
    """An inactive deployment of firmware signed with `release`, needing fwup 1.10.0."""
    firmware = make_firmware(tenant.product, "3.0.0")
    Firmware.objects.filter(pk=firmware.pk).update(signing_key=release_key, require_fwup_version="1.10.0")
    return Deployment.objects.select_related("firmware", "product").get(
        pk=Deployment.objects.create(
            org=tenant.org, product=tenant.product, name="signed", firmware=firmware, concurrent_updates=10
        ).pk
    )


def _device(tenant: Tenant, name: str, *, keys: list[str] | None = None, fwup: str = "1.13.2", **fields: Any) -> Device:
    device = make_device(tenant.product, name, fwup_version=fwup, **fields)
    if keys:
        preflight.record_keys_sent(device.pk, keys)
    return device


def test_it_records_the_keys_a_device_was_last_sent(tenant: Tenant) -> None:
    # given
    device = make_device(tenant.product, "d1")
    first, second = generate_keypair().public, generate_keypair().public
    # when / then: each message replaces the set; an empty one changes nothing
    preflight.record_keys_sent(device.pk, [first, second])
    preflight.record_keys_sent(device.pk, [second])
    preflight.record_keys_sent(device.pk, [])
    assert list(FwupKeysSent.objects.filter(device=device).values_list("key", flat=True)) == [second]


def test_it_gives_each_reason_a_device_would_refuse_the_firmware(
    tenant: Tenant, signed: Deployment, release_key: SigningKey
) -> None:
    # given
    _device(tenant, "trusting", keys=[release_key.key])
    _device(tenant, "keyless")
    _device(tenant, "old-fwup", keys=[release_key.key], fwup="1.8.4")
    _device(tenant, "silent-fwup", keys=[release_key.key], fwup="")
    _device(tenant, "other-board", keys=[release_key.key], platform="bbb", architecture="x86_64")
    _device(tenant, "updated", firmware_uuid=signed.firmware.uuid or "")
    # when
    report = preflight.check(signed)
    # then
    reasons = {report.identifiers[pk]: problems for pk, problems in report.reasons.items()}
    assert report.checked == 5
    assert reasons == {
        "keyless": ["does not have the signing key release"],
        "old-fwup": ["fwup 1.8.4 is older than the firmware's require-fwup-version 1.10.0"],
        "silent-fwup": ["fwup version not reported (the firmware requires 1.10.0 or later)"],
        "other-board": ["platform bbb ≠ the firmware's rpi4", "architecture x86_64 ≠ the firmware's arm"],
    }
    assert report.summary().startswith("4 of 5 matching device(s) would refuse this firmware: ")


def test_a_key_the_product_declares_built_in_is_trusted_without_being_sent(
    tenant: Tenant, signed: Deployment, release_key: SigningKey
) -> None:
    _device(tenant, "keyless")
    tenancy.save_product("test", tenant.product, [], via="test", builtin_keys=[release_key])
    assert preflight.check(signed).reasons == {}
    assert AuditEvent.objects.filter(action="product.changed", details__fields=["builtin_keys"]).exists()


def test_a_product_cannot_declare_another_organizations_key(tenant: Tenant, other_tenant: Tenant) -> None:
    foreign = SigningKey.objects.create(org=other_tenant.org, name="theirs", key=generate_keypair().public)
    with pytest.raises(ValidationError) as caught:
        tenancy.save_product("test", tenant.product, [], via="test", builtin_keys=[foreign])
    assert "Not a signing key of this organization: theirs." in caught.value.message_dict["builtin_keys"]
    assert not tenant.product.builtin_keys.exists()


def test_under_refuse_activation_is_refused_with_the_count_and_reasons(tenant: Tenant, signed: Deployment) -> None:
    # given
    _device(tenant, "keyless")
    Deployment.objects.filter(pk=signed.pk).update(preflight=Preflight.REFUSE)
    signed.refresh_from_db()
    # when
    with pytest.raises(ValidationError) as caught:
        rollout.SWITCHES["activate"]("test", signed)
    # then
    message = caught.value.message_dict["preflight"][0]
    assert message.startswith("Not activated: 1 of 1 matching device(s) would refuse this firmware: keyless: ")
    assert not Deployment.objects.get(pk=signed.pk).is_active
    assert not AuditEvent.objects.filter(action="deployment.activated").exists()


def test_under_warn_activation_goes_ahead_and_the_device_is_pushed(tenant: Tenant, signed: Deployment) -> None:
    # given: a connected device without the key: the scenario that would sit at 0 %
    keyless = _device(tenant, "keyless")
    # when
    assert rollout.SWITCHES["activate"]("test", signed)
    # then: the warning is there to show, and the operator's choice stands
    assert "keyless: does not have the signing key release" in preflight.check(signed).summary()
    assert rollout.run_rollout(signed.pk).claimed == [keyless.pk]


def test_under_refuse_a_device_that_would_refuse_is_never_claimed(
    tenant: Tenant, signed: Deployment, release_key: SigningKey
) -> None:
    # given: an active refusing deployment with one trusting device, then two
    # that would refuse join (after the activation's check)
    trusting = _device(tenant, "trusting", keys=[release_key.key])
    Deployment.objects.filter(pk=signed.pk).update(preflight=Preflight.REFUSE)
    signed.refresh_from_db()
    assert rollout.SWITCHES["activate"]("test", signed)
    keyless = _device(tenant, "keyless")
    old = _device(tenant, "old", keys=[release_key.key], fwup="1.0.0")
    for device in (keyless, old):
        rollout.assign_deployment(device.pk)
    # when
    run = rollout.run_rollout(signed.pk)
    # then: only the trusting device; the preview says why not the others
    assert run.claimed == [trusting.pk]
    assert not DeviceUpdate.objects.filter(device__in=[keyless, old]).exists()
    rows = {r.device.identifier: r for r in rollout.preview(Deployment.objects.get(pk=signed.pk))}
    assert not rows["keyless"].eligible
    assert "refused by preflight: does not have the signing key release" in rows["keyless"].problems
    assert rows["old"].preflight == ["fwup 1.0.0 is older than the firmware's require-fwup-version 1.10.0"]


def test_the_firmware_keeps_its_require_fwup_version() -> None:
    meta = (
        b'meta-product="widget"\nmeta-version="1.0.0"\nmeta-platform="rpi4"\n'
        b'meta-architecture="arm"\nrequire-fwup-version="1.10.0"\n'
    )
    assert fwfile.parse_metadata(meta).require_fwup_version == "1.10.0"
    assert fwfile.parse_metadata(meta.replace(b"1.10.0", b"soon")).require_fwup_version == ""
