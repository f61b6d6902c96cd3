"""The rollout simulation both the tests and the benchmark run: simulated
devices over real websockets, real hub processes, real Celery workers, and a
sampler that watches the slots.

`bench/rollout_sim.py` runs it standalone on a scratch database (its docstring
describes the run and the checks); tests/deployments/ run it on the test
database with hubs from `live_hub`.

Each simulated device authenticates with NH1 headers signed by a product key,
joins `device` with its firmware metadata, and on an `update` push reports
received, started, progress and completed (or failed, for a deterministic
share of the devices), disconnects, waits the update time and reconnects
running the target firmware (or its old one). Devices are spread over client
processes (`python -m tests.support.rollout_sim PLAN OUT`, asyncio, no Django)
and source addresses 127.0.0.x, so that 10,000 sockets fit one machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.support.hub import ROOT, start_hub

TARGET_VERSION = "2.0.0"
OLD_VERSION = "1.0.0"
PLATFORM, ARCHITECTURE = "rpi4", "aarch64"


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def fails(identifier: str, fraction: float) -> bool:
    """Whether this device fails every update: a stable share of the fleet."""
    return (zlib.crc32(identifier.encode()) % 10_000) < fraction * 10_000


# --- Client side: runs in client processes, no Django --------------------------------


@dataclass
class ClientPlan:
    urls: list[str]
    key: str
    secret: str
    identifiers: list[str]
    old_uuid: str
    target_uuid: str
    update_time: float
    fail_fraction: float
    first_address: int  # 127.0.0.<first_address + i % address_count>
    address_count: int = 8
    heartbeat_seconds: float = 30.0
    connect_rate: float = 100.0  # first connects per second from this process


@dataclass
class DeviceLog:
    identifier: str
    pushes: list[tuple[float, int]] = field(default_factory=list)  # (time, connection number)
    duplicates: int = 0  # a second push within one connection
    failed_reports: list[float] = field(default_factory=list)
    connects: int = 0
    connect_errors: int = 0
    topic_errors: int = 0
    last_error: str = ""


class SimDevice:
    """A nerves_hub_link-shaped device: NH1 headers, `device` join, heartbeats,
    and the status reports of an fwup run when told to update."""

    def __init__(self, plan: ClientPlan, identifier: str, url: str, local_ip: str) -> None:
        self.plan, self.url, self.local_ip = plan, url, local_ip
        self.log = DeviceLog(identifier)
        self.fail = fails(identifier, plan.fail_fraction)
        self.firmware_uuid, self.version = plan.old_uuid, OLD_VERSION
        self.joined = asyncio.Event()
        self.ref = 0
        self.stopping = False
        # The fwup run in progress, which outlives the connection it came on.
        self.update: asyncio.Task[float] | None = None
        self.report: Callable[[list[Any]], Awaitable[None]] | None = None

    def next_ref(self) -> str:
        self.ref += 1
        return str(self.ref)

    def join_params(self, downloading: str | None = None) -> dict[str, Any]:
        from tests.support.nhl_client import DEFAULT_FW

        return {
            **DEFAULT_FW,
            "nerves_fw_uuid": self.firmware_uuid,
            "nerves_fw_version": self.version,
            "nerves_fw_platform": PLATFORM,
            "nerves_fw_architecture": ARCHITECTURE,
            "fwup_version": "1.13.2",
            "device_api_version": "2.0.0",
            "console_version": "2.0.0",
            "currently_downloading_uuid": downloading,
            "meta": {"firmware_auto_revert_detected": False, "firmware_validated": True},
        }

    async def run(self) -> None:
        """Stay connected until stopped; an update ends a connection, and the
        device comes back after the update time."""
        import websockets

        from tests.support.nhl_client import backoff_delays

        failures = 0
        while not self.stopping:
            connects = self.log.connects
            try:
                delay = await self.session()
                failures = 0
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                self.log.connect_errors += 1
                self.log.last_error = repr(exc)[:300]
                # nerves_hub_link's backoff (1, 2, 4 ... 60 s, +50 % jitter),
                # from zero again after a connection that got in.
                failures = 0 if self.log.connects > connects else failures
                delays = backoff_delays()
                delay = delays[min(failures, len(delays) - 1)]
                failures += 1
            if not self.stopping:
                await asyncio.sleep(delay)

    async def session(self) -> float:
        """One connection; returns how long to wait before the next."""
        from websockets.asyncio.client import connect

        from tests.support.nhl_client import encode, nh1_headers

        self.ref = 0
        headers = nh1_headers(self.plan.key, self.plan.secret, self.log.identifier, int(time.time()))
        ws = await connect(
            f"{self.url}/device-socket/websocket?vsn=2.0.0",
            additional_headers=headers,
            user_agent_header="mint/1.9.3",
            compression=None,
            ping_interval=None,
            open_timeout=30,
            local_addr=(self.local_ip, 0),
        )
        self.log.connects += 1
        connection = self.log.connects

        async def send(message: list[Any]) -> None:
            await ws.send(encode(message))

        async def heartbeat() -> None:
            await asyncio.sleep(random.random() * self.plan.heartbeat_seconds)
            while True:
                await send([None, self.next_ref(), "phoenix", "heartbeat", {}])
                await asyncio.sleep(self.plan.heartbeat_seconds)

        # The topic's join; None while the hub's side of it is down.
        topic: dict[str, str | None] = {"join_ref": self.next_ref()}

        async def send_on_topic(message: list[Any]) -> None:
            # What the client sends on a topic that is down is not sent.
            if topic["join_ref"] is not None:
                await send([topic["join_ref"], *message[1:]])

        def downloading() -> str | None:
            return self.plan.target_uuid if self.update is not None and not self.update.done() else None

        async def rejoin() -> None:
            await asyncio.sleep(1 + random.random())
            topic["join_ref"] = join_ref = self.next_ref()
            await send([join_ref, join_ref, "device", "phx_join", self.join_params(downloading())])

        if self.update is not None and self.update.done():
            self.update = None  # it finished between connections: this is after the reboot
        beats = asyncio.get_running_loop().create_task(heartbeat())
        rejoining: asyncio.Task[None] | None = None
        self.report = send_on_topic
        # An update still running from an earlier connection (fwup downloads
        # over HTTP, not over this socket) ends this one too: the reboot.
        if self.update is not None and not self.update.done():
            self.update.add_done_callback(lambda _t: asyncio.ensure_future(ws.close()))
        try:
            first = topic["join_ref"]
            await send([first, first, "device", "phx_join", self.join_params(downloading())])
            async for raw in ws:
                message = json.loads(raw)
                msg_join_ref, ref, topic_name, event, _payload = message[:5]
                if topic_name == "device" and event == "phx_error" and msg_join_ref == topic["join_ref"]:
                    # The hub's side of the topic crashed (its database went
                    # away mid-report): rejoin after a while, as the client
                    # does, saying which firmware is still downloading.
                    self.log.topic_errors += 1
                    topic["join_ref"] = None
                    rejoining = asyncio.get_running_loop().create_task(rejoin())
                elif event == "phx_reply" and ref is not None and ref == msg_join_ref:
                    if message[4].get("status") != "ok":
                        raise OSError(f"join refused: {message}")
                    self.joined.set()
                elif topic_name == "device" and event == "update":
                    self.log.pushes.append((time.time(), connection))
                    if self.update is not None and not self.update.done():
                        self.log.duplicates += 1
                        continue
                    self.update = asyncio.get_running_loop().create_task(self.apply_update())
                    self.update.add_done_callback(lambda _t: asyncio.ensure_future(ws.close()))
            if self.update is not None and self.update.done() and not self.update.cancelled():
                reboot, self.update = self.update.result(), None
                return reboot
            return 0.5 + random.random()
        finally:
            self.report = None
            beats.cancel()
            if rejoining is not None:
                rejoining.cancel()
            if self.stopping and self.update is not None:
                self.update.cancel()
            await ws.close()

    async def apply_update(self) -> float:
        """Report an fwup run on whichever connection is current (none while the
        device is between connections: those reports are not sent); returns the
        wait before reconnecting."""
        import websockets

        async def push(event: str, payload: dict[str, Any]) -> None:
            if self.report is not None:
                try:
                    await self.report([None, self.next_ref(), "device", event, payload])
                except websockets.WebSocketException:
                    pass  # the connection went meanwhile

        slice_ = self.plan.update_time / 4
        await push("status_update", {"status": "received"})
        await push("status_update", {"status": "started"})
        await asyncio.sleep(slice_)
        await push("fwup_progress", {"value": 50, "stage": "downloading"})
        await asyncio.sleep(slice_)
        if self.fail:
            self.log.failed_reports.append(time.time())
            await push("status_update", {"status": "failed", "reason": "fwup error: simulated"})
        else:
            await push("fwup_progress", {"value": 100, "stage": "updating"})
            await push("status_update", {"status": "completed"})
            self.firmware_uuid, self.version = self.plan.target_uuid, TARGET_VERSION
        return self.plan.update_time / 2  # the reboot


async def client_main(plan: ClientPlan) -> list[DeviceLog]:
    """Run the plan's devices until stdin says stop; return their logs."""
    devices = [
        SimDevice(
            plan,
            identifier,
            plan.urls[i % len(plan.urls)],
            f"127.0.0.{plan.first_address + i % plan.address_count}",
        )
        for i, identifier in enumerate(plan.identifiers)
    ]
    tasks = []
    for i, device in enumerate(devices):
        tasks.append(asyncio.get_running_loop().create_task(device.run()))
        if i % 10 == 9:
            # A fleet coming online over time, not one SYN burst (a burst
            # beyond what the hubs join within daphne's 5 s connect timeout
            # only measures the devices' backoff).
            await asyncio.sleep(10 / plan.connect_rate)
    joined = asyncio.gather(*(d.joined.wait() for d in devices))
    await joined
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for device in devices:
        device.stopping = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return [d.log for d in devices]


