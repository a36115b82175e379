"""Nothing happens at import (issue 13): no module of Purser reads the environment or connects.

Every module is imported in a fresh interpreter whose environment is EMPTY (no
``APP_ENV``, no store URLs: as production, every start-up would refuse). Reads of
``os.environ`` made by our own files are recorded, and so is any socket connection.
Libraries may read their own variables; entry points read the configuration when
they run, through ``infra.config.get_settings``, never at import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "devstack", "infra", "ledger", "migrations", "ops", "services", "tasks", "workers")

# No exception: even infra/metrics.py leaves prometheus_client's value class alone at
# import (the entry points call metrics.use_multiprocess_values()).
ALLOWED_ENV_READS: set[str] = set()

PROBE = r"""
import importlib, json, os, pkgutil, socket, sys, traceback
from pathlib import Path

root = Path(sys.argv[1]).resolve()
packages = sys.argv[2:]
ours = lambda filename: filename.startswith(str(root)) and "/.venv/" not in filename and "/tests/" not in filename
reads, connects, failures = [], [], []


def caller() -> str | None:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if ours(name):
            return f"{Path(name).relative_to(root)}:{frame.f_lineno}"
        if not name.endswith(("os.py", "_collections_abc.py", "<frozen os>", "<frozen _collections_abc>")):
            return None
        frame = frame.f_back
    return None


class Recording(type(os.environ)):
    def __getitem__(self, key):
        where = caller()
        if where:
            reads.append((where, key))
        return super().__getitem__(key)

    def __contains__(self, key):
        where = caller()
        if where:
            reads.append((where, key))
        return super().__contains__(key)


os.environ.__class__ = Recording
_connect = socket.socket.connect
def connect(self, address):
    connects.append(repr(address))
    return _connect(self, address)
socket.socket.connect = connect

names = []
for package in packages:
    module = importlib.import_module(package)
    names.append(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        names.append(info.name)
for name in names:
    try:
        importlib.import_module(name)
    except BaseException:
        failures.append((name, traceback.format_exc(limit=3)))

import infra.config, infra.mongo, infra.redis_client
print(json.dumps({"modules": names, "reads": reads, "connects": connects, "failures": failures,
                  "settings_loaded": infra.config.settings_loaded(),
                  "mongo_client": infra.mongo._client is not None}))
"""


def test_importing_every_module_reads_no_environment_and_connects_nowhere() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), *PACKAGES], cwd=ROOT, env={},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report["modules"]) > 40, report["modules"]
    assert report["failures"] == [], "\n".join(trace for _, trace in report["failures"])
    reads = [(where, key) for where, key in report["reads"] if where.split(":")[0] not in ALLOWED_ENV_READS]
    assert reads == [], f"modules read the environment at import: {reads}"
    assert report["connects"] == []
    assert report["settings_loaded"] is False, "a module loaded the configuration at import"
    assert report["mongo_client"] is False


def test_the_celery_entry_point_builds_the_app_from_settings_on_first_access(tmp_path: Path) -> None:
    env = {"APP_ENV": "test", "PURSER_VAR_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:1/3",
           "LEDGER_PARTITIONS": "3"}
    probe = ("import infra.config as c, workers, tasks.settle, tasks.debug;"
             "assert not c.settings_loaded();"
             "app = workers.app;"
             "assert c.settings_loaded() and app is workers.get_celery();"
             "assert app.conf.broker_url == 'redis://127.0.0.1:1/3', app.conf.broker_url;"
             "assert sorted(q.name for q in app.conf.task_queues)[:3] == ['ledger.0', 'ledger.1', 'ledger.2'];"
             "assert tasks.settle.settle.name == 'ledger.settle' and tasks.settle.settle.app is app;"
             "assert 'debug.boom' in app.tasks")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
