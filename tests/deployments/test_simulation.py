"""The rollout under load: simulated devices on real websockets against two
real hub processes, a real Celery worker and beat on Redis, and a sampler that
counts in-flight updates every 50 ms (tests/support/rollout_sim.py, which bench/rollout_sim.py runs at scale)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings

from deployments.models import DeviceUpdate
from tests.deployments.test_worker_kill import rollout_state
from tests.support.hub import HubProcess, database_url_for_children
from tests.support.rollout_sim import (
    Cluster,
    SimConfig,
    create_scenario,
    fails,
    relax_current_database,
    run_simulation,
    server_env,
)

pytestmark = pytest.mark.services


@pytest.fixture
def cluster(live_hub: Callable[..., HubProcess], tmp_path: Path) -> Iterator[tuple[Cluster, list[str]]]:
    """Two hub processes, one worker and beat (backstop every 5 s)."""
    import os

    # The hub and worker processes connect after this: their commits do not
    # wait for this machine's slow fsync (see relax_commits).
    relax_current_database()
    env = server_env(database_url_for_children(), os.environ["REDIS_URL"], str(settings.DATA_DIR), 5)
    hubs = [live_hub({"ROLLOUT_BACKSTOP_SECONDS": "5"}) for _ in range(2)]
    workers = Cluster(tmp_path, env)
    try:
        workers.wait_worker_ready(workers.start_worker("w0"))
        workers.start_beat()
        yield workers, [hub.ws_url for hub in hubs]
    finally:
        workers.stop()
        # Captured output: pytest shows it only when the test failed.
        print(workers.logs())


def test_a_rollout_of_100_devices_keeps_to_its_slots_and_its_penalty_box(
    cluster: tuple[Cluster, list[str]], tmp_path: Path
) -> None:
    # given: 100 connected devices, 5 % of which fail every update
    _, urls = cluster
    config = SimConfig(devices=100, concurrency=10, update_time=0.2, fail_fraction=0.05, connect_rate=10, timeout=90)
    scenario = create_scenario(config)
    failing = [i for i in scenario.identifiers if fails(i, config.fail_fraction)]
    # when
    result = run_simulation(config, scenario, urls, tmp_path)
    # then: finished, never more than 10 in flight (and the slots were used)
    assert result.problems == [], f"{result.summary()}; {rollout_state(scenario.deployment_id, [])}"
    assert result.max_inflight == config.concurrency, result.summary()
    assert result.succeeded == config.devices - len(failing)
    # every failing device was penalty-boxed after its one attempt and got
    # exactly one push; the breaker (50 % of at least 10) stayed closed
    assert result.penalty_boxed == len(failing) > 0
    assert result.pushes_after_penalty == 0
    assert not result.breaker_tripped
    assert result.duplicate_pushes == 0
    # one push per claim: a device's last report before it reconnects is never
    # lost, so no attempt is offered twice
    assert result.pushes == result.claimed, result.summary()
    assert result.repeated_pushes == 0, result.summary()
    per_device = DeviceUpdate.objects.filter(deployment_id=scenario.deployment_id).values_list("device_id", flat=True)
    assert len(per_device) == len(set(per_device)) == config.devices


def test_failures_trip_the_breaker_and_nothing_is_claimed_after_it(
    cluster: tuple[Cluster, list[str]], tmp_path: Path
) -> None:
    # given: half the fleet fails; the breaker trips at 30 % of 10 attempts
    _, urls = cluster
    config = SimConfig(
        devices=60,
        concurrency=10,
        update_time=0.2,
        fail_fraction=0.5,
        breaker_percent=30,
        breaker_min_attempts=10,
        connect_rate=10,
        timeout=60,
    )
    scenario = create_scenario(config)
    # when
    result = run_simulation(config, scenario, urls, tmp_path)
    # then: paused with its reason, the fleet only partly updated, no claim
    # after the pause and no push to a penalty-boxed device
    assert result.problems == [], result.summary()
    assert result.breaker_tripped, result.summary()
    assert "devices that finished their update failed" in result.paused_reason
    assert result.claimed_after_pause == 0
    assert result.claimed < config.devices
    assert result.penalty_boxed == result.failed_attempts > 0
    assert result.pushes_after_penalty == 0
    assert result.max_inflight <= config.concurrency
