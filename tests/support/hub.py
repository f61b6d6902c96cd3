"""The one way tests and benchmarks start a hub: `python -m nerveshub.serve`
(daphne, the production entry point) on a local port, its output in a log file,
returned once it accepts connections.

The `live_hub` fixture (tests/conftest.py), the benchmarks' `Stack`
(bench/common.py) and the rollout simulation's `Cluster`
(tests/support/rollout_sim.py) all start their hubs here; they differ only in
the environment they pass (HUB_SERVER=uvicorn among it starts uvicorn instead of
daphne: tests/devices/test_uvicorn.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def database_url_for_children() -> str:
    """DATABASE_URL naming this process's (test) database, for the processes it starts."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


@dataclass
class HubProcess:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    # How long a SIGTERM gets before SIGKILL.
    grace_seconds: float = 10.0
    # Started as a process group leader: stop and kill take its children too.
    group: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _signal(self, sig: signal.Signals) -> None:
        try:
            if self.group:
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(self.grace_seconds)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(5)


class HubLauncher(Protocol):
    """What the `live_hub` fixture is: call it (with extra environment) for another hub."""

    def __call__(self, extra_env: dict[str, str] | None = None) -> HubProcess: ...


def start_hub(
    env: Mapping[str, str],
    log_dir: Path,
    extra: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
    timeout: float = 30.0,
    grace_seconds: float = 10.0,
    group: bool = False,
    launcher: Sequence[str] | None = None,
) -> HubProcess:
    """Start a hub on `port` (a free one by default) with `env`, PUBLIC_URL
    naming it, then `extra`; its output goes to `log_dir/hub-<port>.log`
    (appended to, so a hub restarted on its port keeps one log). Raises
    RuntimeError, with the log, when it exits or does not listen in time.
    `launcher` replaces `-m nerveshub.serve` (bench/common.py's profiler wraps it)."""
    port = port or free_port()
    launcher = launcher or ("-m", "nerveshub.serve")
    log_path = log_dir / f"hub-{port}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, *launcher, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env={**env, "PUBLIC_URL": f"http://127.0.0.1:{port}", **(extra or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=group,
        )
    hub = HubProcess(port=port, process=process, log_path=log_path, grace_seconds=grace_seconds, group=group)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hub process exited early:\n{hub.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return hub
        except OSError:
            time.sleep(0.1)
    hub.stop()
    raise RuntimeError(f"hub process did not listen within {timeout:g} s:\n{hub.log()}")
