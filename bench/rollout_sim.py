"""Rollout simulation: simulated devices over real websockets, real hub
processes, real Celery workers, and a sampler that watches the slots.

    python bench/rollout_sim.py [--devices 1000] [--concurrency 50] [--update-time 1]
                                [--fail 0.0] [--hubs 2] [--workers 1] [--smoke]
                                [--windows]
    python bench/rollout_sim.py --gate [--devices 2000] [--concurrency 50] [--runs 20]
                                [--revert 0.2] [--soak 30]

`--gate` runs the model-level simulation of the canary-versus-control health
gate instead (tests/support/gate_model.py: no database, simulated minutes):
`--runs` healthy rollouts (the false pause rate) and as many of a bad firmware
that auto-reverts on `--revert` of the devices (time until the gate pauses,
devices that got the firmware by then). `--smoke` runs a small one of it
first, then the socket simulation below.

Needs PostgreSQL (DATABASE_URL) and Redis (REDIS_URL, a db number of its own is
best). The script creates a scratch database next to DATABASE_URL's, migrates it,
and starts `python -m nerveshub.serve` (one per --hubs), `celery -A nerveshub
worker` (one per --workers) and `celery -A nerveshub beat` on it.

Each simulated device authenticates with NH1 headers signed by a product key (so
it registers itself on first connect), joins `device` with its firmware metadata,
and on an `update` push reports received, started, progress and completed (or
failed, for a deterministic --fail share of the devices), disconnects, waits the
update time and reconnects running the target firmware (or its old one). The
deployment starts paused; devices connect and join; the clock starts at the
resume. A sampler thread counts the deployment's in-flight DeviceUpdate rows
every 50 ms.

Checks (exit status 1 when one fails): the in-flight count never exceeds
concurrent_updates; no device got a second push within one connection; no push
reached a device after it entered the penalty box; with failures the breaker
paused the deployment with a reason and nothing was claimed after the pause.

Ideal time: devices / concurrent_updates x update time. The ratio measured /
ideal is the orchestrator's overhead (plus the devices' own reconnect).

With --windows the deployment gets two one-minute maintenance windows (the
next whole minute at least 15 s away, and the minute two minutes later; UTC,
on the real clock, so a run waits up to a minute for the first): the run
checks that every claim was made inside a window, and reports the claims per
window, the attempts that were under way when a window closed (they carry
on), the delay from a window's opening to its first claim (the backstop's
period bounds it) and the time from the first opening to the last success.
The --smoke run leaves it out: it would wait for the clock.

Devices are spread over client processes (asyncio, --per-process sockets each)
and source addresses 127.0.0.x, so that 10,000 sockets fit one machine. The
simulation itself lives in tests/support/rollout_sim.py, which the tests in
tests/deployments/ run too; this script gives it a scratch database and its
own processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.hub import free_port  # noqa: E402 (after the path setup above)
from tests.support.rollout_sim import (  # noqa: E402
    Cluster,
    FleetNotReady,
    SimConfig,
    create_scenario,
    raise_nofile,
    relax_commits,
    run_simulation,
    server_env,
)

# --- Standalone run -------------------------------------------------------------------


def scratch_database(database_url: str, name: str, *, synchronous_commit: bool = False) -> str:
    """Create (afresh) a database `name` on DATABASE_URL's server; return its URL."""
    import psycopg

    base, _, _ = database_url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
        if not synchronous_commit:
            relax_commits(conn, name)
    return f"{base}/{name}"


def drop_database(database_url: str, name: str) -> None:
    import psycopg

    base, _, _ = database_url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def window_plan(now: datetime) -> list[tuple[datetime, datetime]]:
    """Two one-minute windows: the next whole minute at least 15 s away, and
    the minute two minutes after it (a closed minute between them)."""
    first = (now + timedelta(seconds=75)).replace(second=0, microsecond=0)
    return [(first, first + timedelta(minutes=1)), (first + timedelta(minutes=2), first + timedelta(minutes=3))]


def set_windows(deployment_id: int, plan: list[tuple[datetime, datetime]]) -> list[str]:
    from deployments.models import Deployment

    lines = [f"daily {opens:%H:%M}-{closes:%H:%M} UTC" for opens, closes in plan]
    Deployment.objects.filter(pk=deployment_id).update(windows=lines)
    return lines


