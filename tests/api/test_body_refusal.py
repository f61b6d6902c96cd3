"""Request bodies refused on their headers, against a real hub process (daphne):
an attacker without credentials, or with a declared size past the limit, gets
the answer before sending a byte of the body and cannot make the hub take in
more than a little of it; a chunked body is cut at the limit; a client that
never finishes its headers is disconnected."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
from django.contrib.auth.models import User

from firmware.models import Firmware
from nerveshub.tenancy import services as tenancy
from tests.conftest import Tenant
from tests.support.hub import HubLauncher

pytestmark = pytest.mark.django_db(transaction=True)

MIB = 1024 * 1024
BIG = 300 * MIB


def _head(method: str, path: str, port: int, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_answer(conn: socket.socket, timeout: float = 10) -> bytes:
    """What the hub sends until it closes or `timeout` passes."""
    conn.settimeout(timeout)
    chunks = []
    try:
        while data := conn.recv(65536):
            chunks.append(data)
            if _complete(b"".join(chunks)):
                break
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def _complete(response: bytes) -> bool:
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def _headers_only(port: int, head: bytes) -> bytes:
    """Send the headers and no body; return what the hub answers meanwhile."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head)
        return _read_answer(conn)


def _bytes_accepted(port: int, head: bytes, limit: int = 100 * MIB) -> tuple[int, bytes]:
    """Send the headers, then body bytes for as long as the hub takes them
    (up to `limit`); return how many it took and its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head)
        conn.settimeout(3)
        sent = 0
        piece = b"x" * 65536
        try:
            while sent < limit:
                sent += conn.send(piece)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass
        return sent, _read_answer(conn, timeout=5)


def _firmware_path(tenant: Any) -> str:
    return f"/api/v1/orgs/{tenant.org.name}/products/{tenant.product.name}/firmwares"


def _upload_headers(length: int, **extra: str) -> dict[str, str]:
    return {"Content-Type": "multipart/form-data; boundary=xyz", "Content-Length": str(length), **extra}


def test_a_300_mib_upload_without_credentials_is_answered_before_its_body(
    live_hub: HubLauncher, tenant: Tenant
) -> None:
    # given
    hub = live_hub()
    path = _firmware_path(tenant)
    # when: only the headers of a 300 MiB upload are sent
    answer = _headers_only(hub.port, _head("POST", path, hub.port, _upload_headers(BIG)))
    # then: the refusal arrives without the body (413: past FIRMWARE_MAX_SIZE)
    assert _status(answer) == 413, answer[:300]
    assert b"connection: close" in answer.lower()
    assert "larger than" in json.loads(answer.split(b"\r\n\r\n", 1)[1])["errors"]["detail"]


@pytest.mark.parametrize("authorization", [None, "token nhu_not-a-real-token", "Basic YWxpY2U6cHc="])
def test_an_upload_without_a_valid_token_is_refused_before_its_body(
    live_hub: HubLauncher, tenant: Tenant, authorization: str | None
) -> None:
    # given: a size the firmware limit allows
    hub = live_hub()
    extra = {"Authorization": authorization} if authorization else {}
    head = _head("POST", _firmware_path(tenant), hub.port, _upload_headers(150 * MIB, **extra))
    # when
    answer = _headers_only(hub.port, head)
    # then
    assert _status(answer) == 401, answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"errors": {"detail": "missing or invalid API token"}}


def test_the_hub_takes_in_only_a_little_of_a_refused_body(live_hub: HubLauncher, tenant: Tenant) -> None:
    # given
    hub = live_hub()
    head = _head("POST", _firmware_path(tenant), hub.port, _upload_headers(BIG))
    # when: the client sends the body regardless
    accepted, answer = _bytes_accepted(hub.port, head)
    # then: it got its answer, and the hub stopped taking bytes long before
    # 300 MiB (what remains is socket buffers and a short drain)
    assert _status(answer) == 413, answer[:300]
    assert accepted < 40 * MIB, accepted


@pytest.mark.parametrize(
    "path",
    ["/org/acme/firmware/", "/admin/firmware/firmware/add/"],
)
def test_page_uploads_need_a_session_before_their_body(live_hub: HubLauncher, tenant: Tenant, path: str) -> None:
    hub = live_hub()
    for cookie in (None, "sessionid=not-a-session"):
        extra = {"Cookie": cookie} if cookie else {}
        answer = _headers_only(hub.port, _head("POST", path, hub.port, _upload_headers(150 * MIB, **extra)))
        assert _status(answer) == 403, answer[:300]
        assert b"sign in before uploading" in answer


def test_a_valid_token_uploads_and_expect_continue_is_honoured(live_hub: HubLauncher, tenant: Tenant) -> None:
    # given
    hub = live_hub()
    token = tenancy.create_api_token(tenant.admin, tenant.admin, "ci").clear
    payload = b"not really firmware" * 100
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="firmware"; filename="fw.fw"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + payload + b"\r\n--xyz--\r\n"
    )
    head = _head(
        "POST",
        _firmware_path(tenant),
        hub.port,
        _upload_headers(len(body), Authorization=f"token {token}", Expect="100-continue", Connection="close"),
    )
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as conn:
        # when: the client waits for 100 Continue before sending the body
        conn.sendall(head)
        conn.settimeout(10)
        interim = conn.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100"), interim[:200]
        conn.sendall(body)
        answer = _read_answer(conn, timeout=20)
    # then: the upload went through to the API
    assert _status(answer) == 201, answer[:500]
    assert Firmware.objects.filter(org=tenant.org).count() == 1


def test_a_signed_in_page_upload_reaches_the_view(live_hub: HubLauncher, tenant: Tenant) -> None:
    # given: a real session of a manager (password sign-in on the hub)
    hub = live_hub()
    from django.test import Client

    client = Client()
    client.force_login(User.objects.get(username="mallory-manager"))
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    body = b'--xyz\r\nContent-Disposition: form-data; name="kind"\r\n\r\nfirmware\r\n--xyz--\r\n'
    head = _head("POST", "/org/acme/firmware/", hub.port, _upload_headers(len(body), Cookie=cookie, Connection="close"))
    # when
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as conn:
        conn.sendall(head + body)
        answer = _read_answer(conn)
    # then: past the guard, Django answers (here: the CSRF check, 403 with its own page)
    assert _status(answer) == 403, answer[:300]
    assert b"sign in before uploading" not in answer


def test_a_chunked_body_is_cut_at_the_limit(live_hub: HubLauncher) -> None:
    # given: a 1 MiB limit for ordinary requests
    hub = live_hub({"REQUEST_MAX_BODY_SIZE": str(MIB)})
    head = _head("POST", "/accounts/login/", hub.port, {"Transfer-Encoding": "chunked"})
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    # when: 64 KiB chunks without end
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as conn:
        conn.sendall(head)
        conn.settimeout(3)
        sent = 0
        try:
            while sent < 200 * MIB:
                conn.sendall(chunk)
                sent += len(chunk)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass
        answer = _read_answer(conn, timeout=5)
    # then
    assert _status(answer) == 413, answer[:300]
    assert b"larger than 1048576 bytes" in answer
    assert sent < 40 * MIB, sent
    assert hub.process.poll() is None


# uvicorn has no header deadline of its own: the hub's protocol adds it (nerveshub/lib/uvicorn_http.py).
@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
def test_a_client_that_never_finishes_its_headers_is_disconnected(live_hub: HubLauncher, server: str) -> None:
    # given
    hub = live_hub({"HTTP_HEADER_TIMEOUT": "2", "HUB_SERVER": server})
    started = time.monotonic()
    closed_after = None
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as conn:
        conn.sendall(b"GET /status/alive HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        conn.settimeout(0.5)
        received = b""
        # when: one more header byte every half second, never the end
        while time.monotonic() - started < 30:
            try:
                conn.send(b"a")
                data = conn.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
            received += data
            if not data:
                closed_after = time.monotonic() - started
                break
    # then: cut off after the header timeout, not after Twisted's idle timeout
    assert closed_after is not None and closed_after < 15, closed_after
    assert received == b"" or _status(received) == 408, received


def test_ordinary_requests_and_kept_alive_connections_still_work(live_hub: HubLauncher) -> None:
    hub = live_hub({"HTTP_HEADER_TIMEOUT": "2"})
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as conn:
        for _ in range(2):
            conn.sendall(_head("GET", "/status/alive", hub.port, {}))
            assert _status(_read_answer(conn)) == 200
        # an idle kept-alive connection is closed after the timeout as well
        conn.settimeout(10)
        assert conn.recv(100) in (
            b"",
            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
