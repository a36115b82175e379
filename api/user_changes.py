"""A user's role change (or wallet freeze) reaches every web process at once.

Each web process caches stored roles for up to ``ROLE_CACHE_SECONDS`` (``api/auth.py``).
After an operator's change is committed, :func:`announce` forgets the user's entry
here and publishes the user id on one Redis channel per database; every web process
holds one subscription to it (:class:`infra.pubsub.Listener`, started beside the waits
hub in gunicorn's ``post_worker_init``) and forgets that user's entry when the message
arrives, a few milliseconds later. The next request of that user, in any process,
reads the stored role: a promoted creator may publish, a demoted admin is refused.

The cache window stays the fallback when Redis is away: a publish that fails is
logged and changes nothing else (the change itself is committed), and a process whose
subscription broke forgets every cached role when it subscribes again, since whatever
was published meanwhile is lost. Either way no process trusts a role older than the
window.
"""

from __future__ import annotations

import logging
import os
import threading

from api import auth
from api.app_settings import settings
from infra.config import Settings
from infra.pubsub import Listener
from infra.redis_client import get_redis
from ledger.money import is_user_id

log = logging.getLogger("purser.auth")


def channel(mongodb_db: str) -> str:
    """The channel of one Purser database (pub/sub ignores Redis database numbers)."""
    return f"purser:users:changed:{mongodb_db}"


def announce(user_id: str) -> bool:
    """Forget ``user_id``'s cached role here and tell every web process; never raises.

    Call it after the change is committed, in the app's context (a request or a CLI
    command). False: Redis could not be told (logged); the other processes then see the
    change within ``ROLE_CACHE_SECONDS``.
    """
    auth.forget_role(user_id)
    try:
        get_redis().publish(channel(settings().mongodb_db), user_id)
        return True
    except Exception as exc:  # noqa: BLE001 - the change is committed; the cache window covers it
        log.warning("could not announce a user change; other web processes see it within ROLE_CACHE_SECONDS",
                    extra={"changedUserId": user_id, "error": f"{type(exc).__name__}: {exc}"[:300]})
        return False


def _on_message(data: bytes) -> None:
    user_id = data.decode("ascii", "replace") if isinstance(data, bytes) else str(data)
    if is_user_id(user_id):
        auth.forget_role(user_id)


_listener: Listener | None = None
_listener_key: tuple[int, str, str] | None = None
_lock = threading.Lock()


def listener(settings: Settings) -> Listener:
    """This process's subscription (a new one after fork or when the settings changed), not started.

    Called outside any app context (gunicorn's ``post_worker_init``): the caller passes the settings.
    """
    global _listener, _listener_key
    key = (os.getpid(), settings.redis_url, channel(settings.mongodb_db))
    with _lock:
        if _listener is None or _listener_key != key:
            if _listener is not None and _listener_key is not None and _listener_key[0] == os.getpid():
                _listener.stop()
            _listener = Listener(key[1], key[2], _on_message, auth.forget_all_roles, what="user change",
                                 logger=log)
            _listener_key = key
    return _listener


def start_listening(settings: Settings) -> Listener:
    """Subscribe this web process to user changes (idempotent)."""
    return listener(settings).start()
