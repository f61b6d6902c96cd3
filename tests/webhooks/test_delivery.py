"""Webhooks end to end against a real HTTP receiver: outbox rows written with the
event, signed deliveries, retries with backoff, the sweep, replay."""

from __future__ import annotations

import json
from datetime import timedelta
from ipaddress import ip_network

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from pytest_django.fixtures import DjangoCaptureOnCommitCallbacks, Settings

from deployments import rollout
from deployments.models import Deployment, DeviceUpdate
from devicelink.join import join_report
from devicelink.protocol import DeviceJoin
from devices import services as device_services
from devices.models import Device
from firmware.models import Firmware
from nerveshub.tenancy.models import Organization
from nerveshub.tenancy.services import audit
from tests.conftest import Tenant
from tests.deployments.conftest import make_device
from tests.devices.conftest import wait_until
from tests.webhooks.conftest import Receiver, Subscribe
from webhooks import services
from webhooks.models import DeliveryStatus, EventType, WebhookDelivery
from webhooks.tasks import deliver_webhook_task

pytestmark = pytest.mark.django_db


def _types() -> list[str]:
    return list(WebhookDelivery.objects.order_by("id").values_list("event_type", flat=True))


def _deliver_all() -> None:
    for delivery_id in WebhookDelivery.objects.order_by("id").values_list("pk", flat=True):
        services.deliver(delivery_id)


@pytest.mark.parametrize(("action", "event_type"), sorted(services.AUDIT_EVENT_TYPES.items()))
def test_each_mapped_audit_action_writes_its_event(
    tenant: Tenant, subscribe: Subscribe, action: str, event_type: str
) -> None:
    # given
    subscribe(*EventType.values)

    # when
    event = audit("orchestrator", action, tenant.product, details={"k": "v"})

    # then
    delivery = WebhookDelivery.objects.get()
    assert delivery.event_type == event_type
    assert delivery.payload["type"] == event_type
    assert delivery.payload["org_id"] == tenant.org.pk
    assert delivery.payload["data"]["audit_event_id"] == event.pk
    assert delivery.payload["data"]["details"] == {"k": "v"}


def test_unmapped_actions_unsubscribed_types_inactive_endpoints_and_other_orgs_get_nothing(
    tenant: Tenant, other_tenant: Tenant, subscribe: Subscribe
) -> None:
    # given
    subscribe(EventType.FIRMWARE_REJECTED)
    subscribe(EventType.FIRMWARE_VALIDATED, org=other_tenant.org)
    inactive = subscribe(EventType.FIRMWARE_VALIDATED)
    inactive.is_active = False
    inactive.save()

    # when
    audit("system", "device.created", tenant.product)
    audit("system", "firmware.validated", tenant.product)

    # then
    assert not WebhookDelivery.objects.exists()


def test_device_connections_are_announced_without_being_audited(tenant: Tenant, subscribe: Subscribe) -> None:
    # given
    subscribe(EventType.DEVICE_ONLINE, EventType.DEVICE_OFFLINE)
    device = device_services.create_device("test", tenant.product, "dev-1")

    # when
    device_services.open_device_connection(Device.objects.get(pk=device.pk), "channel-a")
    device_services.open_device_connection(Device.objects.get(pk=device.pk), "channel-b")
    device_services.close_device_connections([(device.pk, "channel-a")])  # replaced: not offline
    device_services.close_device_connections([(device.pk, "channel-b")])

    # then
    assert _types() == ["device.online", "device.online", "device.offline"]
    subject = WebhookDelivery.objects.last().payload["data"]["subject"]  # type: ignore[union-attr]
    assert subject == {"type": "device", "id": str(device.pk), "name": "dev-1"}