def client_entry(plan_path: str, out_path: str) -> None:
    raise_nofile()
    plan = ClientPlan(**json.loads(Path(plan_path).read_text()))
    logs = asyncio.run(client_main(plan))
    Path(out_path).write_text(json.dumps([asdict(log) for log in logs]))


# --- Server side: processes ---------------------------------------------------------


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Cluster:
    """Hub, worker and beat processes on one database and Redis."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.procs: list[Proc] = []

    def _start(self, name: str, argv: list[str], extra: dict[str, str] | None = None) -> Proc:
        log_path = self.workdir / f"{name}.log"
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**self.env, **(extra or {})},
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a kill takes the whole process group
        )
        proc = Proc(name, process, log_path)
        self.procs.append(proc)
        return proc

    def start_hub(self, port: int) -> Proc:
        hub = start_hub(self.env, self.workdir, {"LOG_LEVEL": "warning"}, port=port, group=True)
        proc = Proc(f"hub-{port}", hub.process, hub.log_path)
        self.procs.append(proc)
        return proc

    def start_worker(self, name: str = "worker", concurrency: int = 2) -> Proc:
        argv = [sys.executable, "-m", "celery", "-A", "nerveshub", "worker", "-l", "info", "-n", f"{name}@%h"]
        argv += ["-c", str(concurrency), "--without-gossip", "--without-mingle", "--without-heartbeat"]
        return self._start(name, argv)

    def start_beat(self) -> Proc:
        schedule = self.workdir / "beat-schedule"
        return self._start("beat", [sys.executable, "-m", "celery", "-A", "nerveshub", "beat", "-s", str(schedule)])

    def wait_worker_ready(self, proc: Proc, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while "ready." not in proc.log():
            if proc.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} did not start:\n{proc.log()}")
            time.sleep(0.1)

    def kill(self, proc: Proc) -> None:
        """SIGKILL the process group: the worker and its pool die mid-task."""
        try:
            os.killpg(proc.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.process.wait(10)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.process.poll() is None:
                try:
                    os.killpg(proc.process.pid, signal.SIGTERM)
                    proc.process.wait(10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    self.kill(proc)

    def logs(self, tail: int = 6000) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log()[-tail:]}" for p in self.procs)


def server_env(database_url: str, redis_url: str, data_dir: str, backstop_seconds: int) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DATA_DIR": data_dir,
        "DJANGO_SETTINGS_MODULE": "nerveshub.settings",
        "ROLLOUT_BACKSTOP_SECONDS": str(backstop_seconds),
    }


# --- Server side: the scenario (Django must be set up) ------------------------------


@dataclass
class SimConfig:
    devices: int = 200
    concurrency: int = 10
    update_time: float = 0.4
    fail_fraction: float = 0.0
    penalty_attempts: int = 1
    breaker_percent: int = 50
    breaker_min_attempts: int = 10
    per_process: int = 2500
    connect_rate: float = 100.0  # first connects per second, all client processes together
    sample_interval: float = 0.05
    timeout: float = 120.0
    label: str = ""


@dataclass
class Scenario:
    deployment_id: int
    product_id: int
    key: str
    secret: str
    old_uuid: str
    target_uuid: str
    identifiers: list[str]


def create_scenario(config: SimConfig, data_dir: str | None = None) -> Scenario:
    """An org, a product with a shared secret, a valid stored target firmware and
    a paused, active deployment of it."""
    from django.conf import settings
    from django.utils import timezone

    from deployments.models import Deployment
    from devices import services as device_services
    from devices.models import Device
    from firmware.models import Firmware, FirmwareStatus
    from firmware.storage import firmware_storage
    from nerveshub.tenancy import services as tenancy

    label = config.label or uuid.uuid4().hex[:8]
    org, _ = tenancy.get_or_create_org("bench", f"sim-{label}")
    product, _ = tenancy.get_or_create_product("bench", org, "my_app")
    _, issued = device_services.create_product_secret("bench", product)
    target_uuid = str(uuid.uuid4())
    storage_name = f"{org.pk}/{target_uuid}.fw"
    # The devices never download it, but the push carries a signed URL, which
    # needs a stored file.
    from django.core.files.base import ContentFile

    storage_name = firmware_storage().save(storage_name, ContentFile(b"simulated firmware"))
    firmware = Firmware.objects.create(
        org=org,
        product=product,
        uuid=target_uuid,
        version=TARGET_VERSION,
        platform=PLATFORM,
        architecture=ARCHITECTURE,
        size=18,
        sha256="ab" * 32,
        partial_sha256=["ab" * 32],
        storage_name=storage_name,
        status=FirmwareStatus.VALID,
    )
    deployment = Deployment.objects.create(
        org=org,
        product=product,
        name="sim",
        firmware=firmware,
        is_active=True,
        paused_at=timezone.now(),
        paused_reason="waiting for the simulated fleet",
        concurrent_updates=config.concurrency,
        penalty_attempts=config.penalty_attempts,
        breaker_failure_percent=config.breaker_percent,
        breaker_min_attempts=config.breaker_min_attempts,
    )
    del settings  # imported for its side effect of configuring storage
    identifiers = [f"sim-{label}-{i:05d}" for i in range(config.devices)]
    # The fleet exists already (a first connect with the product key would
    # register each device; that herd is not what this measures).
    Device.objects.bulk_create(
        [Device(org=org, product=product, identifier=ident) for ident in identifiers], batch_size=1000
    )
    return Scenario(
        deployment_id=deployment.pk,
        product_id=product.pk,
        key=issued.key,
        secret=issued.secret,
        old_uuid=str(uuid.uuid4()),
        target_uuid=target_uuid,
        identifiers=identifiers,
    )


class Sampler(threading.Thread):
    """Counts the deployment's in-flight rows every `interval` seconds."""

    def __init__(self, deployment_id: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.deployment_id, self.interval = deployment_id, interval
        self.max_inflight = 0
        self.samples = 0
        self.stopped = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from django.db import connection

        from deployments.models import INFLIGHT_STATUSES, DeviceUpdate

        try:
            while not self.stopped.is_set():
                n = DeviceUpdate.objects.filter(deployment_id=self.deployment_id, status__in=INFLIGHT_STATUSES).count()
                self.max_inflight = max(self.max_inflight, n)
                self.samples += 1
                self.stopped.wait(self.interval)
        except BaseException as exc:  # reported by the caller
            self.error = exc
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)


