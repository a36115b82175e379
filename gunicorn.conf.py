"""Gunicorn settings for the Purser API (``gunicorn -c gunicorn.conf.py "api:create_app()"``)."""

import os
import re
from pathlib import Path

bind = os.environ.get("WEB_BIND") or f"127.0.0.1:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
# Request handlers mostly wait on MongoDB and Redis, so threads are cheap concurrency.
worker_class = "gthread" if threads > 1 else "sync"
timeout = 30
graceful_timeout = 10
# The app writes its own structured access log line per request.
accesslog = None

# Gunicorn >= 25 opens one control socket per user by default; several
# instances (dev stack next to test servers) would take it from each other.
_var = Path(os.environ.get("PURSER_VAR_DIR") or Path(__file__).resolve().parent / "var")
_control = _var / ("gunicorn-" + re.sub(r"[^\w.-]", "_", bind) + ".ctl")
if len(str(_control)) < 100:  # AF_UNIX path limit
    control_socket = str(_control)
else:
    control_socket_disable = True


def post_fork(server, worker):
    # PyMongo is not fork-safe: drop any client inherited from the master.
    try:
        from infra.mongo import reset_client
    except ImportError as exc:
        server.log.warning("post_fork: MongoDB client not reset (%s)", exc)
        return
    reset_client()


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