def test_an_update_is_announced_when_it_starts_fails_and_completes(
    tenant: Tenant, subscribe: Subscribe, deployment: Deployment, target: Firmware, receiver: Receiver
) -> None:
    # given
    subscribe(EventType.UPDATE_STARTED, EventType.UPDATE_COMPLETED, EventType.UPDATE_FAILED)
    failing = make_device(tenant.product, "d1", deployment=deployment)
    succeeding = make_device(tenant.product, "d2", deployment=deployment)
    rollout.run_rollout(deployment.pk)

    # when
    rollout.on_status_report(failing.pk, {"status": "received"})
    rollout.on_status_report(failing.pk, {"status": "failed", "reason": "disk full"})
    rollout.on_status_report(succeeding.pk, {"value": 40, "stage": "downloading"})
    Device.objects.filter(pk=succeeding.pk).update(firmware_uuid=target.uuid)  # as join_device stores it
    rollout.on_device_joined(succeeding.pk, join_report(DeviceJoin.model_validate({"nerves_fw_uuid": target.uuid})))
    _deliver_all()

    # then
    assert _types() == ["update.started", "update.failed", "update.started", "update.completed"]
    payloads = [r.payload for r in receiver.wait_for(4)]
    failed = payloads[1]["data"]
    assert failed["subject"]["name"] == "d1"
    assert failed["details"]["reason"] == "disk full"
    assert failed["details"]["firmware"] == target.uuid
    assert payloads[3]["data"]["details"]["status"] == "succeeded"
    assert DeviceUpdate.objects.get(device=succeeding).status == "succeeded"


def test_a_rolled_back_transaction_leaves_no_delivery_and_sends_nothing(
    tenant: Tenant,
    subscribe: Subscribe,
    receiver: Receiver,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    # given
    subscribe(EventType.FIRMWARE_VALIDATED)

    # when
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            audit("system", "firmware.validated", tenant.product)
            assert WebhookDelivery.objects.count() == 1
            raise RuntimeError("the validation failed after all")

    # then
    assert not WebhookDelivery.objects.exists()
    assert callbacks == []
    assert receiver.received == []


def test_a_committed_event_is_dispatched_on_commit(
    tenant: Tenant, subscribe: Subscribe, django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks
) -> None:
    # given
    subscribe(EventType.FIRMWARE_VALIDATED)

    # when
    with django_capture_on_commit_callbacks() as callbacks:
        audit("system", "firmware.validated", tenant.product)

    # then
    assert len(callbacks) == 1


def test_deliveries_are_signed_for_the_endpoint(tenant: Tenant, subscribe: Subscribe, receiver: Receiver) -> None:
    # given
    subscribe(EventType.FIRMWARE_REJECTED)
    audit("system", "firmware.rejected", tenant.product, details={"reason": "bad signature"})
    delivery = WebhookDelivery.objects.get()

    # when
    outcome = services.deliver(delivery.pk)

    # then
    assert outcome is not None and outcome.delivered
    (got,) = receiver.wait_for(1)
    assert got.verified
    assert got.path == "/hooks/nerveshub"
    assert got.headers["x-nerveshub-event"] == "firmware.rejected"
    assert got.headers["x-nerveshub-event-id"] == str(delivery.event_id)
    assert got.headers["x-nerveshub-delivery"] == str(delivery.pk)
    assert got.headers["content-type"] == "application/json"
    assert got.payload == delivery.payload
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert (delivery.attempts, delivery.last_status, delivery.last_error) == (1, 204, "")
    assert delivery.delivered_at is not None


def test_a_rotated_secret_signs_from_then_on(tenant: Tenant, subscribe: Subscribe, receiver: Receiver) -> None:
    # given
    endpoint = subscribe(EventType.FIRMWARE_REJECTED)
    old_secret = receiver.secret
    new_secret = services.rotate_secret(tenant.admin, endpoint)
    audit("system", "firmware.rejected", tenant.product)

    # when: the receiver still has the old secret
    services.deliver(WebhookDelivery.objects.get().pk)

    # then
    assert new_secret != old_secret
    assert receiver.received[0].answered == 401
    receiver.secret = new_secret
    assert receiver.verify(receiver.received[0].headers, receiver.received[0].body)


def test_it_retries_with_exponential_backoff_recorded_on_the_row(
    tenant: Tenant, subscribe: Subscribe, receiver: Receiver, settings: Settings
) -> None:
    # given
    settings.WEBHOOK_RETRY_BASE_SECONDS = 30
    subscribe(EventType.DEPLOYMENT_PAUSED)
    receiver.fail_first = 2
    audit("orchestrator", "deployment.paused_by_breaker", tenant.product)
    delivery = WebhookDelivery.objects.get()
    t0 = timezone.now()

    # when: the first attempt fails
    first = services.deliver(delivery.pk, now=t0)
    delivery.refresh_from_db()

    # then
    assert first is not None and not first.delivered
    assert delivery.status == DeliveryStatus.PENDING
    assert (delivery.attempts, delivery.last_status) == (1, 503)
    assert delivery.last_error == "http_503"
    assert delivery.next_attempt_at == t0 + timedelta(seconds=30)

    # when: too early, then on time
    early = services.deliver(delivery.pk, now=t0 + timedelta(seconds=29))
    second = services.deliver(delivery.pk, now=t0 + timedelta(seconds=30))
    delivery.refresh_from_db()

    # then: the wait doubled
    assert early is None
    assert second is not None and second.attempt == 2
    assert delivery.next_attempt_at == t0 + timedelta(seconds=30 + 60)

    # when: the third attempt is accepted
    third = services.deliver(delivery.pk, now=delivery.next_attempt_at)
    delivery.refresh_from_db()

    # then
    assert third is not None and third.delivered
    assert (delivery.status, delivery.attempts, delivery.last_status) == (DeliveryStatus.SUCCEEDED, 3, 204)
    assert [r.answered for r in receiver.received] == [503, 503, 204]
    assert all(r.verified for r in receiver.received)
    assert services.deliver(delivery.pk, now=t0 + timedelta(days=1)) is None  # done is done


def test_it_gives_up_after_the_last_attempt(
    tenant: Tenant, subscribe: Subscribe, receiver: Receiver, settings: Settings
) -> None:
    # given
    settings.WEBHOOK_MAX_ATTEMPTS = 2
    subscribe(EventType.FIRMWARE_VALIDATED)
    receiver.fail_first = 10
    audit("system", "firmware.validated", tenant.product)
    delivery = WebhookDelivery.objects.get()

    # when
    services.deliver(delivery.pk, now=timezone.now())
    delivery.refresh_from_db()
    last = services.deliver(delivery.pk, now=delivery.next_attempt_at)
    delivery.refresh_from_db()

    # then
    assert last is not None and last.retry_at is None
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 2)
    assert services.due_delivery_ids(now=timezone.now() + timedelta(days=1)) == []


