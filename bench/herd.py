"""Reconnect herd: N connected devices, every hub process restarted at once.

The devices reconnect as nerves_hub_link does (docs/device-protocol.md §1.6): a fresh
NH1 signature, then the jittered backoff list 1, 2, 4 … 60 s (+0 to 50 %), then the
network wait (a plain TCP connect every 3 s until one succeeds), then the upgrade
and the join, again with the next backoff entry on any failure (503 from the
connect limiter included).

Measured: how long until every device is joined again, hub RSS after recovery
against the plateau before the restart, and that no device's state was lost
(tags, penalty box, an in-flight update the device is still downloading).

    python bench/herd.py [--devices 10000] [--recover-limit 600] [--smoke]

With DATABASE_URL (PostgreSQL) and REDIS_URL set it runs two hub processes;
otherwise one, in embedded mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    JOIN_PARAMS,
    ROOT,
    HubProcess,
    Stack,
    chunks,
    free_port,
    machine,
    proc_rss,
    raise_nofile,
)

BACKOFF_MS = [1000, 2000, 4000, 8000, 16000, 32000, 60000]
HEARTBEAT_SECONDS = 30
DOWNLOADING_UUID = "5a0f5d8e-0000-4000-8000-000000000001"


# --- inside a client process -----------------------------------------------------


class HerdClients:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.open: set[int] = set()
        self.reconnected: list[float] = []
        self.attempts = 0
        self.refused = 0
        self.rng = random.Random()

    def _join_params(self, index: int) -> dict[str, Any]:
        params = dict(JOIN_PARAMS)
        if index in self.config["downloading"]:
            params["currently_downloading_uuid"] = DOWNLOADING_UUID
        return params

    async def _network_up(self, port: int) -> None:
        while True:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
                writer.close()
                return
            except (OSError, TimeoutError):
                await asyncio.sleep(3)

    async def device(self, index: int, started: asyncio.Event) -> None:
        from websockets.asyncio.client import connect

        from devicelink.nh1 import sign_headers

        port = self.config["ports"][index % len(self.config["ports"])]
        identifier = f"{self.config['prefix']}-{index}"
        failures = 0
        first = True
        while True:
            # Signed before the backoff, as the client does.
            headers = sign_headers(self.config["key"], self.config["secret"], identifier, int(time.time()))
            if not first:
                delay = BACKOFF_MS[min(failures, len(BACKOFF_MS) - 1)] / 1000
                await asyncio.sleep(delay * (1 + self.rng.random() * 0.5))
                await self._network_up(port)
            self.attempts += 1
            try:
                ws = await connect(
                    f"ws://127.0.0.1:{port}/device-socket/websocket?vsn=2.0.0",
                    additional_headers=headers,
                    ping_interval=None,
                    compression=None,
                    open_timeout=30,
                    close_timeout=2,
                    local_addr=(self.config["source"], 0),
                )
            except Exception:
                self.refused += 1
                failures += 1
                first = False
                continue
            try:
                await ws.send(json.dumps(["1", "1", "device", "phx_join", self._join_params(index)]))
                while True:
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if reply[1] == "1":
                        break
                if reply[4].get("status") != "ok":
                    raise RuntimeError(reply)
                failures = 0
                self.open.add(index)
                if not started.is_set():
                    started.set()  # the first join, whether or not it took retries
                else:
                    self.reconnected.append(time.time())
                first = False
                ref = 1
                while True:
                    try:
                        await asyncio.wait_for(ws.recv(), HEARTBEAT_SECONDS * (0.5 + self.rng.random() * 0.5))
                    except TimeoutError:
                        ref += 1
                        await ws.send(json.dumps([None, str(ref), "phoenix", "heartbeat", {}]))
            except Exception:
                pass
            finally:
                self.open.discard(index)
                await ws.close()
            first = False

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        first, count = self.config["first"], self.config["count"]
        semaphore = asyncio.Semaphore(self.config["concurrency"])
        tasks = []

        async def start(index: int) -> None:
            started = asyncio.Event()
            async with semaphore:
                tasks.append(loop.create_task(self.device(index, started)))
                await asyncio.wait_for(started.wait(), 120)

        while True:
            words = (await reader.readline()).decode().split()
            if not words or words[0] == "quit":
                break
            if words[0] == "open":
                await asyncio.gather(*(start(first + i) for i in range(count)), return_exceptions=True)
                # Devices shed while the fleet comes online retry with their
                # backoff (up to 60 s between tries): wait for the stragglers.
                deadline = loop.time() + 300
                while len(self.open) < count and loop.time() < deadline:  # noqa: ASYNC110 - polling counters
                    await asyncio.sleep(0.05)
            elif words[0] == "wait":
                deadline = loop.time() + float(words[1])
                while len(self.open) < count and loop.time() < deadline:  # noqa: ASYNC110 - polling counters
                    await asyncio.sleep(0.05)
            reply = {
                "open": len(self.open),
                "reconnected": self.reconnected,
                "attempts": self.attempts,
                "refused": self.refused,
            }
            self.reconnected = []
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
        for task in tasks:
            task.cancel()


# --- the conductor ---------------------------------------------------------------


@dataclass
class Herd:
    processes: list[subprocess.Popen[str]]

    def command(self, line: str) -> list[dict[str, Any]]:
        for p in self.processes:
            assert p.stdin is not None
            p.stdin.write(line + "\n")
            p.stdin.flush()
        answers = []
        for p in self.processes:
            assert p.stdout is not None
            text = p.stdout.readline()
            if not text:
                raise SystemExit(f"a client process exited (code {p.poll()})")
            answers.append(json.loads(text))
        return answers

    def stop(self) -> None:
        for p in self.processes:
            if p.poll() is None and p.stdin is not None:
                try:
                    p.stdin.write("quit\n")
                    p.stdin.flush()
                except OSError:
                    pass
        for p in self.processes:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def start_hub_on(stack: Stack, port: int) -> HubProcess:
    return stack.start_hub(
        {
            "DEVICE_CONNECT_RATE": os.environ.get("DEVICE_CONNECT_RATE", "2000"),
            "DEVICE_CONNECT_BURST": os.environ.get("DEVICE_CONNECT_BURST", "4000"),
        },
        port=port,
    )


def _seed_state(stack: Stack, prefix: str, devices: int) -> dict[str, Any]:
    """Tags, penalty boxes and in-flight updates on a sample of the (already
    registered) devices; returns what to compare after the restart."""
    from django.utils import timezone

    from deployments.models import Deployment, DeviceUpdate, UpdateStatus
    from devices.models import Device
    from firmware.models import Firmware, FirmwareStatus

    rows = {d.identifier: d for d in Device.objects.filter(identifier__startswith=prefix + "-")}
    tagged = [rows[f"{prefix}-{i}"].pk for i in range(0, devices, 10)]
    boxed = [rows[f"{prefix}-{i}"].pk for i in range(5, devices, 20)]
    Device.objects.filter(pk__in=tagged).update(tags=["herd", "kept"])
    until = timezone.now() + timedelta(days=1)
    Device.objects.filter(pk__in=boxed).update(penalty_box_until=until)
    product = Device.objects.get(pk=tagged[0]).product
    firmware = Firmware.objects.create(
        org=product.org,
        product=product,
        uuid=DOWNLOADING_UUID,
        version="9.9.9",
        size=1,
        sha256="00" * 32,
        storage_name="herd/none.fw",
        status=FirmwareStatus.VALID,
    )
    # Inactive: the orchestrator pushes nothing; the rows stand for updates in flight.
    deployment = Deployment.objects.create(
        org=product.org, product=product, name=f"herd-{uuid.uuid4().hex[:6]}", firmware=firmware, is_active=False
    )
    downloading = [rows[f"{prefix}-{i}"].pk for i in range(3, devices, 50)]
    for pk in downloading:
        DeviceUpdate.objects.create(
            device_id=pk, deployment=deployment, firmware=firmware, status=UpdateStatus.DOWNLOADING
        )
    return {"tagged": tagged, "boxed": boxed, "downloading": downloading, "until": until}


def _state_lost(seed: dict[str, Any]) -> list[str]:
    from deployments.models import DeviceUpdate, UpdateStatus
    from devices.models import Device

    problems = []
    tags = dict(Device.objects.filter(pk__in=seed["tagged"]).values_list("pk", "tags"))
    if any(tags.get(pk) != ["herd", "kept"] for pk in seed["tagged"]):
        problems.append("tags changed")
    boxes = dict(Device.objects.filter(pk__in=seed["boxed"]).values_list("pk", "penalty_box_until"))
    if any(boxes.get(pk) != seed["until"] for pk in seed["boxed"]):
        problems.append("penalty box changed")
    kept = DeviceUpdate.objects.filter(device_id__in=seed["downloading"], status=UpdateStatus.DOWNLOADING).count()
    if kept != len(seed["downloading"]):
        problems.append(f"in-flight updates kept: {kept} of {len(seed['downloading'])}")
    return problems


def run(devices: int, workers: int, settle: float, recover_limit: float) -> bool:
    with Stack("herd") as stack:
        hubs = 2 if stack.services else 1
        ports = [free_port() for _ in range(hubs)]
        for port in ports:
            start_hub_on(stack, port)
        prefix = uuid.uuid4().hex[:8]
        # Devices in the sample "still downloading" report it in every join.
        downloading_index = list(range(3, devices, 50))
        processes = []
        first = 0
        for i, n in enumerate(chunks(devices, -(-devices // workers))):
            config = {
                "ports": ports,
                "first": first,
                "count": n,
                "prefix": prefix,
                "key": stack.key,
                "secret": stack.secret,
                "source": f"127.0.0.{2 + i % 250}",
                "concurrency": 200,
                "downloading": [d for d in downloading_index if first <= d < first + n],
            }
            first += n
            processes.append(
                subprocess.Popen(
                    [sys.executable, __file__, "clients", json.dumps(config)],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        herd = Herd(processes)
        try:
            opened = sum(a["open"] for a in herd.command("open"))
            print(f"connected: {opened} of {devices} devices on {hubs} hub process(es)")
            if opened < devices:
                print("RESULT: FAIL (the fleet did not come online)")
                return False
            seed = _seed_state(stack, prefix, devices)
            time.sleep(settle)
            plateau = sum(proc_rss(s.pid) for s in stack.servers if s.process.poll() is None)
            print(f"hub RSS plateau: {plateau / 2**20:.1f} MiB")
            # when: every hub process restarts at once
            restart = time.time()
            for server in list(stack.servers):
                server.stop()
                stack.servers.remove(server)
            for port in ports:
                start_hub_on(stack, port)
            answers = herd.command(f"wait {recover_limit}")
            back = sum(a["open"] for a in answers)
            times = sorted(t - restart for a in answers for t in a["reconnected"])
            refused = sum(a["refused"] for a in answers)
            if times:
                p50 = times[len(times) // 2]
                print(
                    f"back: {back} of {devices} within the {recover_limit:.0f} s limit; "
                    f"last one back {times[-1]:.1f} s after the restart (median device {p50:.1f} s)"
                )
            print(f"refused upgrades during the herd (limiter or closed port, retried with backoff): {refused}")
            time.sleep(settle)
            after = sum(proc_rss(s.pid) for s in stack.servers if s.process.poll() is None)
            print(f"hub RSS after recovery: {after / 2**20:.1f} MiB ({after / plateau:.2f} of the plateau)")
            lost = _state_lost(seed)
            alive = all(s.process.poll() is None for s in stack.servers)
            print(f"state lost: {', '.join(lost) or 'none'}; hub processes up: {alive}")
            print(f"machine: {machine()}")
            ok = back == devices and not lost and alive
            print(f"RESULT: {'PASS' if ok else 'FAIL'}")
            return ok
        finally:
            herd.stop()


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "clients":
        raise_nofile()
        import os

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nerveshub.settings")
        asyncio.run(HerdClients(json.loads(sys.argv[2])).main())
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4, help="client processes")
    parser.add_argument(
        "--recover-limit",
        type=float,
        default=600,
        help="seconds from the restart by which every device must be back (the stated time)",
    )
    parser.add_argument("--smoke", action="store_true", help="200 devices, for CI")
    args = parser.parse_args()
    if args.smoke:
        ok = run(200, 2, settle=1, recover_limit=60)
    else:
        ok = run(args.devices, args.workers, settle=5, recover_limit=args.recover_limit)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
