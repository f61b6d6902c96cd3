"""An org admin aims webhooks at the hub's own network: Redis on loopback, the
cloud metadata service, private hosts, names that resolve (or rebind) to them,
redirects. Each is refused with a reason, nothing connects, and no answer of an
internal service is ever stored or shown (docs/webhooks.md, "Addresses")."""

from __future__ import annotations

import importlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_network
from typing import Any

import pytest
from django.apps import apps
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from pytest_django.fixtures import Settings

from nerveshub.tenancy.services import audit
from tests.conftest import Tenant
from tests.webhooks.conftest import Receiver, Subscribe
from webhooks import services
from webhooks.models import DeliveryStatus, EventType, WebhookDelivery, WebhookEndpoint

pytestmark = pytest.mark.django_db

INTERNAL_ANSWER = b"redis_version:7.2.4\r\nrequirepass:hunter2\r\n"


@pytest.fixture
def no_allowance(settings: Settings) -> None:
    """The default: the operator allowed no internal network."""
    settings.WEBHOOK_ALLOWED_NETWORKS = []


def _pending_delivery(tenant: Tenant, url: str) -> WebhookDelivery:
    # Saved past the registration check, as an endpoint registered before the
    # check existed, or whose name resolved elsewhere then, would be.
    WebhookEndpoint.objects.create(org=tenant.org, url=url, event_types=[EventType.FIRMWARE_VALIDATED])
    audit("system", "firmware.validated", tenant.product)
    return WebhookDelivery.objects.get()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:6379/", "loopback"),
        ("https://127.0.0.1:6379/", "loopback"),
        ("https://10.0.0.1/hook", "private"),
        ("https://192.168.1.20/hook", "private"),
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]:6379/", "loopback"),
        ("https://[::ffff:127.0.0.1]:6379/", "loopback"),
        ("https://[::ffff:a9fe:a9fe]/latest/meta-data/", "link-local"),
        ("https://[64:ff9b::a00:1]/", "private"),
        ("https://[fe80::1]/", "link-local"),
        ("https://[fd00::1]/", "private"),
        ("https://0.0.0.0:6379/", "unspecified"),
        ("https://[::]:6379/", "unspecified"),
        ("https://224.0.0.1/", "multicast"),
        ("https://240.0.0.1/", "reserved"),
        ("https://100.64.0.1/", "not publicly routable"),
        ("http://localhost:6379/", "loopback"),  # a name that resolves to loopback
    ],
)
def test_it_refuses_to_register_an_internal_destination(
    tenant: Tenant, no_allowance: None, url: str, reason: str
) -> None:
    # when / then
    with pytest.raises(ValidationError) as refused:
        services.create_endpoint(tenant.admin, tenant.org, url, [EventType.FIRMWARE_VALIDATED])
    assert reason in str(refused.value)
    assert "WEBHOOK_ALLOWED_NETWORKS" in str(refused.value)
    assert not WebhookEndpoint.objects.exists()


def test_the_admin_form_says_why_an_internal_destination_is_refused(
    tenant: Tenant, no_allowance: None, client: Client
) -> None:
    # given
    client.force_login(tenant.admin)

    # when
    response = client.post(
        reverse("admin:webhooks_webhookendpoint_add"),
        {"org": tenant.org.pk, "url": "http://127.0.0.1:6379/", "description": "", "event_types": ["device.online"]},
    )

    # then
    assert response.status_code == 200
    assert "loopback address" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_the_operators_allowlist_admits_its_networks_and_only_those(tenant: Tenant, settings: Settings) -> None:
    # given
    settings.WEBHOOK_ALLOWED_NETWORKS = [ip_network("10.1.0.0/16")]

    # when
    services.check_url("https://10.1.2.3/hook")
    services.check_url("https://[::ffff:10.1.2.3]/hook")  # the same address, written in IPv6

    # then
    for url in ("https://10.2.0.1/hook", "https://127.0.0.1/hook", "https://169.254.169.254/"):
        with pytest.raises(ValidationError):
            services.check_url(url)


def test_plain_http_to_loopback_still_needs_loopback_in_the_allowlist(settings: Settings) -> None:
    # WEBHOOK_ALLOW_HTTP relaxes the scheme, never the destination.
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_ALLOWED_NETWORKS = []
    with pytest.raises(ValidationError, match="loopback"):
        services.check_url("http://127.0.0.1:6379/")
    settings.WEBHOOK_ALLOWED_NETWORKS = [ip_network("127.0.0.0/8")]
    assert services.check_url("http://127.0.0.1:6379/")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
def test_a_delivery_to_an_internal_destination_is_refused_without_connecting(
    tenant: Tenant, receiver: Receiver, settings: Settings, host: str
) -> None:
    # given: an endpoint aimed at a service on the hub's loopback, saved while
    # the operator allowed loopback, then the allowance taken away
    settings.WEBHOOK_ALLOW_HTTP = True  # the scheme is not what is tested here
    delivery = _pending_delivery(tenant, f"http://{host}:{receiver.port}/")
    settings.WEBHOOK_ALLOWED_NETWORKS = []

    # when
    outcome = services.deliver(delivery.pk)

    # then: refused for good with the reason, and the service never heard of it
    assert outcome is not None and outcome.status_code is None and outcome.retry_at is None
    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_status, delivery.last_error) == (
        DeliveryStatus.FAILED,
        None,
        "refused_destination",
    )
    assert receiver.received == []
    assert services.due_delivery_ids() == []


