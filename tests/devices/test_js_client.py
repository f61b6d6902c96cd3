"""The official Phoenix JavaScript client (npm `phoenix`, over the `ws` package so
it can send the x-nh-* headers) against a live hub: join `device`, heartbeat,
leave, close. tests/js/phoenix_device.js is the client; this module starts it
under Node and reads its output and the database.

`npm ci --prefix tests/js` installs the client (.ci/run does). Without it the
tests skip, and fail under NERVESHUB_REQUIRE_SERVICES=1, where CI must run them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from typing import Any

import pytest

from devices.models import ConnectionStatus, Device
from firmware.models import SigningKey
from tests.conftest import REQUIRE_SERVICES
from tests.devices.conftest import Credentials, wait_until
from tests.support.hub import ROOT, HubLauncher

JS_DIR = ROOT / "tests" / "js"
KEY = base64.b64encode(bytes(range(32))).decode()


def node_session(url: str, headers: list[tuple[str, str]], join: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    node = shutil.which("node")
    installed = all((JS_DIR / "node_modules" / name).is_dir() for name in ("phoenix", "ws"))
    if node is None or not installed:
        message = "the Phoenix JS client is not installed: run `npm ci --prefix tests/js` (needs node and npm)"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    env = {
        **os.environ,
        "NH_URL": url,
        "NH_HEADERS": json.dumps(headers),
        "NH_JOIN": json.dumps(join),
        "NH_HEARTBEATS": "3",
    }
    done = subprocess.run(
        [node, "phoenix_device.js"], cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    print(done.stdout, done.stderr)
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_it_runs_a_session_of_the_phoenix_js_client(live_hub: HubLauncher, creds: Credentials) -> None:
    # given
    SigningKey.objects.create(org=creds.tenant.org, name="prod", key=KEY)
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-js")

    # when
    code, records = node_session(f"{hub.ws_url}/device-socket", device.headers(), device.join_params())

    # then: the client's own view
    assert code == 0, records
    steps = [r["step"] for r in records if "step" in r]
    assert steps == ["joined", "fwup_public_keys", "heartbeats", "left", "closed"], steps
    frames = [r["frame"] for r in records if "frame" in r]
    join_reply = frames[0]
    assert join_reply[2:] == ["device", "phx_reply", {"status": "ok", "response": {}}]
    assert join_reply[0] == join_reply[1]  # the join's reply carries its join ref and ref
    assert next(r for r in records if r.get("step") == "fwup_public_keys")["payload"] == {"keys": [KEY]}
    heartbeat_replies = [f for f in frames if f[2] == "phoenix"]
    # A heartbeat may still be in flight while the client leaves.
    assert len(heartbeat_replies) >= 3
    assert all(f[0] is None and f[3:] == ["phx_reply", {"status": "ok", "response": {}}] for f in heartbeat_replies)
    assert next(r for r in records if r.get("step") == "left")["status"] == "ok"
    device_replies = [f for f in frames if f[2] == "device" and f[3] == "phx_reply"]
    assert len(device_replies) == 2
    leave_reply = device_replies[1]
    assert leave_reply[2:] == ["device", "phx_reply", {"status": "ok", "response": {}}]
    assert leave_reply[0] == join_reply[0]
    # then: the hub recorded the join and the close
    wait_until(lambda: Device.objects.get(identifier="dev-js").connection_status == ConnectionStatus.DISCONNECTED)
    row = Device.objects.get(identifier="dev-js")
    assert row.product_id == creds.tenant.product.pk
    assert row.firmware_uuid == device.firmware["nerves_fw_uuid"]
    assert row.device_api_version == "2.3.0"
    assert row.first_seen_at is not None and row.socket_channel == ""


def test_it_refuses_the_phoenix_js_client_with_a_wrong_secret(live_hub: HubLauncher, creds: Credentials) -> None:
    # given: a signature made with a secret the hub never issued
    hub = live_hub()
    device = creds.device(hub.ws_url, "dev-js-bad")
    device.secret = "not-the-product-secret"

    # when
    code, records = node_session(f"{hub.ws_url}/device-socket", device.headers(), device.join_params())

    # then: 401 with a reason, and no device row
    assert code == 2, records
    refusal = next(r for r in records if r.get("step") == "refused")
    assert refusal["status"] == 401 and refusal["reason"]
    assert not Device.objects.filter(identifier="dev-js-bad").exists()