class FleetNotReady(RuntimeError):
    """The simulated devices did not all join in time."""


def _read_line(stream: Any, into: list[str]) -> None:
    into.append(stream.readline())


class ClientFleet:
    """The client processes of one scenario."""

    def __init__(self, scenario: Scenario, config: SimConfig, urls: list[str], workdir: Path) -> None:
        self.procs: list[tuple[subprocess.Popen[str], Path]] = []
        ids = scenario.identifiers
        chunks = [ids[i : i + config.per_process] for i in range(0, len(ids), config.per_process)]
        for n, chunk in enumerate(chunks):
            plan = ClientPlan(
                urls=urls,
                key=scenario.key,
                secret=scenario.secret,
                identifiers=chunk,
                old_uuid=scenario.old_uuid,
                target_uuid=scenario.target_uuid,
                update_time=config.update_time,
                fail_fraction=config.fail_fraction,
                first_address=2 + 8 * n,
                connect_rate=config.connect_rate / len(chunks),
            )
            plan_path, out_path = workdir / f"client-{n}.json", workdir / f"client-{n}.out.json"
            plan_path.write_text(json.dumps(asdict(plan)))
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.support.rollout_sim", str(plan_path), str(out_path)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            self.procs.append((process, out_path))

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for process, _ in self.procs:
            assert process.stdout is not None
            ready: list[str] = []
            reader = threading.Thread(target=_read_line, args=(process.stdout, ready))
            reader.start()
            reader.join(max(0.1, deadline - time.monotonic()))
            if not ready or ready[0].strip() != "ready":
                raise FleetNotReady(f"client process not ready within {timeout} s")

    def stop(self) -> list[DeviceLog]:
        logs: list[DeviceLog] = []
        for process, _ in self.procs:
            if process.poll() is None and process.stdin is not None:
                process.stdin.write("stop\n")
                process.stdin.flush()
        for process, out_path in self.procs:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if out_path.exists():
                for raw in json.loads(out_path.read_text()):
                    raw["pushes"] = [tuple(p) for p in raw["pushes"]]
                    logs.append(DeviceLog(**raw))
        return logs