@pytest.fixture
def internal_service(receiver: Receiver) -> Iterator[list[str]]:
    """Something on 127.0.0.2, on the receiver's port: what a name rebound
    after its check would reach. Records each request line it gets."""
    got: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(self.requestline)
            body = INTERNAL_ANSWER
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.2", receiver.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield got
    server.shutdown()
    server.server_close()


def test_a_name_that_rebinds_after_its_check_is_still_connected_at_the_checked_address(
    tenant: Tenant, receiver: Receiver, internal_service: list[str], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: the attacker's DNS answers the allowed receiver first and the
    # internal service on every later question (a rebinding attack)
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_ALLOWED_NETWORKS = [ip_network("127.0.0.1/32")]
    real_getaddrinfo = socket.getaddrinfo
    questions: list[str] = []

    def attackers_dns(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.attacker.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        questions.append(host)
        answer = "127.0.0.1" if len(questions) == 1 else "127.0.0.2"
        return real_getaddrinfo(answer, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", attackers_dns)
    subscribe_url = f"http://rebind.attacker.test:{receiver.port}/hooks/nerveshub"
    created = services.create_endpoint("test", tenant.org, subscribe_url, [EventType.FIRMWARE_VALIDATED])
    receiver.secret = created.secret
    questions.clear()  # the registration asked once; the delivery starts afresh
    audit("system", "firmware.validated", tenant.product)

    # when
    outcome = services.deliver(WebhookDelivery.objects.get().pk)

    # then: one question, and the request went where its answer was checked
    assert outcome is not None and outcome.delivered
    assert questions == ["rebind.attacker.test"]
    assert internal_service == []
    assert receiver.received[0].headers["host"] == f"rebind.attacker.test:{receiver.port}"


def test_a_redirect_is_refused_with_a_reason_and_not_followed(
    tenant: Tenant, subscribe: Subscribe, receiver: Receiver, internal_service: list[str]
) -> None:
    # given: the receiver answers with a redirect to an internal service
    subscribe(EventType.FIRMWARE_VALIDATED)
    location = f"http://127.0.0.2:{receiver.port}/admin"
    receiver.answer = (302, b"moved to " + INTERNAL_ANSWER, {"Location": location})
    audit("system", "firmware.validated", tenant.product)

    # when
    outcome = services.deliver(WebhookDelivery.objects.get().pk)

    # then
    delivery = WebhookDelivery.objects.get()
    assert outcome is not None and not outcome.delivered
    assert (delivery.last_status, delivery.last_error) == (302, "redirect_not_followed")
    assert internal_service == []


def test_an_internal_services_answer_is_never_stored_or_shown_to_the_org_admin(
    tenant: Tenant, subscribe: Subscribe, receiver: Receiver, client: Client
) -> None:
    # given: an allowed receiver answers with what an internal service would say
    subscribe(EventType.FIRMWARE_VALIDATED)
    receiver.answer = (500, INTERNAL_ANSWER, {"Content-Type": "text/plain"})
    audit("system", "firmware.validated", tenant.product)
    delivery = WebhookDelivery.objects.get()

    # when
    services.deliver(delivery.pk)
    client.force_login(tenant.admin)
    page = client.get(reverse("admin:webhooks_webhookdelivery_change", args=[delivery.pk]))
    listing = client.get(reverse("admin:webhooks_webhookdelivery_changelist"))

    # then: the status code and its class, nothing of the answer
    delivery.refresh_from_db()
    assert (delivery.last_status, delivery.last_error) == (500, "http_500")
    assert page.status_code == listing.status_code == 200
    for content in (page.content, listing.content):
        assert b"redis_version" not in content and b"hunter2" not in content
    assert b"http_500" in page.content


def test_stored_answers_of_earlier_versions_are_replaced_by_their_class(tenant: Tenant, subscribe: Subscribe) -> None:
    # given: rows as earlier versions wrote them
    subscribe(EventType.FIRMWARE_VALIDATED)
    for _ in range(5):
        audit("system", "firmware.validated", tenant.product)
    rows = list(WebhookDelivery.objects.order_by("pk"))
    old = [
        (500, "HTTP 500: redis_version:7.2.4 requirepass:hunter2"),
        (302, "HTTP 302: <a href='http://10.0.0.5/'>moved</a>"),
        (None, "URLError: timed out"),
        (None, "URLError: [Errno 111] Connection refused"),
        (None, "the endpoint is disabled"),
    ]
    for row, (status, error) in zip(rows, old, strict=True):
        WebhookDelivery.objects.filter(pk=row.pk).update(last_status=status, last_error=error)
    migration = importlib.import_module("webhooks.migrations.0002_error_classes_not_bodies")

    # when
    migration.replace_bodies_with_classes(apps, None)

    # then
    assert list(WebhookDelivery.objects.order_by("pk").values_list("last_error", flat=True)) == [
        "http_500",
        "redirect_not_followed",
        "timeout",
        "connection_error",
        "endpoint_disabled",
    ]