def test_an_unreachable_receiver_is_recorded_as_an_error(
    tenant: Tenant, subscribe: Subscribe, receiver: Receiver
) -> None:
    # given
    subscribe(EventType.FIRMWARE_VALIDATED)
    audit("system", "firmware.validated", tenant.product)
    delivery = WebhookDelivery.objects.get()
    delivery.endpoint.url = "http://127.0.0.1:9/closed"
    delivery.endpoint.save()

    # when
    outcome = services.deliver(delivery.pk)
    delivery.refresh_from_db()

    # then
    assert outcome is not None and outcome.status_code is None
    assert delivery.last_status is None and delivery.last_error == "connection_error"
    assert delivery.status == DeliveryStatus.PENDING and delivery.attempts == 1


def test_the_sweep_finds_deliveries_whose_wakeup_was_lost(
    tenant: Tenant, subscribe: Subscribe, receiver: Receiver
) -> None:
    # given: the row committed but its task never ran (no on_commit in this test)
    subscribe(EventType.FIRMWARE_VALIDATED)
    audit("system", "firmware.validated", tenant.product)
    delivery = WebhookDelivery.objects.get()
    now = timezone.now()

    # when
    young = services.due_delivery_ids(now=now)
    later = services.due_delivery_ids(now=now + services.FIRST_ATTEMPT_GRACE + timedelta(seconds=1))
    for delivery_id in later:
        deliver_webhook_task(delivery_id)

    # then
    assert young == []
    assert later == [delivery.pk]
    assert len(receiver.wait_for(1)) == 1