@dataclass
class SimResult:
    devices: int
    concurrency: int
    update_time: float
    fail_fraction: float
    failing_devices: int
    connect_seconds: float
    rollout_seconds: float
    ideal_seconds: float
    ratio: float
    max_inflight: int
    samples: int
    succeeded: int
    failed_attempts: int
    claimed: int
    pushes: int
    duplicate_pushes: int
    pushes_after_penalty: int
    penalty_boxed: int
    breaker_tripped: bool
    paused_reason: str
    claimed_after_pause: int
    finished: bool
    connects: int = 0
    connect_errors: int = 0
    # The hub's own count (DeviceUpdate.pushes): a claim's first push, and the
    # pushes it repeated (a push lost, or an attempt the hub offered again).
    repeated_pushes: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.devices} devices, concurrency {self.concurrency}, update {self.update_time:g} s, "
            f"fail {self.fail_fraction:g} ({self.failing_devices} failing devices): "
            f"connect {self.connect_seconds:.1f} s, rollout {self.rollout_seconds:.1f} s "
            f"(ideal {self.ideal_seconds:.1f} s, ratio {self.ratio:.2f}); "
            f"max in flight {self.max_inflight}/{self.concurrency} over {self.samples} samples; "
            f"succeeded {self.succeeded}, failed attempts {self.failed_attempts}, pushes {self.pushes} "
            f"for {self.claimed} claims ({self.repeated_pushes} repeated by the hub), "
            f"duplicates {self.duplicate_pushes}, penalty-boxed {self.penalty_boxed}, "
            f"pushes after penalty {self.pushes_after_penalty}; breaker "
            + (f"tripped: {self.paused_reason!r}" if self.breaker_tripped else "not tripped")
            + f"; claimed after pause {self.claimed_after_pause}; "
            f"{self.connects} connects, {self.connect_errors} failed connects"
        )


