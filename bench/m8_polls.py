"""M8: polls per second of one hub process, with authentication and the database.

    python bench/m8_polls.py [--devices 1000] [--seconds 20] [--connections 32] [--smoke]

One hub process (`python -m nerveshub.serve`) that trusts the benchmark as its
TLS proxy. N devices, each with a certificate from the organization's verified
Device CA, are provisioned by their first poll (JITP); then client processes
poll `GET /device/update` over kept-alive connections (as nginx's upstream
keepalive does, deploy/nginx/nerveshub.conf) for `--seconds`, round-robin over
the devices, each poll carrying the certificate header and the X-NervesHub-*
headers of nerves_hub_link_http. Every device runs the firmware of the
product's active deployment: every answer is "no update", after the
certificate was checked, the report compared with the stored row and the
deployment and in-flight update looked up.

Baseline in the same run: the same clients against daphne serving a bare ASGI
app that answers the same JSON (no authentication, no database).
Goal: >= 1,000 polls/s per process. --smoke: 50 devices, 3 s (CI).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from common import ROOT, Server, Stack, free_port, machine, percentile, proc_cpu, ratio, wait_listening

BENCH = Path(__file__).resolve().parent
ANSWER = b'{"data":{"update_available":false,"firmware_url":null,"firmware_meta":null,"deployment_id":null}}'


# --- the devices --------------------------------------------------------------------


def provision(stack: Stack, devices: int) -> tuple[list[str], str]:
    """The org's verified CA with JITP into the bench product, the product's
    firmware and its active deployment; returns each device's forwarded
    certificate header and the firmware uuid the devices run."""
    from certificates import pki
    from certificates import services as certificates
    from deployments.models import Deployment
    from firmware.models import Firmware, FirmwareStatus
    from nerveshub.tenancy.models import Product

    product = Product.objects.select_related("org").get(pk=stack.product_id)
    ca = pki.create_ca("Bench Device CA")
    proof = pki.sign_verification(ca, certificates.verification_code(product.org)).cert_pem
    certificates.register_ca_certificate(
        "bench", product.org, ca.cert_pem, description="bench", verification_pem=proof, jitp_product=product
    )
    firmware = Firmware.objects.create(
        org=product.org,
        product=product,
        uuid=str(uuid.uuid4()),
        version="1.0.0",
        platform="rpi4",
        architecture="arm",
        size=1024,
        sha256="ab" * 32,
        partial_sha256=["ab" * 32],
        storage_name=f"{product.pk}/bench.fw",
        status=FirmwareStatus.VALID,
    )
    Deployment.objects.create(org=product.org, product=product, name="current", firmware=firmware, is_active=True)
    headers = [quote(pki.sign_device(ca, f"poll-{i:06d}").cert_pem.decode()) for i in range(devices)]
    return headers, firmware.uuid or ""


def request_bytes(cert_header: str, firmware_uuid: str) -> bytes:
    """A poll as nerves_hub_link_http sends it (through nginx, which adds the
    certificate and passes vcs_identifier under its dashed name)."""
    meta = {
        "fwup-version": "1.13.2",
        "architecture": "arm",
        "author": "The Nerves Team",
        "description": "",
        "misc": "",
        "platform": "rpi4",
        "product": "bench-product",
        "uuid": firmware_uuid,
        "vcs-identifier": "",
        "version": "1.0.0",
    }
    lines = ["GET /device/update HTTP/1.1", "Host: devices.example.com"]
    lines += [f"X-NervesHub-{key}: {value}" for key, value in meta.items()]
    lines += [f"X-SSL-Client-Cert: {cert_header}", "X-SSL-Client-Verify: NONE"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- the client processes -------------------------------------------------------------


async def _one_connection(
    port: int, requests: list[bytes], start: int, end: float, out: dict[str, Any], stop: int | None = None
) -> None:
    """Poll over one kept-alive connection until `end`, or (`stop`) once each
    of requests[start:stop]."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = start
    try:
        while (time.perf_counter() < end) if stop is None else (i < stop):
            began = time.perf_counter()
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            out["latencies"].append(time.perf_counter() - began)
            if status == 200 and body == ANSWER:
                out["ok"] += 1
            else:
                out["other"] += 1
                if len(out["errors"]) < 3:
                    out["errors"].append(f"{status} {body[:200]!r}")
    finally:
        writer.close()


