"""Shared pieces of the device-socket benchmarks (M1-M5) and the frame fuzzer.

* `Stack`: a temporary hub deployment: its own database (a fresh PostgreSQL
  database when DATABASE_URL names PostgreSQL, else SQLite), REDIS_URL when set
  (with a channel-layer prefix of its own), an organization, a product and its
  shared secret, and `python -m nerveshub.serve` processes;
* the baseline: `python bench/common.py baseline --port N`, a bare `websockets`
  server that answers Phoenix joins and heartbeats with no auth and no database;
* the fleet clients: `python bench/common.py clients '<json>'`, one process
  holding many device sockets (NH1-signed, joined like nerves_hub_link, from
  127.0.0.x source addresses), driven by commands on stdin and answering with
  one JSON line each. `Fleet` starts and drives several of them.

Every process raises its soft RLIMIT_NOFILE to the hard limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
# nerves_hub_link's heartbeat period (docs/device-protocol.md §1.5): the bench clients keep it
# whenever they are not measuring heartbeats themselves.
KEEPALIVE_SECONDS = 30.0
sys.path.insert(0, str(ROOT))

# One hub launcher for tests and benchmarks (re-exported for the bench scripts).
from tests.support.hub import HubProcess as HubProcess  # noqa: E402 (after the path setup above)
from tests.support.hub import free_port as free_port  # noqa: E402
from tests.support.hub import start_hub  # noqa: E402

JOIN_PARAMS: dict[str, Any] = {
    "nerves_fw_uuid": "d9492bdb-94de-5288-425e-2de6928ef99c",
    "nerves_fw_product": "bench",
    "nerves_fw_version": "0.1.0",
    "nerves_fw_platform": "rpi4",
    "nerves_fw_architecture": "aarch64",
    "nerves_fw_author": "bench",
    "fwup_version": "1.13.2",
    # 2.0.0: no extensions handshake, so a join is one frame each way.
    "device_api_version": "2.0.0",
    "console_version": "2.0.0",
    "meta": {"firmware_auto_revert_detected": False, "firmware_validated": True},
}


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen within 60 s")


def proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "?")
    return f"{os.cpu_count()} CPU ({model}), Python {sys.version.split()[0]}"


def ratio(hub: float, baseline: float) -> str:
    return f"{hub / baseline:.2f}" if baseline else "n/a"


# --- the hub deployment ---------------------------------------------------------


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class Stack:
    name: str
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nh-bench-")))
    env: dict[str, str] = field(default_factory=dict)
    servers: list[Server | HubProcess] = field(default_factory=list)
    key: str = ""
    secret: str = ""
    product_id: int = 0
    _drop_db: str | None = None

    @property
    def services(self) -> bool:
        return "REDIS_URL" in self.env

    def __enter__(self) -> Stack:
        raise_nofile()
        env = {k: v for k, v in os.environ.items() if k not in ("NERVESHUB_PRODUCTION", "FIRMWARE_STORAGE")}
        env.update(
            {
                "DATA_DIR": str(self.work / "data"),
                "DJANGO_SETTINGS_MODULE": "nerveshub.settings",
                "LOG_LEVEL": "warning",
                # The benchmarks open sockets faster than a real fleet does.
                "DEVICE_CONNECT_RATE": "0",
                "DEVICE_CONNECT_BURST": "100000",
            }
        )
        url = env.get("DATABASE_URL", "")
        if url.startswith(("postgres://", "postgresql://")):
            db = f"nh_bench_{self.name}_{os.getpid()}"
            parsed = urlparse(url)
            admin = urlunparse(parsed._replace(path="/postgres"))
            self._admin(admin, f'CREATE DATABASE "{db}"')
            self._drop_db = db
            env["DATABASE_URL"] = urlunparse(parsed._replace(path=f"/{db}"))
            env["_ADMIN_URL"] = admin
        else:
            env.pop("DATABASE_URL", None)
            env.pop("REDIS_URL", None)  # embedded mode is SQLite and the in-memory layer
        if env.get("REDIS_URL"):
            env["CHANNEL_LAYER_PREFIX"] = f"nhbench{os.getpid()}"
        self.env = env
        os.environ.clear()
        os.environ.update(env)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        import django

        django.setup()
        from devices import services
        from nerveshub.tenancy import services as tenancy

        org, _ = tenancy.get_or_create_org("bench", "bench-org")
        product, _ = tenancy.get_or_create_product("bench", org, "bench-product")
        _, issued = services.create_product_secret("bench", product)
        self.key, self.secret, self.product_id = issued.key, issued.secret, product.pk
        return self

    def _admin(self, url: str, sql: str) -> None:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql)

    def start_hub(
        self, extra: dict[str, str] | None = None, *, port: int | None = None, profile: Path | None = None
    ) -> HubProcess:
        """A hub process; with `profile`, run under cProfile (every thread), the
        statistics written to that file when it stops (`profiled_hub`)."""
        launcher = (__file__, "profiled", str(profile)) if profile else None
        try:
            hub = start_hub(self.env, self.work, extra, port=port, timeout=60, grace_seconds=30, launcher=launcher)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from exc
        self.servers.append(hub)
        return hub

    def start_baseline(self) -> Server:
        port = free_port()
        process = subprocess.Popen([sys.executable, __file__, "baseline", "--port", str(port)], cwd=ROOT)
        server = Server(port, process)
        self.servers.append(server)
        wait_listening(port, process, "baseline server")
        return server

    def start_floor(self, server: str = "daphne") -> Server:
        """The server-stack floor (`floor_application`) for this stack's product
        key, under `server` (daphne or uvicorn) as `nerveshub.serve` runs it."""
        port = free_port()
        env = {**self.env, "FLOOR_KEY": self.key, "FLOOR_SECRET": self.secret, "LOG_LEVEL": "warning"}
        # Its output (daphne's access log) goes to a file, as a hub's does.
        with (self.work / f"floor-{port}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, __file__, "floor", "--port", str(port), server],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        floor = Server(port, process)
        self.servers.append(floor)
        wait_listening(port, process, "floor server")
        return floor

    def hub_log(self, server: Server | HubProcess) -> str:
        return (self.work / f"hub-{server.port}.log").read_text(errors="replace")

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.stop()
        from django.db import connections

        connections.close_all()
        if self._drop_db:
            self._admin(self.env["_ADMIN_URL"], f'DROP DATABASE IF EXISTS "{self._drop_db}" WITH (FORCE)')


# --- the fleet of device clients --------------------------------------------------


@dataclass
class Fleet:
    """Several client processes, each holding a share of the sockets."""

    processes: list[subprocess.Popen[str]]

    @classmethod
    def start(
        cls,
        ports: list[int],
        count: int,
        workers: int,
        *,
        key: str = "",
        secret: str = "",
        prefix: str = "",
        concurrency: int = 50,
    ) -> Fleet:
        prefix = prefix or uuid.uuid4().hex[:8]
        processes = []
        share = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
        first = 0
        for i, n in enumerate(share):
            config = {
                "ports": ports,
                "first": first,
                "count": n,
                "prefix": prefix,
                "key": key,
                "secret": secret,
                "source": f"127.0.0.{2 + i % 250}",
                "concurrency": max(1, concurrency // workers),
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
        return cls(processes)

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
            if p.poll() is None:
                try:
                    assert p.stdin is not None
                    p.stdin.write("quit\n")
                    p.stdin.flush()
                except OSError:
                    pass
        for p in self.processes:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def merged(answers: list[dict[str, Any]], key: str) -> list[float]:
    return [v for a in answers for v in a.get(key, [])]


def summed(answers: list[dict[str, Any]], key: str) -> int:
    return sum(int(a.get(key, 0)) for a in answers)


# --- inside a client process -----------------------------------------------------


class Clients:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.sockets: list[Any] = []
        self.readers: list[asyncio.Task[None]] = []  # held, so that no reader is collected mid-run
        self.join_latencies: list[float] = []
        self.heartbeat_latencies: list[float] = []
        self.failed = 0
        self.errors: list[str] = []
        self.dropped = 0
        self.pushes: dict[str, list[float]] = {}
        # slot -> (ref, future) of the measured heartbeat it waits for
        self.waiters: dict[int, tuple[str, asyncio.Future[list[Any]]]] = {}
        # While no measured heartbeats run, every joined socket still sends one
        # every KEEPALIVE_SECONDS, as nerves_hub_link does: a large fleet takes
        # longer to connect than the hub's idle timeout, and the first sockets
        # would otherwise be closed as idle before the measurement starts.
        self.measuring = False

    async def open_one(self, index: int) -> None:
        from websockets.asyncio.client import connect

        from devicelink.nh1 import sign_headers

        ports = self.config["ports"]
        port = ports[index % len(ports)]
        identifier = f"{self.config['prefix']}-{index}"
        headers = (
            sign_headers(self.config["key"], self.config["secret"], identifier, int(time.time()))
            if self.config["key"]
            else []
        )
        start = time.perf_counter()
        try:
            ws = await connect(
                f"ws://127.0.0.1:{port}/device-socket/websocket?vsn=2.0.0",
                additional_headers=headers,
                ping_interval=None,
                max_size=None,
                open_timeout=60,
                close_timeout=5,
                compression=None,
                local_addr=(self.config["source"], 0),
            )
            await ws.send(json.dumps(["1", "1", "device", "phx_join", JOIN_PARAMS]))
            while True:
                reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if reply[1] == "1":
                    break
            if reply[4].get("status") != "ok":
                raise RuntimeError(reply)
        except Exception as exc:
            self.failed += 1
            if len(self.errors) < 3:
                self.errors.append(repr(exc)[:300])
            return
        self.join_latencies.append(time.perf_counter() - start)
        slot = len(self.sockets)
        self.sockets.append(ws)
        self.readers.append(asyncio.get_running_loop().create_task(self.read(slot, ws)))

    async def read(self, slot: int, ws: Any) -> None:
        import websockets

        try:
            async for raw in ws:
                message = json.loads(raw)
                if message[2] == "phoenix":
                    waiter = self.waiters.get(slot)
                    if waiter is not None and waiter[0] == message[1]:
                        del self.waiters[slot]
                        if not waiter[1].done():
                            waiter[1].set_result(message)
                elif message[1] is None and message[3] != "phx_reply":
                    self.pushes.setdefault(message[3], []).append(time.time())
        except websockets.ConnectionClosed:
            pass
        if self.sockets[slot] is ws:
            self.sockets[slot] = None
            self.dropped += 1

    async def open_all(self) -> None:
        semaphore = asyncio.Semaphore(self.config["concurrency"])

        async def one(i: int) -> None:
            async with semaphore:
                await self.open_one(i)

        first, count = self.config["first"], self.config["count"]
        await asyncio.gather(*(one(first + i) for i in range(count)))

    async def heartbeat(self, slot: int, ref: int) -> None:
        ws = self.sockets[slot]
        if ws is None:
            return
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiters[slot] = (str(ref), future)
        start = time.perf_counter()
        try:
            await ws.send(json.dumps([None, str(ref), "phoenix", "heartbeat", {}]))
            await asyncio.wait_for(future, 30)
            self.heartbeat_latencies.append(time.perf_counter() - start)
        except Exception:
            self.failed += 1

    async def hold(self, seconds: float, interval: float) -> None:
        """Every socket heartbeats every `interval` s, spread evenly over it."""
        self.measuring = True
        try:
            await self._hold(seconds, interval)
        finally:
            self.measuring = False

    async def keepalive(self) -> None:
        """An unmeasured heartbeat per joined socket every KEEPALIVE_SECONDS,
        spread over the period, whenever `hold` is not heartbeating."""
        ref = 0
        while True:
            slots = len(self.sockets)
            gap = KEEPALIVE_SECONDS / max(1, slots)
            for slot in range(slots):
                ws = self.sockets[slot]
                if ws is not None and not self.measuring:
                    ref += 1
                    with contextlib.suppress(Exception):
                        await ws.send(json.dumps([None, f"k{ref}", "phoenix", "heartbeat", {}]))
                await asyncio.sleep(gap)
            if not slots:
                await asyncio.sleep(1)

    async def _hold(self, seconds: float, interval: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        ref = 1
        tasks: set[asyncio.Task[None]] = set()
        slots = len(self.sockets)
        gap = interval / max(1, slots)
        while loop.time() < end:
            round_start = loop.time()
            for slot in range(slots):
                if loop.time() >= end:
                    break
                ref += 1
                task = loop.create_task(self.heartbeat(slot, ref))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                target = round_start + (slot + 1) * gap
                delay = target - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
        if tasks:
            await asyncio.gather(*tasks)

    def answer(self, **extra: Any) -> None:
        record = {
            "open": sum(1 for s in self.sockets if s is not None),
            "failed": self.failed,
            "errors": self.errors,
            "dropped": self.dropped,
            "join_latencies": self.join_latencies,
            "heartbeat_latencies": self.heartbeat_latencies,
            **extra,
        }
        self.join_latencies, self.heartbeat_latencies = [], []
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        keepalive = loop.create_task(self.keepalive())
        try:
            await self._commands(reader)
        finally:
            keepalive.cancel()

    async def _commands(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        while True:
            line = (await reader.readline()).decode().split()
            if not line or line[0] == "quit":
                break
            if line[0] == "open":
                await self.open_all()
                self.answer()
            elif line[0] == "hold":
                await self.hold(float(line[1]), float(line[2]))
                self.answer()
            elif line[0] == "pushes":
                # Wait up to line[2] s for every open socket to have received event line[1].
                event, deadline = line[1], loop.time() + float(line[2])
                # Polling: the arrival times are taken by the readers, not here.
                while len(self.pushes.get(event, [])) < self.open_count() and loop.time() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                self.answer(push_times=self.pushes.pop(event, []))
            elif line[0] == "close":
                await asyncio.gather(*(s.close() for s in self.sockets if s is not None), return_exceptions=True)
                self.sockets = [None] * len(self.sockets)
                self.answer()

    def open_count(self) -> int:
        return sum(1 for s in self.sockets if s is not None)


# --- the baseline server -------------------------------------------------------------


async def baseline_server(port: int) -> None:
    """A bare websockets server that answers Phoenix frames: the least a Python
    server holding these sockets can do (no auth, no database, no channel layer)."""
    import websockets
    from websockets.asyncio.server import serve

    devices: set[Any] = set()

    async def handler(ws: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await answer(ws)

    async def answer(ws: Any) -> None:
        async for raw in ws:
            try:
                join_ref, ref, topic, event, payload = json.loads(raw)
            except ValueError:
                await ws.close(1008)
                return
            if event == "bench:broadcast":
                # M4's control message: one frame to every device socket.
                websockets.broadcast(devices, json.dumps([None, None, "device", payload["event"], {"n": 1}]))
            elif event == "phx_join":
                devices.add(ws)
            await ws.send(json.dumps([join_ref, ref, topic, "phx_reply", {"status": "ok", "response": {}}]))
        devices.discard(ws)

    async with serve(
        handler, "127.0.0.1", port, ping_interval=None, max_size=262_144, compression=None, backlog=4096
    ) as server:
        await server.serve_forever()


# --- the server-stack floor ------------------------------------------------------


def floor_application() -> Any:
    """The hub's server stack without the hub: daphne or uvicorn (started like
    `nerveshub.serve` starts them, daphne with its extensions) and a Channels consumer that
    verifies NH1 headers against the one product secret it was given, accepts,
    and answers the `device` join and heartbeats as the hub does, with no
    database, no dispatcher and no channel layer. What a hub process costs above
    this is what the hub's own code costs (M3's second baseline)."""
    from channels.consumer import AsyncConsumer
    from channels.exceptions import StopConsumer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.urls import re_path

    from devicelink import nh1, protocol
    from devicelink.auth import NH_HEADERS, scope_headers

    key, secret = os.environ["FLOOR_KEY"], os.environ["FLOOR_SECRET"]

    class FloorConsumer(AsyncConsumer):  # type: ignore[misc]
        channel_layer_alias = "floor-has-none"  # no per-socket channel, as the hub's device socket

        async def websocket_connect(self, message: dict[str, Any]) -> None:
            headers = scope_headers(self.scope)
            alg, got_key, signed, signature = (headers.get(name, "") for name in NH_HEADERS)
            try:
                if got_key != key:
                    raise nh1.NH1Error("unknown key")
                parsed = nh1.parse_alg(alg)
                nh1.parse_time(signed)
                derived = nh1.derive_key(
                    secret, nh1.build_salt(alg, key, signed), parsed.digest, parsed.iterations, parsed.length
                )
                nh1.decode_payload(nh1.verify_token(signature, derived))
            except nh1.NH1Error:
                await self.send({"type": "websocket.close"})
                return
            await self.send({"type": "websocket.accept"})

        async def websocket_receive(self, message: dict[str, Any]) -> None:
            frame = protocol.JsonCodec.decode(message.get("text"), message.get("bytes"))
            if frame.event == "phx_join":
                protocol.DeviceJoin.model_validate(frame.payload if isinstance(frame.payload, dict) else {})
            answer = protocol.reply(frame.join_ref, frame.ref, frame.topic, "ok", {})
            await self.send(protocol.JsonCodec.encode(answer))

        async def websocket_disconnect(self, message: dict[str, Any]) -> None:
            raise StopConsumer

    return ProtocolTypeRouter(
        {"websocket": URLRouter([re_path(r"^(?:device-socket|socket)/websocket/?$", FloorConsumer.as_asgi())])}
    )


def floor_server(port: int, server: str = "daphne") -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nerveshub.settings")
    import django

    django.setup()
    if server == "uvicorn":
        from nerveshub.serve import run_uvicorn

        run_uvicorn("127.0.0.1", port, 4096, app=floor_application())
        return
    from daphne.cli import CommandLineInterface

    from devicelink.daphne_ext import install
    from nerveshub.lib import daphne_http
    from nerveshub.serve import daphne_args

    install()
    daphne_http.install()
    args = daphne_args("127.0.0.1", port, 4096)
    args[-1] = "common:floor"  # this module, imported by daphne from bench/
    CommandLineInterface().run(args)


def profiled_hub(out: str, argv: list[str]) -> None:
    """`nerveshub.serve` with cProfile on every thread (the event loop's and the
    device database threads), timed in each thread's CPU time; the merged
    statistics go to `out` when the process stops (SIGTERM). cProfile slows the process down: a profiled run says where
    the time goes, not how fast the hub is."""
    import cProfile
    import signal
    import threading

    profiles: list[cProfile.Profile] = []

    def start_thread_profile(frame: Any, event: str, arg: Any) -> None:
        # Runs once per new thread: the thread's own profiler replaces this hook.
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()

    # Each thread's own CPU time: a thread waiting for the GIL, a lock or the
    # network is not charged, so the figures add up to the process's CPU.
    threading.setprofile(start_thread_profile)
    main_profile = cProfile.Profile(time.thread_time)
    profiles.append(main_profile)
    from nerveshub import serve

    # daphne stops its reactor on SIGTERM and returns here.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    main_profile.enable()
    try:
        serve.main(argv)
    except KeyboardInterrupt:
        pass
    finally:
        main_profile.disable()
        import pstats

        stats = pstats.Stats(main_profile)
        for profile in profiles[1:]:
            with contextlib.suppress(TypeError):
                stats.add(profile)
        stats.dump_stats(out)


def __getattr__(name: str) -> Any:
    # `common:floor` for daphne: built on first access, after Django is set up.
    if name == "floor":
        return floor_application()
    raise AttributeError(name)


def _main() -> None:
    raise_nofile()
    if sys.argv[1] == "baseline":
        asyncio.run(baseline_server(int(sys.argv[3])))
    elif sys.argv[1] == "profiled":
        profiled_hub(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "floor":
        floor_server(int(sys.argv[3]), *sys.argv[4:5])
    elif sys.argv[1] == "clients":
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nerveshub.settings")
        asyncio.run(Clients(json.loads(sys.argv[2])).main())


def describe(values: list[float]) -> str:
    if not values:
        return "none"
    return (
        f"median {statistics.median(values) * 1000:.1f} ms, p99 {percentile(values, 0.99) * 1000:.1f} ms, "
        f"max {max(values) * 1000:.1f} ms"
    )


def chunks(n: int, size: int) -> Iterator[int]:
    while n > 0:
        yield min(n, size)
        n -= size


if __name__ == "__main__":
    _main()