def window_figures(deployment_id: int, plan: list[tuple[datetime, datetime]]) -> dict[str, Any]:
    """Claims by window (and outside any: must be none), attempts under way
    at each close, each window's first-claim delay, and the time from the
    first opening to the last success."""
    from deployments.models import DeviceUpdate, UpdateStatus

    rows = list(
        DeviceUpdate.objects.filter(deployment_id=deployment_id).values_list("created_at", "finished_at", "status")
    )
    claims = [created for created, _, _ in rows]
    per_window = [sum(opens <= c < closes for c in claims) for opens, closes in plan]
    outside = len(claims) - sum(per_window)
    carried = [
        sum(created < closes and (finished is None or finished > closes) for created, finished, _ in rows)
        for _, closes in plan
    ]
    first_claim = [
        round((min(c for c in claims if opens <= c < closes) - opens).total_seconds(), 1)
        if any(opens <= c < closes for c in claims)
        else None
        for opens, closes in plan
    ]
    finished = [f for _, f, status in rows if status == UpdateStatus.SUCCEEDED and f is not None]
    return {
        "windows": [f"{opens:%H:%M}-{closes:%H:%M} UTC" for opens, closes in plan],
        "claims_per_window": per_window,
        "claims_outside_windows": outside,
        "inflight_at_close": carried,
        "first_claim_after_opening_s": first_claim,
        "complete_after_first_opening_s": round((max(finished) - plan[0][0]).total_seconds(), 1) if finished else None,
    }


