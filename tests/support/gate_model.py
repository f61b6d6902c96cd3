"""A model-level simulation of a rollout under the canary-versus-control gate
(deployments/gate.py): no database, no sockets, simulated minutes. It runs
the gate's own statistics (`gate.compare`) on cohorts built the way the hub
builds them, so the figures it gives (time to pause, devices that got a bad
firmware, false pauses of healthy rollouts) are the gate's, fast enough to
repeat a rollout many times. `bench/rollout_sim.py --gate` runs it.

The fleet: every device online, `concurrency` slots, an update takes 5 to 15
minutes, then the device boots the new firmware (its slot is free: soaking
holds none) and soaks `soak` minutes. A device of a bad firmware auto-reverts
with probability `revert` at a uniform moment of its soak; a healthy firmware
reverts at the `baseline` rate. Every device reconnects as a Poisson process
(`reconnects_per_hour`), raises alarms as one (`alarms_per_hour`) and reports
a metric (its own level, N(50, 5), plus N(0, 2) noise per report every 5
minutes), the same on both firmwares: only the reverts tell the firmwares
apart. The gate is evaluated every `interval` minutes with the hub's defaults
(margin 5, at least 20 devices per cohort, alpha 0.001, the metric on). The
circuit breaker at its defaults (20 % of finished + in-flight devices, at
least 10 finished) is judged beside it, for comparison only: it stops nothing
in the model.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field

from deployments.gate import Cohort, Rules, compare


@dataclass
class ModelConfig:
    devices: int = 2000
    concurrency: int = 50
    soak: float = 30.0  # minutes
    revert: float = 0.2  # share of devices a bad firmware auto-reverts
    baseline: float = 0.005  # share a healthy firmware auto-reverts
    reconnects_per_hour: float = 0.2
    alarms_per_hour: float = 0.02
    interval: float = 1.0  # minutes between gate evaluations
    report_every: float = 5.0  # minutes between health reports
    rules: Rules = field(default_factory=lambda: Rules(metric="cpu_temp"))


@dataclass
class RunResult:
    paused_at: float | None  # minutes since the start, None: never paused
    updated_at_pause: int  # devices that had been sent the firmware by then
    reverted_at_pause: int
    breaker_at: float | None
    finished_at: float  # minutes: every device succeeded or reverted, or the pause
    reason: str = ""


def _events(rng: random.Random, per_hour: float, horizon: float) -> list[float]:
    """Event times (minutes) of a Poisson process up to `horizon`."""
    times, t = [], 0.0
    rate = per_hour / 60
    while rate > 0:
        t += rng.expovariate(rate)
        if t > horizon:
            break
        times.append(t)
    return times


def _count(times: list[float], start: float, end: float) -> int:
    return bisect.bisect_right(times, end) - bisect.bisect_left(times, start)


def run(config: ModelConfig, *, bad: bool, seed: int) -> RunResult:
    rng = random.Random(seed)
    n = config.devices
    horizon = n / config.concurrency * 15 + config.soak + 60
    reconnects = [_events(rng, config.reconnects_per_hour, horizon) for _ in range(n)]
    alarms = [_events(rng, config.alarms_per_hour, horizon) for _ in range(n)]
    level = [rng.gauss(50, 5) for _ in range(n)]
    revert_share = config.revert if bad else config.baseline
    since = [0.0] * n  # the device's gate window opens here
    canary = [False] * n
    done_at: dict[int, float] = {}  # updating: when it boots
    reverted: set[int] = set()
    revert_at: dict[int, float] = {}
    soak_end: dict[int, float] = {}
    finished: set[int] = set()
    queue = list(range(n))
    rng.shuffle(queue)
    sent = 0
    t = 0.0
    breaker_at: float | None = None
    while True:
        # boots, reverts, soak ends
        for device, at in list(done_at.items()):
            if at <= t:
                del done_at[device]
                canary[device], since[device] = True, at
                if rng.random() < revert_share:
                    revert_at[device] = at + rng.uniform(0, config.soak)
                else:
                    soak_end[device] = at + config.soak
        for device, at in list(revert_at.items()):
            if at <= t:
                del revert_at[device]
                reverted.add(device)
                finished.add(device)
        for device, at in list(soak_end.items()):
            if at <= t:
                del soak_end[device]
                finished.add(device)
        # claims
        while queue and len(done_at) < config.concurrency:
            done_at[queue.pop()] = t + rng.uniform(5, 15)
            sent += 1
        # the breaker, for comparison
        inflight = len(done_at) + len(revert_at) + len(soak_end)
        if (
            breaker_at is None
            and len(finished) >= 10
            and reverted
            and len(reverted) * 100 >= 20 * (len(finished) + inflight)
        ):
            breaker_at = t
        # the gate
        cohorts = {True: Cohort(), False: Cohort()}
        sums = {True: [0.0, 0.0], False: [0.0, 0.0]}
        for device in range(n):
            cohort = cohorts[canary[device]]
            start = since[device]
            cohort.devices += 1
            cohort.device_hours += (t - start) / 60
            cohort.reconnects += _count(reconnects[device], start, t)
            cohort.auto_reverted += device in reverted
            cohort.alarmed += _count(alarms[device], start, t) > 0
            reports = int((t - start) // config.report_every)
            if reports:
                mean = level[device] + rng.gauss(0, 2 / math.sqrt(reports))
                cohort.metric_devices += 1
                sums[canary[device]][0] += mean
                sums[canary[device]][1] += mean * mean
        for key, cohort in cohorts.items():
            m = cohort.metric_devices
            if m:
                cohort.metric_mean = sums[key][0] / m
                cohort.metric_var = max(sums[key][1] - m * cohort.metric_mean**2, 0.0) / (m - 1) if m > 1 else 0.0
        findings = compare(cohorts[True], cohorts[False], config.rules)
        worse = [f for f in findings if f.worse]
        if worse:
            return RunResult(t, sent, len(reverted), breaker_at, t, worse[0].signal)
        if len(finished) == n:
            return RunResult(None, sent, len(reverted), breaker_at, t)
        t += config.interval


@dataclass
class Summary:
    runs: int
    paused: int
    pause_minutes: list[float]
    updated_at_pause: list[int]
    reverted_at_pause: list[int]
    breaker_minutes: list[float]
    rollout_minutes: list[float]
    reasons: dict[str, int]


def summarise(config: ModelConfig, *, bad: bool, runs: int, seed: int = 1) -> Summary:
    results = [run(config, bad=bad, seed=seed + i) for i in range(runs)]
    paused = [r for r in results if r.paused_at is not None]
    reasons: dict[str, int] = {}
    for r in paused:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    return Summary(
        runs=runs,
        paused=len(paused),
        pause_minutes=[r.paused_at for r in paused if r.paused_at is not None],
        updated_at_pause=[r.updated_at_pause for r in paused],
        reverted_at_pause=[r.reverted_at_pause for r in paused],
        breaker_minutes=[r.breaker_at for r in results if r.breaker_at is not None],
        rollout_minutes=[r.finished_at for r in results if r.paused_at is None],
        reasons=reasons,
    )
