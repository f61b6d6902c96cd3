"""A device that polls like nerves_hub_link_http (docs/polling.md), in Python.

Written from the contract, not from the hub's code: `GET /device/update` and
`GET /device/me` with no body and no query, one `X-NervesHub-<key>` header per
firmware metadata value (the Nerves KV `nerves_fw_*` keys without their
prefix, `vcs_identifier` and `application_part0_*` with their underscores) and
`X-NervesHub-fwup-version`; the answer is JSON under `data`; the firmware is
downloaded from `firmware_url` without a client certificate, following
redirects, without Range.

Two ways to reach the hub: through a TLS front end with the device's client
certificate (`tls`), or straight to a hub process that trusts the test as its
proxy, with the certificate in `X-SSL-Client-Cert` as nginx forwards it
(`forwarded_cert`).
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

# What Nerves.Runtime.KV holds on a device, without the nerves_fw_ prefix.
DEFAULT_META: dict[str, str] = {
    "application_part0_devpath": "/dev/mmcblk0p3",
    "application_part0_fstype": "f2fs",
    "application_part0_target": "/root",
    "architecture": "arm",
    "author": "The Nerves Team",
    "description": "",
    "misc": "",
    "platform": "rpi4",
    "product": "widget",
    "uuid": "d9492bdb-94de-5288-425e-2de6928ef99c",
    "vcs_identifier": "",
    "version": "0.1.0",
}


@dataclass
class PollResult:
    status: int
    body: Any
    raw: bytes = b""


@dataclass
class PollingDevice:
    host: str
    port: int
    meta: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_META))
    fwup_version: str = "1.13.2"
    # The device's certificate PEM, forwarded as a TLS proxy would (direct to a hub).
    forwarded_cert: bytes | None = None
    # A client TLS context holding the device certificate (through nginx).
    tls: ssl.SSLContext | None = None
    source: str = "127.0.0.1"
    extra_headers: list[tuple[str, str | bytes]] = field(default_factory=list)

    def headers(self) -> list[tuple[str, str | bytes]]:
        headers: list[tuple[str, str | bytes]] = [("X-NervesHub-fwup-version", self.fwup_version)]
        headers += [(f"X-NervesHub-{key}", value) for key, value in self.meta.items()]
        if self.forwarded_cert is not None:
            headers.append(("X-SSL-Client-Cert", quote(self.forwarded_cert.decode())))
        return headers + self.extra_headers

    def get(self, path: str, method: str = "GET") -> PollResult:
        connection: http.client.HTTPConnection
        if self.tls is not None:
            connection = http.client.HTTPSConnection(self.host, self.port, context=self.tls, timeout=15)
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=15, source_address=(self.source, 0))
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            for name, value in self.headers():
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        return PollResult(response.status, body, raw)

    def poll(self) -> PollResult:
        return self.get("/device/update")

    def me(self) -> PollResult:
        return self.get("/device/me")

    def running(self, uuid: str, version: str) -> None:
        """What the device reports after it rebooted into new firmware."""
        self.meta = {**self.meta, "uuid": uuid, "version": version}


def check_update_shape(body: Any) -> dict[str, Any]:
    """The one 2xx shape the client accepts (it crashes on any other)."""
    assert isinstance(body, dict) and set(body) == {"data"}, body
    data = body["data"]
    assert set(data) == {"update_available", "firmware_url", "firmware_meta", "deployment_id"}, data
    assert isinstance(data["update_available"], bool)
    if data["update_available"]:
        assert isinstance(data["firmware_url"], str) and isinstance(data["firmware_meta"], dict)
    else:
        assert data["firmware_url"] is None and data["firmware_meta"] is None
    return dict(data)


def download(url: str) -> bytes:
    """As the client does: no client certificate, redirects followed, no Range."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())
