"""Gunicorn settings for the Purser API (``gunicorn -c gunicorn.conf.py "api:create_app()"``)."""

import os
import re
from pathlib import Path

bind = os.environ.get("WEB_BIND") or f"127.0.0.1:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gevent (default): every request is a greenlet, so a client waiting on its job
# ('Prefer: wait', api/waits.py) holds no thread; worker_connections bounds the
# concurrent connections of one process. gthread (WEB_THREADS per process) is kept
# for comparison: there each waiting client holds one of the threads.
worker_class = os.environ.get("WEB_WORKER_CLASS", "gevent")
if worker_class not in ("gevent", "gthread", "sync"):
    raise SystemExit(f"purser: configuration error: WEB_WORKER_CLASS: expected gevent, gthread or sync, "
                     f"got {worker_class!r}")
worker_connections = int(os.environ.get("WEB_WORKER_CONNECTIONS", "1000"))
threads = int(os.environ.get("WEB_THREADS", "8"))
if worker_class == "gthread" and threads <= 1:
    worker_class = "sync"
timeout = 30
graceful_timeout = 10
# The app writes its own structured access log line per request.
accesslog = None
# Gunicorn would still format its own access line for every response (and drop it):
# 9 % of a gevent worker's CPU in a burst of answers. This logger skips it.
logger_class = "infra.gevent_support.NoAccessLogger"

# Gunicorn >= 25 opens one control socket per user by default; several
# instances (dev stack next to test servers) would take it from each other.
_var = Path(os.environ.get("PURSER_VAR_DIR") or Path(__file__).resolve().parent / "var")
_control = _var / ("gunicorn-" + re.sub(r"[^\w.-]", "_", bind) + ".ctl")
if len(str(_control)) < 100:  # AF_UNIX path limit
    control_socket = str(_control)
else:
    control_socket_disable = True

# Prometheus multi-process mode: each worker writes its values to files in this
# directory and /metrics merges them. Set here, in the master, so every worker
# inherits it before importing prometheus_client; one directory per bind address
# so two servers on one machine do not mix (or wipe) each other's files.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_var / "prometheus" / ("web-" + re.sub(r"[^\w.-]", "_", bind)))

# Gunicorn's own lines (boot, worker exits) as JSON too; the app writes the access
# line itself, so gunicorn's access logger stays silent.
logconfig_dict = {
    "root": {"level": "INFO", "handlers": ["json"]},
    "loggers": {
        "gunicorn.error": {"level": os.environ.get("LOG_LEVEL", "INFO").upper(), "handlers": ["json"],
                           "propagate": False, "qualname": "gunicorn.error"},
        "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False, "qualname": "gunicorn.access"},
    },
    "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
    "formatters": {"json": {"()": "infra.logging_setup.PurserJsonFormatter", "fmt": "%(message)s"}},
}


def on_starting(server):
    # Values left by a previous run would be merged into this one's: start empty.
    from infra.observability import prepare_multiproc_dir

    prepare_multiproc_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def post_fork(server, worker):
    if worker_class == "gevent":
        # Before anything below imports pymongo or creates a lock (infra/gevent_support.py).
        from infra.gevent_support import patch_worker

        patch_worker()
    # PyMongo is not fork-safe: drop any client inherited from the master.
    try:
        from infra.mongo import reset_client
    except ImportError as exc:
        server.log.warning("post_fork: MongoDB client not reset (%s)", exc)
        return
    reset_client()


def post_worker_init(worker):
    # Subscribe to job announcements before the first request waits (api/waits.py).
    try:
        from api.waits import get_hub

        get_hub().start()
    except Exception as exc:  # noqa: BLE001 - waits start the hub themselves; never block boot
        worker.log.warning("post_worker_init: announcement hub not started (%s)", exc)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
