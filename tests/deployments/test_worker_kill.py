"""A Celery worker killed with SIGKILL in the middle of a rollout: its claim
transaction rolls back or has committed, never half; a second worker (woken by
device events and the beat backstop) finishes the rollout, repeats a push only
to a device that never acknowledged one, and never exceeds the slots."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings

from deployments.models import DeviceUpdate, UpdateStatus
from tests.support.hub import HubProcess, database_url_for_children
from tests.support.rollout_sim import (
    Cluster,
    SimConfig,
    create_scenario,
    relax_current_database,
    run_simulation,
    server_env,
)

pytestmark = pytest.mark.services


def test_a_worker_killed_mid_rollout_is_replaced_without_double_claims(
    live_hub: Callable[..., HubProcess], tmp_path: Path
) -> None:
    # given: two hubs, one worker, beat every 5 s, 80 devices, 8 slots
    # The hub and worker processes connect after this: their commits do not
    # wait for this machine's slow fsync (see relax_commits).
    relax_current_database()
    env = server_env(database_url_for_children(), os.environ["REDIS_URL"], str(settings.DATA_DIR), 5)
    hubs = [live_hub() for _ in range(2)]
    cluster = Cluster(tmp_path, env)
    first = cluster.start_worker("first")
    cluster.wait_worker_ready(first)
    cluster.start_beat()
    config = SimConfig(devices=80, concurrency=8, update_time=0.6, connect_rate=10, timeout=90)
    scenario = create_scenario(config)
    claimed_at_kill: list[int] = []

    def kill_when_a_third_is_claimed(elapsed: float) -> None:
        if claimed_at_kill:
            return
        claimed = DeviceUpdate.objects.filter(deployment_id=scenario.deployment_id).count()
        if claimed >= config.devices // 3:
            # when: SIGKILL to the worker's process group, then a new worker
            cluster.kill(first)
            claimed_at_kill.append(claimed)
            cluster.start_worker("second")

    result = None
    try:
        result = run_simulation(config, scenario, [h.ws_url for h in hubs], tmp_path, kill_when_a_third_is_claimed)
    finally:
        cluster.stop()
        # What a failure needs, last (a report shows the end of the output):
        # the processes' notable lines, then the rollout's state.
        print(notable_lines(cluster.logs(tail=200_000), *(h.log() for h in hubs)))
        print(rollout_state(scenario.deployment_id, claimed_at_kill))
        print(result.summary() if result is not None else "the simulation raised")
    # then: the kill happened mid-rollout and the rollout still finished
    assert claimed_at_kill and claimed_at_kill[0] < config.devices, result.summary()
    assert result.problems == [], result.summary()
    assert result.succeeded == config.devices
    # never more in flight than the slots, one attempt per device, one push
    # per connection (a repeat only reaches a device that never got the first)
    assert result.max_inflight <= config.concurrency
    rows = list(DeviceUpdate.objects.filter(deployment_id=scenario.deployment_id).values_list("device_id", "status"))
    assert len(rows) == len({device for device, _ in rows}) == config.devices
    assert {status for _, status in rows} == {UpdateStatus.SUCCEEDED}
    assert result.duplicate_pushes == 0


def notable_lines(*logs: str) -> str:
    """Everything but the per-task and per-request chatter."""
    chatter = (" received", "succeeded in", "WSCONNECT", "WSDISCONNECT", "WSCONNECTING", '"GET ', '"POST ')
    lines = [line for log in logs for line in log.splitlines() if not any(c in line for c in chatter)]
    return "\n".join(lines[-150:])


def rollout_state(deployment_id: int, claimed_at_kill: list[int]) -> str:
    updates = DeviceUpdate.objects.filter(deployment_id=deployment_id)
    by_status = Counter(updates.values_list("status", flat=True))
    unfinished = list(
        updates.exclude(status=UpdateStatus.SUCCEEDED).values_list(
            "device__identifier", "status", "pushes", "pushed_channel", "device__connection_status"
        )[:20]
    )
    return f"killed at {claimed_at_kill} claims; updates by status {dict(by_status)}; unfinished {unfinished}"