async def _client(config: dict[str, Any], requests: list[bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": 0, "other": 0, "errors": [], "latencies": []}
    end = time.perf_counter() + config["seconds"]
    connections = config["connections"]
    if config.get("once"):
        # Each device polls once: the slices of the requests, one per connection.
        bounds = [len(requests) * c // connections for c in range(connections + 1)]
        await asyncio.gather(
            *(_one_connection(config["port"], requests, bounds[c], end, out, bounds[c + 1]) for c in range(connections))
        )
        return out
    share = len(requests) // connections or 1
    await asyncio.gather(*(_one_connection(config["port"], requests, c * share, end, out) for c in range(connections)))
    return out


def run_clients(
    port: int, requests_file: Path, seconds: float, connections: int, workers: int, *, once: bool = False
) -> dict[str, Any]:
    if once:
        workers = 1
    config = {
        "port": port,
        "requests": str(requests_file),
        "seconds": seconds,
        "connections": connections // workers,
        "once": once,
    }
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "client", json.dumps(config)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for _ in range(workers)
    ]
    merged: dict[str, Any] = {"ok": 0, "other": 0, "errors": [], "latencies": []}
    for proc in procs:
        stdout, _ = proc.communicate(timeout=seconds + 120)
        answer = json.loads(stdout)
        merged["ok"] += answer["ok"]
        merged["other"] += answer["other"]
        merged["errors"] += answer["errors"]
        merged["latencies"] += answer["latencies"]
    return merged


# --- the baseline ------------------------------------------------------------------------


async def baseline_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """What the hub answers, with none of its work."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", str(len(ANSWER)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": ANSWER})


def start_baseline(stack: Stack) -> Server:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "m8_polls:baseline_app"],
        cwd=BENCH,
        env={**os.environ, "PYTHONPATH": str(BENCH)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Server(port, process)
    stack.servers.append(server)
    wait_listening(port, process, "baseline server")
    return server


# --- the run ---------------------------------------------------------------------------------


def phase(port: int, pid: int, requests_file: Path, seconds: float, connections: int, workers: int) -> dict[str, Any]:
    cpu = proc_cpu(pid)
    start = time.perf_counter()
    result = run_clients(port, requests_file, seconds, connections, workers)
    elapsed = time.perf_counter() - start
    result["rate"] = result["ok"] / min(elapsed, seconds)
    result["cpu_ms"] = (proc_cpu(pid) - cpu) * 1000 / max(1, result["ok"])
    return result


def report(label: str, result: dict[str, Any]) -> None:
    latencies = result["latencies"]
    print(
        f"M8 {label}: {result['rate']:.0f} polls/s, server CPU {result['cpu_ms']:.2f} ms/poll, "
        f"p50 {percentile(latencies, 0.5) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms, "
        f"{result['other']} other answers {result['errors'][:2]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="client processes")
    parser.add_argument("--smoke", action="store_true", help="50 devices, 3 s per phase, for CI")
    args = parser.parse_args()
    devices, seconds = (50, 3.0) if args.smoke else (args.devices, args.seconds)
    with Stack("m8") as stack:
        print(f"M8 machine: {machine()}; load average {os.getloadavg()[0]:.2f} at the start")
        headers, firmware_uuid = provision(stack, devices)
        requests_file = stack.work / "requests.json"
        requests_file.write_text(json.dumps([request_bytes(h, firmware_uuid).hex() for h in headers]))
        hub = stack.start_hub({"TRUSTED_PROXIES": "127.0.0.1/32"})
        # First polls: each device is provisioned (JITP) and its report stored.
        start = time.perf_counter()
        warm = run_clients(hub.port, requests_file, 0, min(args.connections, devices), 1, once=True)
        first_rate = warm["ok"] / (time.perf_counter() - start)
        from devices.models import Device

        known = Device.objects.filter(identifier__startswith="poll-").count()
        print(
            f"M8 first polls (JITP: device and certificate recorded, report stored): {warm['ok']} "
            f"at {first_rate:.0f} polls/s, {known} of {devices} devices provisioned, {warm['other']} other"
        )
        hub_result = phase(hub.port, hub.pid, requests_file, seconds, args.connections, args.workers)
        report(f"hub, {devices} devices, {args.connections} connections", hub_result)
        baseline = start_baseline(stack)
        base_result = phase(baseline.port, baseline.pid, requests_file, seconds, args.connections, args.workers)
        report("baseline (bare daphne app)", base_result)
        print(
            f"M8 ratio hub / baseline: {ratio(hub_result['rate'], base_result['rate'])}; "
            f"goal >= 1,000 polls/s: {'met' if hub_result['rate'] >= 1000 else 'missed'}; "
            f"load average {os.getloadavg()[0]:.2f} at the end"
        )
        if hub_result["other"] or known < devices:
            raise SystemExit("M8: some polls were not answered with the no-update answer")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "client":
        config = json.loads(sys.argv[2])
        requests = [bytes.fromhex(r) for r in json.loads(Path(config["requests"]).read_text())]
        print(json.dumps(asyncio.run(_client(config, requests))))
    else:
        main()
