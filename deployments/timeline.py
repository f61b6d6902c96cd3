"""A deployment's rollout over time, for the rollout page's chart: how many
devices of its current firmware had succeeded, had failed and were updating at
each moment, read from the attempts' own timestamps (no extra bookkeeping)."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone

from deployments.models import INFLIGHT_STATUSES, Deployment, DeviceUpdate, UpdateStatus

FAILED = (UpdateStatus.FAILED, UpdateStatus.EXPIRED)


@dataclass(frozen=True)
class Timeline:
    times: list[float]  # unix seconds, oldest first
    succeeded: list[int]
    failed: list[int]
    inflight: list[int]

    def series(self) -> list[tuple[str, str, list[tuple[float, float]]]]:
        """(label, css class, points) per line, as charts.multi_line_chart takes them."""
        return [
            ("succeeded", "succeeded", list(zip(self.times, map(float, self.succeeded), strict=True))),
            ("failed", "failed", list(zip(self.times, map(float, self.failed), strict=True))),
            ("in flight", "inflight", list(zip(self.times, map(float, self.inflight), strict=True))),
        ]


def rollout_timeline(deployment: Deployment, *, points: int = 60, now: datetime | None = None) -> Timeline | None:
    """`points` evenly spaced samples from the first attempt to now; None
    before any attempt. Attempts of earlier firmware are not counted."""
    rows = list(
        DeviceUpdate.objects.filter(deployment=deployment, firmware_id=deployment.firmware_id).values_list(
            "created_at", "finished_at", "updated_at", "status"
        )
    )
    if not rows:
        return None
    end = (now or timezone.now()).timestamp()
    started = sorted(created.timestamp() for created, _, _, _ in rows)
    # An attempt out of the in-flight states has ended: when it recorded that,
    # or else at its last change. A soaking one has not ended yet.
    open_statuses = (*INFLIGHT_STATUSES, UpdateStatus.SOAKING)
    ended = [
        ((done or changed).timestamp(), status) for _, done, changed, status in rows if status not in open_statuses
    ]
    finished = sorted(at for at, _ in ended)
    succeeded = sorted(at for at, status in ended if status == UpdateStatus.SUCCEEDED)
    failed = sorted(at for at, status in ended if status in FAILED)
    begin = started[0]
    step = max(end - begin, 1.0) / max(points - 1, 1)
    times = [begin + i * step for i in range(points)]
    return Timeline(
        times=times,
        succeeded=[bisect_right(succeeded, t) for t in times],
        failed=[bisect_right(failed, t) for t in times],
        inflight=[bisect_right(started, t) - bisect_right(finished, t) for t in times],
    )