def gate_simulation(devices: int, concurrency: int, runs: int, revert: float, soak: float) -> dict[str, object]:
    """The gate model's figures over `runs` healthy and `runs` bad rollouts."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nerveshub.settings")
    import django

    django.setup()
    from tests.support.gate_model import ModelConfig, summarise

    config = ModelConfig(devices=devices, concurrency=concurrency, revert=revert, soak=soak)
    started = time.perf_counter()
    healthy = summarise(config, bad=False, runs=runs, seed=1)
    bad = summarise(config, bad=True, runs=runs, seed=1001)

    def spread(values: list[float] | list[int]) -> str:
        if not values:
            return "—"
        ordered = sorted(values)
        return f"median {statistics.median(ordered):g} (min {ordered[0]:g}, max {ordered[-1]:g})"

    print(f"gate model: {devices} devices, {concurrency} slots, soak {soak:g} min, {runs} runs each")
    print(
        f"  healthy: {healthy.paused}/{runs} paused (false pause rate {healthy.paused / runs:.0%}), {healthy.reasons}"
    )
    print(f"    rollout minutes: {spread(healthy.rollout_minutes)}")
    print(f"  bad ({revert:.0%} auto-revert): {bad.paused}/{runs} paused, {bad.reasons}")
    print(f"    minutes until the pause: {spread(bad.pause_minutes)}")
    print(f"    devices sent the firmware by then: {spread(bad.updated_at_pause)} of {devices}")
    print(f"    of them auto-reverted by then: {spread(bad.reverted_at_pause)}")
    print(
        f"    the breaker alone (20 %, for comparison) would trip at minute: {spread(bad.breaker_minutes)}"
        f" in {len(bad.breaker_minutes)}/{runs} runs"
    )
    print(f"  model time: {time.perf_counter() - started:.1f} s")
    return {"healthy": healthy.__dict__, "bad": bad.__dict__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gate", action="store_true", help="the health gate's model-level simulation only")
    parser.add_argument("--runs", type=int, default=20, help="--gate: rollouts of each kind")
    parser.add_argument("--revert", type=float, default=0.2, help="--gate: share a bad firmware auto-reverts")
    parser.add_argument("--soak", type=float, default=30, help="--gate: soak minutes")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--update-time", type=float, default=1.0)
    parser.add_argument("--fail", type=float, default=0.0, help="share of devices whose updates fail")
    parser.add_argument("--breaker-percent", type=int, default=50)
    parser.add_argument("--breaker-min", type=int, default=10)
    parser.add_argument("--penalty-attempts", type=int, default=1)
    parser.add_argument("--hubs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--worker-concurrency", type=int, default=2)
    parser.add_argument("--per-process", type=int, default=2500, help="sockets per client process")
    parser.add_argument("--connect-rate", type=float, default=100, help="first connects per second")
    parser.add_argument("--backstop", type=int, default=5, help="ROLLOUT_BACKSTOP_SECONDS")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and logs")
    parser.add_argument(
        "--synchronous-commit", action="store_true", help="keep PostgreSQL's synchronous_commit on (see relax_commits)"
    )
    parser.add_argument("--smoke", action="store_true", help="~100 devices, < 60 s (CI)")
    parser.add_argument(
        "--windows", action="store_true", help="two one-minute maintenance windows on the real clock (waits for them)"
    )
    args = parser.parse_args(argv)
    if args.gate:
        figures = gate_simulation(args.devices, args.concurrency, args.runs, args.revert, args.soak)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return 0
    if args.smoke:
        args.devices, args.concurrency, args.update_time, args.timeout = 100, 25, 0.2, 30
        args.connect_rate = 25
        args.fail = args.fail or 0.05

    database_url, redis_url = os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL", "")
    if not database_url.startswith(("postgres://", "postgresql://")) or not redis_url:
        if args.smoke:
            gate_simulation(300, 25, 2, 0.2, 30)
        print("rollout_sim: needs DATABASE_URL (PostgreSQL) and REDIS_URL; skipped")
        return 0
    nofile = raise_nofile()
    if args.devices * 2 + 500 > nofile and args.hubs == 1:
        print(f"warning: RLIMIT_NOFILE {nofile} is tight for {args.devices} sockets")

    name = f"nh_rollout_sim_{os.getpid()}"
    url = scratch_database(database_url, name, synchronous_commit=args.synchronous_commit)
    workdir = Path(tempfile.mkdtemp(prefix="rollout-sim-"))
    data_dir = str(workdir / "data")
    env = server_env(url, redis_url, data_dir, args.backstop)
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "DATA_DIR", "ROLLOUT_BACKSTOP_SECONDS")})
    os.environ["DJANGO_SETTINGS_MODULE"] = "nerveshub.settings"
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)

    import django

    django.setup()
    if args.smoke:
        # Only now: the model imports the hub's code, which reads the settings
        # once, and they must name the scratch database set just above.
        gate_simulation(300, 25, 2, 0.2, 30)

    cluster = Cluster(workdir, env)
    code = 1
    try:
        ports = [free_port() for _ in range(args.hubs)]
        for port in ports:
            cluster.start_hub(port)
        workers = [cluster.start_worker(f"w{i}", args.worker_concurrency) for i in range(args.workers)]
        for worker in workers:
            cluster.wait_worker_ready(worker)
        cluster.start_beat()
        config = SimConfig(
            devices=args.devices,
            concurrency=args.concurrency,
            update_time=args.update_time,
            fail_fraction=args.fail,
            penalty_attempts=args.penalty_attempts,
            breaker_percent=args.breaker_percent,
            breaker_min_attempts=args.breaker_min,
            per_process=args.per_process,
            connect_rate=args.connect_rate,
            timeout=args.timeout,
        )
        scenario = create_scenario(config)
        plan: list[tuple[datetime, datetime]] = []
        if args.windows:
            plan = window_plan(datetime.now(UTC))
            print("maintenance windows:", ", ".join(set_windows(scenario.deployment_id, plan)))
            # The rollout cannot end before the second window closes.
            config.timeout = max(config.timeout, (plan[-1][1] - datetime.now(UTC)).total_seconds() + 60)
        try:
            started = time.time()
            result = run_simulation(config, scenario, [f"ws://127.0.0.1:{p}" for p in ports], workdir)
        except FleetNotReady as exc:
            if not args.smoke:
                raise
            # As below: on a loaded CI runner the join rate is a timing matter.
            print(f"note: smoke fleet not connected: {exc} (timing only)")
            return 0
        print(result.summary())
        report: dict[str, Any] = asdict(result)
        problems = result.problems
        if plan:
            figures = window_figures(scenario.deployment_id, plan)
            figures["run_started_before_first_opening_s"] = round(plan[0][0].timestamp() - started, 1)
            print("maintenance windows:", json.dumps(figures))
            report["maintenance_windows"] = figures
            if figures["claims_outside_windows"]:
                problems = [*problems, f"{figures['claims_outside_windows']} claim(s) outside the windows"]
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str))
        if args.smoke and not result.finished:
            # CI proves the machinery and the safety checks; how long a loaded
            # runner takes to finish is not a failure (the full runs measure it).
            print(f"note: smoke rollout unfinished after {args.timeout:g} s (timing only)")
            problems = [p for p in problems if not p.startswith("rollout did not finish")]
        for problem in problems:
            print("PROBLEM:", problem)
        if problems:
            print(cluster.logs())
        code = 1 if problems else 0
    finally:
        cluster.stop()
        from django.db import connections

        connections.close_all()
        if not args.keep:
            drop_database(database_url, name)
        print(f"logs: {workdir}")
    return code


if __name__ == "__main__":
    sys.exit(main())
