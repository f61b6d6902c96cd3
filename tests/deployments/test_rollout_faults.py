"""A rollout lives through its services failing under it: Redis restarted (the
channel layer and the Celery broker lose everything they held) and PostgreSQL
unreachable for a few seconds, both while a third of the fleet is claimed.

What the devices see: their sockets stay open through a Redis restart; while
the database is gone new connects get 503 and a report crashes the `device`
topic (phx_error), which the device rejoins. What the operator sees: the
deployment's rows, which the rollout resumes from. In both cases the rollout
finishes without exceeding its slots and without a second push to a socket."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings

from deployments.models import DeviceUpdate, UpdateStatus
from tests.deployments.test_worker_kill import notable_lines, rollout_state
from tests.support.faults import PrivateRedis, url_through
from tests.support.hub import ROOT, HubProcess, database_url_for_children
from tests.support.rollout_sim import (
    Cluster,
    SimConfig,
    SimResult,
    create_scenario,
    relax_current_database,
    run_simulation,
    server_env,
)
from tests.support.tcp_cut import TcpCut

pytestmark = pytest.mark.services

CONFIG = SimConfig(devices=60, concurrency=8, update_time=0.6, connect_rate=10, timeout=180)


class Outage:
    """Takes a service away once a third of the fleet is claimed, and gives it
    back `seconds` later; called every poll of the simulation."""

    def __init__(self, deployment_id: int, stop: Callable[[], None], start: Callable[[], None], seconds: float) -> None:
        self.deployment_id, self.stop, self.start, self.seconds = deployment_id, stop, start, seconds
        self.began: float | None = None
        self.claimed_at_start: list[int] = []
        self.over = False

    def __call__(self, elapsed: float) -> None:
        if self.over:
            return
        if self.began is None:
            claimed = DeviceUpdate.objects.filter(deployment_id=self.deployment_id).count()
            if claimed >= CONFIG.devices // 3:
                self.stop()
                self.began = time.monotonic()
                self.claimed_at_start.append(claimed)
        elif time.monotonic() - self.began >= self.seconds:
            self.start()
            self.over = True


def _assert_the_rollout_finished(result: SimResult, outage: Outage, deployment_id: int) -> None:
    assert outage.over and outage.claimed_at_start[0] < CONFIG.devices, result.summary()
    assert result.problems == [], result.summary()
    assert result.succeeded == CONFIG.devices, result.summary()
    assert result.max_inflight <= CONFIG.concurrency
    rows = list(DeviceUpdate.objects.filter(deployment_id=deployment_id).values_list("device_id", "status"))
    assert len(rows) == len({device for device, _ in rows}) == CONFIG.devices
    assert {status for _, status in rows} == {UpdateStatus.SUCCEEDED}
    assert result.duplicate_pushes == 0


def _run(
    live_hub: Callable[..., HubProcess],
    tmp_path: Path,
    env: dict[str, str],
    make_outage: Callable[[int], Outage],
    resume: Callable[[int], None] | None = None,
) -> tuple[SimResult | None, Outage, int]:
    relax_current_database()
    hubs = [live_hub({"DATABASE_URL": env["DATABASE_URL"], "REDIS_URL": env["REDIS_URL"]}) for _ in range(2)]
    cluster = Cluster(tmp_path, env)
    worker = cluster.start_worker("worker")
    cluster.wait_worker_ready(worker)
    cluster.start_beat()
    scenario = create_scenario(CONFIG)
    outage = make_outage(scenario.deployment_id)
    result = None
    try:
        result = run_simulation(CONFIG, scenario, [h.ws_url for h in hubs], tmp_path, outage, resume)
    finally:
        cluster.stop()
        print(notable_lines(cluster.logs(tail=200_000), *(h.log() for h in hubs)))
        print(rollout_state(scenario.deployment_id, outage.claimed_at_start))
        print(result.summary() if result is not None else "the simulation raised")
    return result, outage, scenario.deployment_id


def test_a_rollout_survives_a_redis_restart(
    live_hub: Callable[..., HubProcess], tmp_path: Path, private_redis: PrivateRedis
) -> None:
    # given: two hubs, a worker and beat (backstop every 5 s) on a Redis of the
    # test's own
    env = server_env(database_url_for_children(), private_redis.url, str(settings.DATA_DIR), 5)

    def resume(deployment_id: int) -> None:
        # The operator's resume, from a process on the cluster's Redis (this
        # one's Celery app and channel layer are on the shared one).
        code = (
            "import django; django.setup()\n"
            "from deployments import rollout; from deployments.models import Deployment\n"
            f"assert rollout.resume('operator', Deployment.objects.get(pk={deployment_id}))\n"
        )
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)

    def outage(deployment_id: int) -> Outage:
        # when: Redis is killed a third of the way through, and started again
        # empty 3 s later (queued tasks, wake-up marks and messages all lost)
        return Outage(deployment_id, private_redis.kill, private_redis.start, 3)

    result, happened, deployment_id = _run(live_hub, tmp_path, env, outage, resume)
    # then
    assert result is not None
    _assert_the_rollout_finished(result, happened, deployment_id)
    # the devices' sockets stayed open through it: one connection per device
    # and one per update (the reboot), no connect failed
    assert result.connect_errors == 0, result.summary()


def test_a_rollout_survives_the_database_going_away(
    live_hub: Callable[..., HubProcess], tmp_path: Path, db_cut: TcpCut
) -> None:
    # given: two hubs, a worker and beat whose database connections all go
    # through a forwarder that can be cut
    env = server_env(url_through(db_cut), os.environ["REDIS_URL"], str(settings.DATA_DIR), 5)

    def outage(deployment_id: int) -> Outage:
        # when: every database connection of the cluster is reset a third of
        # the way through, and new ones refused for 4 s
        return Outage(deployment_id, db_cut.interrupt, db_cut.restore, 4)

    result, happened, deployment_id = _run(live_hub, tmp_path, env, outage)
    # then
    assert result is not None
    _assert_the_rollout_finished(result, happened, deployment_id)