def _state(deployment_id: int, target_uuid: str) -> tuple[int, int, bool]:
    from deployments.models import INFLIGHT_STATUSES, Deployment, DeviceUpdate
    from devices.models import Device

    on_target = Device.objects.filter(deployment_id=deployment_id, firmware_uuid=target_uuid).count()
    inflight = DeviceUpdate.objects.filter(deployment_id=deployment_id, status__in=INFLIGHT_STATUSES).count()
    paused = Deployment.objects.filter(pk=deployment_id, paused_at__isnull=False).exists()
    return on_target, inflight, paused


def run_simulation(
    config: SimConfig,
    scenario: Scenario,
    urls: list[str],
    workdir: Path,
    during: Callable[[float], None] | None = None,
    resume: Callable[[int], None] | None = None,
) -> SimResult:
    """Connect the fleet, resume the deployment, wait until every device that can
    succeed did (or the breaker paused the rollout and nothing is in flight),
    and check the run. `during(elapsed)` is called every poll, e.g. to kill a
    worker mid-rollout; `resume(deployment_id)` replaces the operator's resume in
    this process (whose Redis may not be the cluster's)."""
    from deployments import rollout
    from deployments.models import Deployment, DeviceUpdate, UpdateStatus
    from devices.models import ConnectionStatus, Device
    from nerveshub.tenancy.models import AuditEvent

    failing = sum(fails(i, config.fail_fraction) for i in scenario.identifiers)
    expect_success = config.devices - failing
    started = time.monotonic()
    fleet = ClientFleet(scenario, config, urls, workdir)
    logs: list[DeviceLog] = []
    sampler = Sampler(scenario.deployment_id, config.sample_interval)
    finished = False
    rollout_seconds = 0.0
    try:
        fleet.wait_ready(config.timeout)
        # Every device joined: membership is settled at join.
        members = Device.objects.filter(
            deployment_id=scenario.deployment_id, connection_status=ConnectionStatus.CONNECTED
        ).count()
        if members != config.devices:
            raise RuntimeError(f"{members} of {config.devices} devices are connected members")
        connect_seconds = time.monotonic() - started
        sampler.start()
        t0 = time.monotonic()
        if resume is not None:
            resume(scenario.deployment_id)
        else:
            rollout.resume("bench", Deployment.objects.get(pk=scenario.deployment_id))
        deadline = t0 + config.timeout
        while time.monotonic() < deadline:
            on_target, inflight, paused = _state(scenario.deployment_id, scenario.target_uuid)
            if inflight == 0 and (on_target >= expect_success or paused):
                finished = True
                break
            if during is not None:
                during(time.monotonic() - t0)
            time.sleep(0.05)
        rollout_seconds = time.monotonic() - t0
    finally:
        if sampler.is_alive():
            sampler.stop()
        logs = fleet.stop()

    deployment = Deployment.objects.get(pk=scenario.deployment_id)
    updates = DeviceUpdate.objects.filter(deployment_id=scenario.deployment_id)
    by_identifier = {log.identifier: log for log in logs}
    boxed_at: dict[str, float] = {}
    identifiers = dict(Device.objects.filter(org_id=deployment.org_id).values_list("pk", "identifier"))
    for subject_id, created_at in AuditEvent.objects.filter(
        action="device.penalty_boxed", org_id=deployment.org_id
    ).values_list("subject_id", "created_at"):
        ident = identifiers.get(int(subject_id))
        if ident is not None:
            boxed_at[ident] = min(boxed_at.get(ident, float("inf")), created_at.timestamp())
    pushes_after_penalty = sum(
        1
        for ident, t in boxed_at.items()
        for push_time, _ in by_identifier.get(ident, DeviceLog(ident)).pushes
        if push_time > t
    )
    claimed_after_pause = (
        updates.filter(created_at__gt=deployment.paused_at).count() if deployment.paused_at is not None else 0
    )
    ideal = config.devices / config.concurrency * config.update_time
    result = SimResult(
        devices=config.devices,
        concurrency=config.concurrency,
        update_time=config.update_time,
        fail_fraction=config.fail_fraction,
        failing_devices=failing,
        connect_seconds=round(connect_seconds, 2),
        rollout_seconds=round(rollout_seconds, 2),
        ideal_seconds=round(ideal, 2),
        ratio=round(rollout_seconds / ideal, 2) if ideal else 0.0,
        max_inflight=sampler.max_inflight,
        samples=sampler.samples,
        succeeded=updates.filter(status=UpdateStatus.SUCCEEDED).count(),
        failed_attempts=updates.filter(status__in=rollout.FAILED_STATUSES).count(),
        claimed=updates.count(),
        pushes=sum(len(log.pushes) for log in logs),
        duplicate_pushes=sum(log.duplicates for log in logs),
        pushes_after_penalty=pushes_after_penalty,
        penalty_boxed=len(boxed_at),
        breaker_tripped=deployment.paused_at is not None,
        paused_reason=deployment.paused_reason,
        claimed_after_pause=claimed_after_pause,
        finished=finished,
        connects=sum(log.connects for log in logs),
        connect_errors=sum(log.connect_errors for log in logs),
        repeated_pushes=sum(max(0, n - 1) for n in updates.values_list("pushes", flat=True)),
    )
    result.problems = check(result, config, sampler)
    return result


