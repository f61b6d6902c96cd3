"""The device page's "Send update" form: a manager pushes a valid firmware of
the device's product now; refusals say why and write nothing."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages

from deployments.models import DeviceUpdate
from devices.models import Device
from firmware.models import Firmware, FirmwareStatus
from nerveshub.tenancy.models import AuditEvent, Membership
from tests.conftest import Tenant
from tests.deployments.conftest import make_firmware
from tests.web.conftest import Fleet, client_for

pytestmark = pytest.mark.django_db


def _url(fleet: Fleet, suffix: str = "") -> str:
    return f"/org/{fleet.slug}/devices/{fleet.device.pk}/{suffix}"


def _connect(device: Device) -> None:
    Device.objects.filter(pk=device.pk).update(socket_channel="test.socket#1")


def test_a_manager_picks_a_valid_firmware_and_sends_it(fleet: Fleet, other_tenant: Tenant) -> None:
    # given: a connected device; one valid firmware besides the fleet's, one pending, one of another org
    _connect(fleet.device)
    newer = make_firmware(fleet.tenant.product, "3.0.0")
    pending = make_firmware(fleet.tenant.product, "4.0.0")
    Firmware.objects.filter(pk=pending.pk).update(status=FirmwareStatus.PENDING)
    foreign = make_firmware(other_tenant.product, "9.9.9")
    client = client_for(fleet.tenant.manager)
    # when
    page = client.get(_url(fleet)).content.decode()
    sent = client.post(_url(fleet, "update/"), {"firmware": newer.uuid}, follow=True)
    # then: the form offers only valid firmware of the product
    assert 'id="send-update"' in page
    assert str(newer.uuid) in page and str(fleet.firmware.uuid) in page
    assert str(pending.uuid) not in page and str(foreign.uuid) not in page
    assert [str(m) for m in get_messages(sent.wsgi_request)] == [f"Update to 3.0.0 sent to {fleet.device.identifier}."]
    update = DeviceUpdate.objects.get(device=fleet.device, deployment__isnull=True)
    assert update.firmware_id == newer.pk
    assert AuditEvent.objects.filter(action="update.requested", actor_user=fleet.tenant.manager).exists()
    # the history shows it without a deployment
    assert "3.0.0" in client.get(_url(fleet)).content.decode()


def test_refusals_say_why_and_write_nothing(fleet: Fleet, other_tenant: Tenant) -> None:
    # given: the device is offline
    client = client_for(fleet.tenant.manager)
    foreign = make_firmware(other_tenant.product, "9.9.9")
    # when
    offline = client.post(_url(fleet, "update/"), {"firmware": fleet.firmware.uuid}, follow=True)
    _connect(fleet.device)
    other_product = client.post(_url(fleet, "update/"), {"firmware": foreign.uuid}, follow=True)
    garbage = client.post(_url(fleet, "update/"), {"firmware": "\x00" * 50}, follow=True)
    # then
    assert [str(m) for m in get_messages(offline.wsgi_request)] == [
        f"{fleet.device.identifier} is not connected; a manual update is not queued."
    ]
    for answer in (other_product, garbage):
        assert answer.status_code == 200
        assert [str(m) for m in get_messages(answer.wsgi_request)] == [
            "Choose a valid firmware of this device's product."
        ]
    assert not DeviceUpdate.objects.filter(deployment__isnull=True).exists()


def test_only_managers_see_and_use_the_form(fleet: Fleet) -> None:
    # given
    _connect(fleet.device)
    removed = client_for(fleet.tenant.manager)
    Membership.objects.filter(user=fleet.tenant.manager, org=fleet.tenant.org).delete()
    viewer = client_for(fleet.tenant.viewer)
    body = {"firmware": fleet.firmware.uuid}
    # when / then
    assert 'id="send-update"' not in viewer.get(_url(fleet)).content.decode()
    assert viewer.post(_url(fleet, "update/"), body).status_code == 403
    assert client_for(fleet.tenant.outsider).post(_url(fleet, "update/"), body).status_code == 404
    assert removed.post(_url(fleet, "update/"), body).status_code == 404
    assert viewer.get(_url(fleet, "update/")).status_code == 405
    assert not DeviceUpdate.objects.filter(deployment__isnull=True).exists()
