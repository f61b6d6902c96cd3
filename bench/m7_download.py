"""M7: eight concurrent firmware downloads from a real hub process.

    python bench/m7_download.py [--size-mb 200] [--clients 8] [--smoke]

Starts `python -m nerveshub.serve` (daphne, the production entry point) on a
temporary DATA_DIR, puts one file in its local firmware storage, and has N
client threads download it at the same time through a signed URL (the URL
firmware.services.download_url would give). Measures aggregate throughput and
the hub process's RSS growth (VmRSS sampled every 20 ms).

Baselines in the same run:
* sendfile: a minimal HTTP server process answering with socket.sendfile();
* X-Accel-Redirect: the hub with FIRMWARE_X_ACCEL_REDIRECT behind nginx (when
  an nginx binary is on PATH): the hub only checks the token, nginx sends the
  bytes. Also the hub's own cost per X-Accel answer (requests/s, no nginx).

Goal: >= 1 GB/s aggregate, RSS growth <= 64 MB. --smoke: 20 MB x 8 (CI).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.hub import free_port, start_hub  # noqa: E402 (after the path setup above)

MB = 1_000_000
SECRET = "bench-secret-key-" + "x" * 40


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server did not listen:\n{log.read_text(errors='replace')}")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def get(port: int, path: str, buffer: bytearray, headers: str = "") -> tuple[int, int]:
    """One HTTP/1.1 GET; returns (status, body bytes received). The body is read
    into `buffer` and dropped, as fast as recv_into allows."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        request = (
            f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nuser-agent: NHL/2.12.0\r\n"
            f"x-retry-number: 0\r\n{headers}content-type: application/octet-stream\r\n\r\n"
        )
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed in headers")
            head += chunk
        header_blob, _, body_start = head.partition(b"\r\n\r\n")
        lines = header_blob.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
        received = len(body_start)
        view = memoryview(buffer)
        while received < length:
            n = sock.recv_into(view)
            if n == 0:
                break
            received += n
        return status, received


def run_clients(port: int, path: str, clients: int, size: int, pid: int | None) -> tuple[float, int]:
    """Aggregate MB/s and peak RSS growth of `pid` (0 when pid is None)."""
    base = rss(pid) if pid else 0
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss(pid)) if pid else 0
            time.sleep(0.02)

    results: list[tuple[int, int]] = []
    lock = threading.Lock()

    def client() -> None:
        result = get(port, path, bytearray(1024 * 1024))
        with lock:
            results.append(result)

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    bad = [r for r in results if r != (200, size)]
    if bad:
        raise SystemExit(f"bad downloads: {bad[:3]}")
    return clients * size / elapsed / MB, peak - base


