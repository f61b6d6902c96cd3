"""The hub process's schedule of full garbage collections (nerveshub/lib/gcpolicy.py)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from nerveshub.lib import gcpolicy


class Node:
    other: object = None


@pytest.fixture
def schedule(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(gcpolicy, "CHECK_SECONDS", 0.01)
    monkeypatch.setattr(gcpolicy, "CLOSES_PER_COLLECTION", 3)
    monkeypatch.setattr(gcpolicy, "_installed", False)
    monkeypatch.setattr(gcpolicy, "_closed", 0)
    thresholds = gc.get_threshold()
    yield
    if gcpolicy._task is not None:
        gcpolicy._task.cancel()
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def old_cycle() -> weakref.ref[Node]:
    """A reference cycle in the oldest generation, unreachable: only a full collection frees it."""
    node = Node()
    node.other = Node()
    node.other.other = node
    gc.collect(1)  # survivors of the young generations move to the oldest
    return weakref.ref(node)


def test_it_collects_the_old_generation_once_enough_sockets_ended(schedule: None) -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        # given: the schedule is on
        gcpolicy.start(lambda: 0)
        taken_over = gc.get_threshold()[2] == gcpolicy._NEVER and gc.get_freeze_count() > 0
        garbage = old_cycle()
        # when: fewer sockets end than a collection waits for
        gcpolicy.socket_closed()
        gcpolicy.socket_closed()
        await asyncio.sleep(0.1)
        kept = garbage() is not None
        # when: one more ends
        gcpolicy.socket_closed()
        await asyncio.sleep(0.1)
        return taken_over, kept, garbage() is None

    taken_over, kept_before, freed_after = asyncio.run(scenario())
    # then: automatic full collections are off, the start-up heap frozen
    assert taken_over
    # and the cycle stays until the third socket ended, then goes
    assert kept_before
    assert freed_after


def test_it_collects_on_its_timer_without_any_socket_ending(schedule: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcpolicy, "FULL_COLLECTION_SECONDS", 0.05)

    async def scenario() -> bool:
        gcpolicy.start(lambda: 0)
        garbage = old_cycle()
        await asyncio.sleep(0.2)
        return garbage() is None

    assert asyncio.run(scenario())
