"""An "access may have changed" message: one channel-layer message to the
person's own group, which their long-lived sockets (the remote console) join
and answer by checking their session and role again.

Sent after commit whenever a membership is added, changed or deleted, the user
row's password or active flag is saved, or the user signs out. These are model
and auth signals rather than calls in each service because the changes come
from many places the console does not own: the member services, the admin's
forms, cascade deletes of a user or organization, Django's own sign-out and
password views and `manage.py changepassword`. The sockets also check before
every write and periodically, so a lost message costs seconds, not access.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from nerveshub.tenancy.models import Membership

logger = logging.getLogger(__name__)

# The group message; a consumer handles it in `access_changed`.
ACCESS_CHANGED = "access.changed"
# Saving any of these user fields may end sessions or change what they may do.
_USER_FIELDS = frozenset({"password", "is_active", "is_superuser"})


def user_access_group(user_id: int) -> str:
    return f"user.{user_id}.access"


def session_digest(session_key: str) -> str:
    """How a message names a session: never the key itself, which is a credential."""
    return hashlib.sha256(session_key.encode()).hexdigest()


def publish_access_changed(user_id: int | None, *, ended_session: str | None = None) -> None:
    """Tell the user's open sockets to check their access again, on commit.
    `ended_session`: the key of a session that is ending (a sign-out); the
    sockets opened with it end without waiting for its row to be deleted."""
    if user_id is not None:
        message: dict[str, Any] = {"type": ACCESS_CHANGED}
        if ended_session:
            message["ended_session"] = session_digest(ended_session)
        transaction.on_commit(lambda: _send(int(user_id), message))


def _send(user_id: int, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(user_access_group(user_id), message)
    except Exception:
        # The change is committed; the sockets' own periodic check catches up.
        logger.exception("could not tell the sockets of user %s to check their access", user_id)


def _membership_changed(sender: Any, instance: Membership, **kwargs: Any) -> None:
    publish_access_changed(instance.user_id)


def _user_saved(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    # A login saves last_login only: no news for open sockets.
    if update_fields is None or _USER_FIELDS & set(update_fields):
        publish_access_changed(instance.pk)


def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    # Sent before Django deletes the session row: the message names the session.
    session = getattr(request, "session", None)
    publish_access_changed(getattr(user, "pk", None), ended_session=getattr(session, "session_key", None))


def connect() -> None:
    """Called once from TenancyConfig.ready."""
    post_save.connect(_membership_changed, sender=Membership, dispatch_uid="access_events.membership_saved")
    post_delete.connect(_membership_changed, sender=Membership, dispatch_uid="access_events.membership_deleted")
    post_save.connect(_user_saved, sender=get_user_model(), dispatch_uid="access_events.user_saved")
    user_logged_out.connect(_logged_out, dispatch_uid="access_events.logged_out")