def sendfile_server(port: int, path: str) -> None:
    """The baseline: accept, read the request head, answer with socket.sendfile."""
    size = os.path.getsize(path)
    listener = socket.create_server(("127.0.0.1", port), backlog=64)

    def handle(conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            conn.sendall(f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\nconnection: close\r\n\r\n".encode())
            with open(path, "rb") as f:
                conn.sendfile(f)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
error_log {work}/nginx-error.log warn;
pid {work}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-tmp;
    proxy_temp_path {work}/nginx-tmp;
    fastcgi_temp_path {work}/nginx-tmp;
    uwsgi_temp_path {work}/nginx-tmp;
    scgi_temp_path {work}/nginx-tmp;
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port};
        location /firmware/ {{
            proxy_pass http://127.0.0.1:{hub_port};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Range $http_range;
        }}
        # The hub answers X-Accel-Redirect: /protected-firmware/<stored name>.
        location /protected-firmware/ {{
            internal;
            alias {root}/;
        }}
    }}
}}
"""


def measure_fileresponse(path: Path) -> tuple[float, float]:
    """How much Django's FileResponse holds before its first chunk under ASGI:
    (MB read before the first chunk is yielded, peak RSS growth in MB)."""
    import asyncio
    import warnings

    from django.http import FileResponse

    def reset_peak() -> None:
        # Writing 5 resets VmHWM to the current RSS (Linux >= 4.0).
        Path("/proc/self/clear_refs").write_text("5")

    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    size = path.stat().st_size

    async def first_chunk() -> tuple[float, float]:
        handle = path.open("rb")
        response = FileResponse(handle)
        before = status("VmRSS")
        reset_peak()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # An async generator underneath (the stubs say AsyncIterator): it has aclose().
            iterator = cast(AsyncGenerator[bytes, None], response.__aiter__())
            await iterator.__anext__()
        read = handle.tell() if not handle.closed else size
        growth = status("VmHWM") - before
        await iterator.aclose()
        response.close()
        return read / MB, growth / MB

    return asyncio.run(first_chunk())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="20 MB per client, for CI")
    parser.add_argument("--serve-sendfile", nargs=2, metavar=("PORT", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sendfile:
        sendfile_server(int(args.serve_sendfile[0]), args.serve_sendfile[1])
        return
    size = (20 if args.smoke else args.size_mb) * MB

    work = Path(tempfile.mkdtemp(prefix="nh-bench-m7-"))
    root = work / "firmware"
    (root / "1").mkdir(parents=True)
    stored = root / "1" / "bench.fw"
    with stored.open("wb") as f:
        for _ in range(size // MB):
            f.write(os.urandom(MB))
    env = {
        **os.environ,
        "DATA_DIR": str(work / "data"),
        "SECRET_KEY": SECRET,
        "FIRMWARE_ROOT": str(root),
        "LOG_LEVEL": "warning",
        "DJANGO_SETTINGS_MODULE": "nerveshub.settings",
    }
    for name in ("DATABASE_URL", "REDIS_URL", "NERVESHUB_PRODUCTION", "FIRMWARE_X_ACCEL_REDIRECT"):
        env.pop(name, None)
    os.environ.update({k: v for k, v in env.items() if k in ("DATA_DIR", "SECRET_KEY", "FIRMWARE_ROOT")})
    os.environ["DJANGO_SETTINGS_MODULE"] = "nerveshub.settings"
    import django

    django.setup()
    from firmware.downloads import signed_path

    path = signed_path("1/bench.fw", "00000000-0000-5000-8000-000000000000")
    fr_read, fr_growth = measure_fileresponse(stored)
    processes: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str], port: int, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = work / f"server-{port}.log"
        process = subprocess.Popen(
            cmd, cwd=ROOT, env={**env, **(extra or {})}, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        processes.append(process)
        wait_listening(port, process, log)
        return process

    try:
        # --- the hub streaming the bytes itself -----------------------------------
        hub = start_hub(env, work)
        processes.append(hub.process)
        hub_port = hub.port
        # Warm up (imports, first request) before taking the RSS baseline.
        status, got = get(hub_port, path, bytearray(1024 * 1024), "range: bytes=0-1023\r\n")
        assert (status, got) == (206, 1024), (status, got)
        hub_rate, hub_growth = run_clients(hub_port, path, args.clients, size, hub.pid)

        # --- baseline: socket.sendfile ---------------------------------------------
        sf_port = free_port()
        start([sys.executable, __file__, "--serve-sendfile", str(sf_port), str(stored)], sf_port)
        sf_rate, _ = run_clients(sf_port, "/", args.clients, size, None)

        # --- production answer: X-Accel-Redirect behind nginx ------------------------
        xa_hub = start_hub(env, work, {"FIRMWARE_X_ACCEL_REDIRECT": "/protected-firmware/"})
        processes.append(xa_hub.process)
        xa_port = xa_hub.port
        get(xa_port, path, bytearray(1024))
        count = 300
        t0 = time.perf_counter()
        for _ in range(count):
            get(xa_port, path, bytearray(1024))
        per_request_ms = (time.perf_counter() - t0) / count * 1000
        nginx_rate = None
        nginx_growth = None
        if shutil.which("nginx"):
            ng_port = free_port()
            (work / "nginx-tmp").mkdir()
            conf = work / "nginx.conf"
            conf.write_text(NGINX_CONF.format(work=work, port=ng_port, hub_port=xa_port, root=root))
            start(["nginx", "-c", str(conf), "-p", str(work)], ng_port)
            # nginx must honour the device's Range (one past the end) on the internal redirect.
            status, got = get(ng_port, path, bytearray(MB), f"range: bytes={size - 100}-{size}\r\n")
            assert (status, got) == (206, 100), (status, got)
            nginx_rate, nginx_growth = run_clients(ng_port, path, args.clients, size, xa_hub.pid)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()

    digest = hashlib.sha256(stored.read_bytes()[:MB]).hexdigest()[:12]
    print(f"file: {size / MB:.0f} MB x {args.clients} clients (first MiB sha256 {digest})")
    print(f"hub (daphne, streamed): {hub_rate:.0f} MB/s aggregate; hub RSS growth {hub_growth / MB:.1f} MB")
    print(f"baseline socket.sendfile: {sf_rate:.0f} MB/s; ratio hub/sendfile = {hub_rate / sf_rate:.2f}")
    print(f"hub X-Accel-Redirect answer: {per_request_ms:.2f} ms per request (no bytes through the hub)")
    if nginx_rate is not None and nginx_growth is not None:
        print(
            f"nginx + X-Accel-Redirect: {nginx_rate:.0f} MB/s aggregate; ratio to sendfile = "
            f"{nginx_rate / sf_rate:.2f}; hub RSS growth {nginx_growth / MB:.1f} MB"
        )
    print(
        f"Django FileResponse under ASGI (for comparison): {fr_read:.0f} MB read before the first chunk, "
        f"peak RSS growth {fr_growth:.0f} MB for one download"
    )
    ok = hub_rate >= 1000 and hub_growth <= 64 * MB
    print("RESULT (hub streaming):", "PASS" if ok else "MISS")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
