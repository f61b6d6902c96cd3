"""The organization pages' live updates (docs/pages.md, "Live pages").

A page opens one websocket, `/org/<slug>/live/socket`, signed in by its session
cookie (AuthMiddlewareStack) from one of the hub's own origins
(console.origin). The socket joins its organization's group, where each server
process sends the devices' changes it gathered (devices.pagefeed), and forwards
them to the browser: at most one message per LIVE_FLUSH_MS, at most
LIVE_MAX_ROWS device rows in it, the rest counted as `more`.

Access is decided at connect (an outsider's socket is refused before it is
accepted) and again on every "access changed" message to the user's group
(nerveshub.tenancy.access_events: membership, sign-out, password), and before
forwarding anything once LIVE_ACCESS_CHECK_SECONDS have passed since the last
check, and by the socket's own timer every LIVE_ACCESS_CHECK_SECONDS: a member
removed from the organization receives nothing more after that, and the
socket is closed (4003).

`counts.json` is what the pages refetch when the counts may have moved.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import HttpRequest, JsonResponse

from console.services import session_user
from deployments.models import DeviceUpdate
from devices.models import Device
from devices.pagefeed import DeviceChange, org_group
from nerveshub.tenancy.access_events import session_digest, user_access_group
from nerveshub.tenancy.models import Membership, Organization
from nerveshub.web.access import get_org_for_user, org_methods, org_slug

logger = logging.getLogger(__name__)

CLOSE_ACCESS_ENDED = 4003
GROUP_REFRESH_SECONDS = 3600
# As on the device list: counting stops here.
COUNT_CAP = 10_000


# --- access ----------------------------------------------------------------------


def org_for_live(user: Any, slug: str) -> int | None:
    """The id of the organization `slug` names among the user's own (every
    organization for a superuser, as the pages do), or None."""
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    orgs: QuerySet[Organization] = (
        Organization.objects.all() if user.is_superuser else Organization.objects.filter(memberships__user_id=user.pk)
    )
    for pk, name in orgs.values_list("pk", "name"):
        if org_slug(name) == slug:
            return int(pk)
    return None


def live_access_ended(session_key: str | None, user_id: int, org_id: int) -> str:
    """Why the user of an open page may no longer watch the organization, or ""."""
    user = session_user(session_key)
    if user is None or user.pk != user_id or not user.is_active:
        return "signed out (session ended or password changed)"
    if getattr(user, "is_superuser", False) or Membership.objects.filter(user_id=user_id, org_id=org_id).exists():
        return ""
    return "no longer a member of the organization"


# --- counts ----------------------------------------------------------------------


def _capped(queryset: QuerySet[Any]) -> tuple[int, bool]:
    count = int(queryset.order_by()[: COUNT_CAP + 1].count())
    return min(count, COUNT_CAP), count > COUNT_CAP


def counts(org: Organization) -> dict[str, int | bool]:
    """online / offline / updating (and the total) as the dashboard shows them."""
    alive = Device.objects.filter(org=org, deleted_at__isnull=True)
    total, total_more = _capped(alive)
    online, online_more = _capped(alive.online())
    updating, updating_more = _capped(
        DeviceUpdate.objects.inflight().filter(device__org=org, device__deleted_at__isnull=True)
    )
    return {
        "total": total,
        "total_more": total_more,
        "online": online,
        "online_more": online_more,
        "offline": max(0, total - online),
        "updating": updating,
        "updating_more": updating_more,
    }


@login_required(login_url="/accounts/login/")
@org_methods("GET")
def live_counts(request: HttpRequest, org: str) -> JsonResponse:
    access = get_org_for_user(request, org)
    return JsonResponse(counts(access.org))


# --- the socket --------------------------------------------------------------------


class LivePagesConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    org_id: int | None = None
    ended = False

    async def connect(self) -> None:
        user = self.scope.get("user")
        slug = str(self.scope["url_route"]["kwargs"]["org"])
        org_id = None
        if user is not None and user.is_authenticated:
            org_id = await database_sync_to_async(org_for_live)(user, slug)
        if org_id is None:
            # Closing before accepting answers the handshake with 403.
            logger.info("live pages socket refused for %s on %r", getattr(user, "pk", None), slug)
            await self.close()
            return
        self.user_id = int(user.pk)
        self.org_id = org_id
        session = self.scope.get("session")
        self.session_key: str | None = getattr(session, "session_key", None)
        self.group = org_group(org_id)
        self.access_group = user_access_group(self.user_id)
        self.interval = settings.LIVE_FLUSH_MS / 1000
        self.rows: dict[int, DeviceChange] = {}
        self.overflow: set[int] = set()
        self.more = 0
        self.deployments: set[int] = set()
        self.counts = False
        self.seen = ""
        loop = asyncio.get_running_loop()
        self.sent_at = loop.time() - self.interval
        self.checked_at = loop.time()
        self.sender: asyncio.Task[None] | None = None
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.channel_layer.group_add(self.access_group, self.channel_name)
        await self.accept()
        self.watch = loop.create_task(self._watch(), name=f"live-pages-watch-{org_id}")

    async def disconnect(self, code: int) -> None:
        if self.org_id is None:
            return
        self.watch.cancel()
        if self.sender is not None:
            self.sender.cancel()
        await self.channel_layer.group_discard(self.group, self.channel_name)
        await self.channel_layer.group_discard(self.access_group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """The page sends nothing; whatever it sends is ignored."""

    # --- from the channel layer ----------------------------------------------------

    async def pages_batch(self, message: dict[str, Any]) -> None:
        """One server process's changes for the organization: merged into what
        this page has not been sent yet (latest value wins), sent soon."""
        if self.ended:
            return
        cap = settings.LIVE_MAX_ROWS
        for change in message.get("devices", []):
            device_id = int(change["id"])
            row = self.rows.get(device_id)
            if row is not None:
                row.update(change)
            elif len(self.rows) < cap:
                self.rows[device_id] = dict(change)  # type: ignore[assignment]
            else:
                self.overflow.add(device_id)
        self.more += int(message.get("more", 0))
        self.deployments.update(int(d) for d in message.get("deployments", []))
        self.counts = self.counts or bool(message.get("counts"))
        self.seen = str(message.get("seen") or "") or self.seen
        if self.sender is None or self.sender.done():
            self.sender = asyncio.get_running_loop().create_task(self._send_soon())

    async def access_changed(self, message: dict[str, Any]) -> None:
        """The user's membership, session or password changed somewhere."""
        ended = message.get("ended_session")
        if ended and self.session_key and ended == session_digest(self.session_key):
            await self._end("signed out")
            return
        await self._recheck()

    # --- to the browser ------------------------------------------------------------

    async def _send_soon(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self.sent_at + self.interval - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if loop.time() - self.checked_at >= settings.LIVE_ACCESS_CHECK_SECONDS and not await self._recheck():
            return
        if self.ended:
            return
        payload = {
            "type": "changes",
            "devices": list(self.rows.values()),
            "more": self.more + len(self.overflow),
            "deployments": sorted(self.deployments),
            "counts": self.counts or bool(self.overflow) or self.more > 0,
            "seen": self.seen,
        }
        self.rows, self.overflow, self.more, self.deployments, self.counts, self.seen = {}, set(), 0, set(), False, ""
        self.sent_at = loop.time()
        await self.send(text_data=json.dumps(payload, separators=(",", ":")))

    # --- access ----------------------------------------------------------------------

    async def _recheck(self) -> bool:
        """Check the session and membership now; end the page's feed if they
        ended. False when it ended (or could not be checked: nothing is sent
        unchecked, the next check decides)."""
        if self.ended or self.org_id is None:
            return False
        try:
            reason = await database_sync_to_async(live_access_ended)(self.session_key, self.user_id, self.org_id)
        except Exception:
            logger.exception("live pages access check of user %s failed", self.user_id)
            return False
        if reason:
            await self._end(reason)
            return False
        self.checked_at = asyncio.get_running_loop().time()
        return True

    async def _end(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.rows.clear()
        self.overflow.clear()
        await self.channel_layer.group_discard(self.group, self.channel_name)
        await self.send(text_data=json.dumps({"type": "closed", "reason": reason}))
        await self.close(code=CLOSE_ACCESS_ENDED)

    async def _watch(self) -> None:
        period = settings.LIVE_ACCESS_CHECK_SECONDS
        loop = asyncio.get_running_loop()
        grouped_at = loop.time()
        while not self.ended:
            await asyncio.sleep(period)
            if loop.time() - grouped_at > GROUP_REFRESH_SECONDS:
                # channels_redis forgets group members after a day.
                await self.channel_layer.group_add(self.group, self.channel_name)
                await self.channel_layer.group_add(self.access_group, self.channel_name)
                grouped_at = loop.time()
            if loop.time() - self.checked_at >= period:
                await self._recheck()