def test_replay_sends_the_event_again_under_the_same_event_id(
    tenant: Tenant, subscribe: Subscribe, receiver: Receiver
) -> None:
    # given
    subscribe(EventType.FIRMWARE_VALIDATED)
    audit("system", "firmware.validated", tenant.product)
    original = WebhookDelivery.objects.get()
    services.deliver(original.pk)

    # when
    replay = services.replay_delivery(tenant.admin, original)
    services.deliver(replay.pk)

    # then
    first, second = receiver.wait_for(2)
    assert replay.replay_of_id == original.pk and replay.pk != original.pk
    assert first.headers["x-nerveshub-event-id"] == second.headers["x-nerveshub-event-id"] == str(original.event_id)
    assert first.headers["x-nerveshub-delivery"] != second.headers["x-nerveshub-delivery"]
    assert first.body == second.body


@pytest.mark.parametrize("who", ["manager", "viewer", "outsider"])
def test_only_the_orgs_admins_may_replay_or_manage_endpoints(tenant: Tenant, subscribe: Subscribe, who: str) -> None:
    # given
    endpoint = subscribe(EventType.FIRMWARE_VALIDATED)
    audit("system", "firmware.validated", tenant.product)
    user = getattr(tenant, who)

    # when / then
    with pytest.raises(PermissionDenied):
        services.replay_delivery(user, WebhookDelivery.objects.get())
    with pytest.raises(PermissionDenied):
        services.rotate_secret(user, endpoint)
    with pytest.raises(PermissionDenied):
        services.create_endpoint(user, tenant.org, "https://example.com/hook", [EventType.FIRMWARE_VALIDATED])
    assert WebhookDelivery.objects.count() == 1


def test_endpoints_must_use_https_except_on_loopback(settings: Settings) -> None:
    settings.WEBHOOK_ALLOW_HTTP = False
    settings.WEBHOOK_ALLOWED_NETWORKS = [ip_network("127.0.0.0/8"), ip_network("::1")]
    assert services.check_url("https://hooks.example.com/x")
    assert services.check_url("http://127.0.0.1:8080/x")
    assert services.check_url("http://[::1]/x")
    for url in ("http://hooks.example.com/x", "ftp://example.com/", "https://user:pw@example.com/", "hooks"):
        with pytest.raises(ValidationError):
            services.check_url(url)
    settings.WEBHOOK_ALLOW_HTTP = True
    assert services.check_url("http://hooks.internal/x")


def test_payloads_are_plain_json(tenant: Tenant, subscribe: Subscribe) -> None:
    subscribe(EventType.FIRMWARE_VALIDATED)
    audit("system", "firmware.validated", tenant.product, details={"uuid": "u-1"})
    payload = WebhookDelivery.objects.get().payload
    assert json.loads(json.dumps(payload)) == payload
    assert set(payload) == {"id", "type", "created_at", "org_id", "data"}
    assert Organization.objects.filter(pk=payload["org_id"]).exists()


@pytest.mark.skipif(not django_settings.CELERY_TASK_ALWAYS_EAGER, reason="embedded mode only")
@pytest.mark.django_db(transaction=True)
def test_embedded_mode_sends_after_commit_and_waits_out_retries(
    tenant: Tenant, subscribe: Subscribe, receiver: Receiver, settings: Settings
) -> None:
    # given
    settings.WEBHOOK_RETRY_BASE_SECONDS = 1
    subscribe(EventType.FIRMWARE_VALIDATED)
    receiver.fail_first = 1

    # when: the event commits
    with transaction.atomic():
        audit("system", "firmware.validated", tenant.product)

    # then: the first attempt fails, the retry a second later is accepted
    receiver.wait_for(1, timeout=15)
    wait_until(lambda: WebhookDelivery.objects.get().status == DeliveryStatus.SUCCEEDED)
    delivery = WebhookDelivery.objects.get()
    assert (delivery.attempts, delivery.last_status) == (2, 204)
    assert [r.answered for r in receiver.received] == [503, 204]