def check(result: SimResult, config: SimConfig, sampler: Sampler | None = None) -> list[str]:
    problems = []
    if sampler is not None and sampler.error is not None:
        problems.append(f"sampler failed: {sampler.error!r}")
    if not result.finished:
        problems.append(f"rollout did not finish within {config.timeout} s")
    if result.max_inflight > config.concurrency:
        problems.append(f"{result.max_inflight} in flight > concurrent_updates {config.concurrency}")
    if result.duplicate_pushes:
        problems.append(f"{result.duplicate_pushes} second push(es) within one connection")
    if result.pushes_after_penalty:
        problems.append(f"{result.pushes_after_penalty} push(es) reached penalty-boxed devices")
    if result.claimed_after_pause:
        problems.append(f"{result.claimed_after_pause} update(s) claimed after the breaker paused the deployment")
    if result.breaker_tripped and not result.paused_reason:
        problems.append("deployment paused without a reason")
    if result.samples < 3:
        problems.append("the sampler barely ran")
    return problems


# --- Database settings for the simulation ------------------------------------------


def relax_commits(conn: Any, name: str) -> None:
    """synchronous_commit = off for new sessions of database `name`.

    A hub process runs its database calls on one thread, and a join commits
    several times; on a disk where an fsync takes 5-15 ms (this kind of shared
    VM) that, not the code, sets the join rate. A production database on local
    NVMe commits in well under a millisecond; this setting models that. The
    in-flight invariants do not depend on it (locks and constraints are the same)."""
    conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')


def relax_current_database() -> None:
    """relax_commits for Django's database (the test database, in tests)."""
    from django.db import connection

    with connection.cursor() as cursor:
        relax_commits(cursor, str(connection.settings_dict["NAME"]))


if __name__ == "__main__":
    # A client process of ClientFleet: python -m tests.support.rollout_sim PLAN OUT
    client_entry(sys.argv[1], sys.argv[2])
