"""Gunicorn settings for the Purser API (``gunicorn -c gunicorn.conf.py "api:create_app()"``).

Every value comes from ``infra.config.Settings``, read here once in the master and
inherited by the workers (``create_app`` finds it loaded). A configuration error is
one line and exit status 4, gunicorn's "App failed to load", as from the app itself.
"""

import os
import re
import sys
from pathlib import Path

# Gunicorn adds its working directory to sys.path only after reading this file.
_ROOT = str(Path(__file__).resolve().parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from infra.config import settings_or_exit  # noqa: E402

GUNICORN_APP_LOAD_ERROR = 4  # api.GUNICORN_APP_LOAD_ERROR (not imported: Flask stays out of the master)

_settings = settings_or_exit(GUNICORN_APP_LOAD_ERROR)

bind = _settings.bind
workers = _settings.web_concurrency
# gevent (default): every request is a greenlet, so a client waiting on its job
# ('Prefer: wait', api/waits.py) holds no thread; worker_connections bounds the
# concurrent connections of one process. gthread (WEB_THREADS per process) is kept
# for comparison: there each waiting client holds one of the threads.
worker_class = _settings.web_worker_class
worker_connections = _settings.web_worker_connections
threads = _settings.web_threads
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
_var = _settings.var_dir
_control = _var / ("gunicorn-" + re.sub(r"[^\w.-]", "_", bind) + ".ctl")
if len(str(_control)) < 100:  # AF_UNIX path limit
    control_socket = str(_control)
else:
    control_socket_disable = True

# Prometheus multi-process mode: each worker writes its values to files in this
# directory and /metrics merges them. Set here, in the master, so every worker
# inherits it before importing prometheus_client; one directory per bind address
# so two servers on one machine do not mix (or wipe) each other's files.
# prometheus_client reads the variable itself, hence os.environ (written, not read).
os.environ["PROMETHEUS_MULTIPROC_DIR"] = (_settings.prometheus_multiproc_dir
                                          or str(_var / "prometheus" / ("web-" + re.sub(r"[^\w.-]", "_", bind))))

# Gunicorn's own lines (boot, worker exits) as JSON too; the app writes the access
# line itself, so gunicorn's access logger stays silent.
logconfig_dict = {
    "root": {"level": "INFO", "handlers": ["json"]},
    "loggers": {
        "gunicorn.error": {"level": _settings.log_level, "handlers": ["json"],
                           "propagate": False, "qualname": "gunicorn.error"},
        "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False, "qualname": "gunicorn.access"},
    },
    "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
    "formatters": {"json": {"()": "infra.logging_setup.PurserJsonFormatter", "fmt": "%(message)s"}},
}


def on_starting(server):
    # Values left by a previous run would be merged into this one's: start empty.
    from infra.observability import prepare_multiproc_dir

    prepare_multiproc_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])  # set above, from the settings


def post_fork(server, worker):
    if worker_class == "gevent":
        # Before anything below imports pymongo or creates a lock (infra/gevent_support.py).
        from infra.gevent_support import patch_worker

        patch_worker()
    # PyMongo is not fork-safe: drop any client inherited from the master.
    from infra.mongo import reset_client

    reset_client()


def post_worker_init(worker):
    # Subscribe to job announcements before the first request waits (api/waits.py).
    try:
        from api.waits import get_hub

        get_hub(_settings).start()
    except Exception as exc:  # noqa: BLE001 - waits start the hub themselves; never block boot
        worker.log.warning("post_worker_init: announcement hub not started (%s)", exc)
    # And to role changes and freezes (api/user_changes.py); without it roles follow within ROLE_CACHE_SECONDS.
    try:
        from api.user_changes import start_listening

        start_listening(_settings)
    except Exception as exc:  # noqa: BLE001 - the cache window is the fallback; never block boot
        worker.log.warning("post_worker_init: user change subscription not started (%s)", exc)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
