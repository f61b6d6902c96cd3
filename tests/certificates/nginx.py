"""A real nginx in front of a live hub, configured from the shipped
deploy/nginx/nerveshub.conf, and TLS clients that present device certificates.

nginx runs from a generated main config in tmp_path (own pid file, error log,
temp directories; no daemon, no master process, so it never switches user and
needs nothing outside tmp_path).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import connect

from certificates import pki

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "nginx" / "nerveshub.conf"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def _replace(text: str, old: str, new: str) -> str:
    # Every substitution must hit: a changed shipped file breaks the test loudly.
    assert old in text, f"deploy/nginx/nerveshub.conf no longer contains {old!r}"
    return text.replace(old, new)


def render_site(port: int, hub_port: int, tls_dir: Path) -> str:
    text = SHIPPED.read_text()
    text = _replace(text, "server 127.0.0.1:4000;", f"server 127.0.0.1:{hub_port};")
    text = _replace(text, "    listen [::]:443 ssl;\n", "")
    text = _replace(text, "listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    for name in ("device-server", "web-server"):
        text = _replace(text, f"/etc/nerveshub/tls/{name}.pem", str(tls_dir / "server.pem"))
        text = _replace(text, f"/etc/nerveshub/tls/{name}.key", str(tls_dir / "server.key"))
    return text


def render_main(workdir: Path, site: Path) -> str:
    temp = workdir / "temp"
    temp.mkdir(exist_ok=True)
    return f"""
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {temp}/client;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {site};
}}
"""


@dataclass
class Nginx:
    port: int
    workdir: Path
    server_ca: pki.Issued
    process: subprocess.Popen[bytes] | None = None
    stderr: Any = field(default=None, repr=False)

    def log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_nginx(binary: str, workdir: Path, port: int, hub_port: int) -> Nginx:
    workdir.mkdir(parents=True, exist_ok=True)
    server_ca = pki.create_ca("Test server CA")
    server = pki.sign_server(server_ca, ["127.0.0.1", "localhost"])
    (workdir / "server.pem").write_bytes(server.cert_pem)
    (workdir / "server.key").write_bytes(server.key_pem)
    site = workdir / "nerveshub.conf"
    site.write_text(render_site(port, hub_port, workdir))
    main = workdir / "nginx.conf"
    main.write_text(render_main(workdir, site))
    nginx = Nginx(port=port, workdir=workdir, server_ca=server_ca)
    errors = (workdir / "stderr.log").open("wb")
    nginx.process = subprocess.Popen(
        [binary, "-p", str(workdir), "-c", str(main), "-e", str(workdir / "error.log")],
        stdout=errors,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if nginx.process.poll() is not None:
            raise RuntimeError(f"nginx exited: {(workdir / 'stderr.log').read_text()}\n{nginx.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return nginx
        except OSError:
            time.sleep(0.05)
    nginx.stop()
    raise RuntimeError(f"nginx did not listen within 15 s:\n{nginx.log()}")


# --- Device-side TLS clients ---------------------------------------------------------


def device_tls_context(server_ca: pki.Issued, device: pki.Issued | None, tmp: Path) -> ssl.SSLContext:
    """What nerves_hub_link configures: verify the server, TLS 1.2 only, present
    the device certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=server_ca.cert_pem.decode())
    if device is not None:
        cert, key = tmp / "device-cert.pem", tmp / "device-key.pem"
        cert.write_bytes(device.cert_pem)
        key.write_bytes(device.key_pem)
        context.load_cert_chain(cert, key)
    return context


JOIN = {
    "nerves_fw_uuid": "d9492bdb-94de-5288-425e-2de6928ef99c",
    "nerves_fw_product": "widget",
    "nerves_fw_version": "0.1.0",
    "nerves_fw_platform": "rpi4",
    "nerves_fw_architecture": "aarch64",
    "fwup_version": "1.13.2",
    "device_api_version": "2.3.0",
    "console_version": "2.0.0",
    "currently_downloading_uuid": None,
    "meta": {"firmware_auto_revert_detected": False, "firmware_validated": True},
}


@dataclass
class Outcome:
    """What a connection attempt came to: an HTTP status for a refused upgrade
    (0 for a failed TLS handshake), or the reply to the device join."""

    status: int
    join_reply: dict[str, Any] | None = None
    reason: str = ""


async def join_device(port: int, context: ssl.SSLContext, path: str = "/socket/websocket?vsn=2.0.0") -> Outcome:
    try:
        async with connect(f"wss://127.0.0.1:{port}{path}", ssl=context, open_timeout=10) as ws:
            await ws.send(json.dumps(["1", "1", "device", "phx_join", JOIN]))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return Outcome(status=101, join_reply=reply[4])
    except websockets.InvalidStatus as exc:
        reason = exc.response.headers.get("nh-connection-error-reason", "")
        return Outcome(status=exc.response.status_code, reason=reason)
    except (ssl.SSLError, ConnectionResetError) as exc:
        return Outcome(status=0, reason=str(exc))
