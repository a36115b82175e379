"""The client is a package a user can pick up (issue 27, item 4).

``clients/python`` builds to an sdist and a wheel that ``twine check --strict`` accepts
(the README is the long description), installs from the source tree, and neither
leaves anything in that tree. The builds here use the build backend installed with
``requirements-dev.txt`` (``--no-isolation``, so the test needs no network); a user's
``pip install ./clients/python`` fetches the same backend into an isolated build
environment.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.env import ROOT

CLIENT = ROOT / "clients" / "python"
NAME = "purser_client"


def _version() -> str:
    """The version the sources declare (the test process may import another checkout's client)."""
    match = re.search(r'^__version__ = "([^"]+)"', (CLIENT / NAME / "__init__.py").read_text(), re.M)
    assert match, "purser_client/__init__.py declares no __version__"
    return match.group(1)


def _tree() -> set[str]:
    """Every path under clients/python, bytecode caches aside."""
    return {str(p.relative_to(CLIENT)) for p in CLIENT.rglob("*") if "__pycache__" not in p.parts}


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture
def untouched_tree() -> Iterator[None]:
    before = _tree()
    yield
    assert _tree() == before, f"left in clients/python: {sorted(_tree() - before)}"
    assert not {"build", "dist"} & {p.split("/")[0] for p in _tree()}
    assert not any(p.endswith(".egg-info") for p in _tree())


def test_it_builds_an_sdist_and_a_wheel_that_twine_accepts(tmp_path: Path, untouched_tree: None) -> None:
    version = _version()
    _run("build", "--no-isolation", "--outdir", str(tmp_path), str(CLIENT))
    wheel, sdist = tmp_path / f"{NAME}-{version}-py3-none-any.whl", tmp_path / f"{NAME}-{version}.tar.gz"
    assert sorted(tmp_path.iterdir()) == sorted([wheel, sdist])
    checked = _run("twine", "check", "--strict", str(wheel), str(sdist))
    assert checked.stdout.count("PASSED") == 2, checked.stdout

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"{NAME}-{version}.dist-info/METADATA").decode()
    assert {f"{NAME}/{m}" for m in ("__init__.py", "client.py", "errors.py", "models.py", "webhooks.py",
                                    "py.typed")} <= names
    assert f"\nVersion: {version}\n" in metadata and "Requires-Dist: requests" in metadata
    assert "Description-Content-Type: text/markdown" in metadata
    for section in ("## Install", "## Quick start", "## Errors", "## Retries and idempotency", "## Waiting",
                    "## Verifying webhooks"):
        assert section in metadata, f"the README (long description) lacks {section!r}"
    with tarfile.open(sdist) as archive:
        members = {m.split("/", 1)[1] for m in archive.getnames() if "/" in m}
    assert {"README.md", "pyproject.toml", f"{NAME}/__init__.py", f"{NAME}/py.typed"} <= members


def test_installing_from_the_source_tree_leaves_it_clean(tmp_path: Path, untouched_tree: None) -> None:
    site = tmp_path / "site"
    _run("pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site), str(CLIENT))
    # A fresh interpreter sees the installed copy first (a checkout's editable install comes after sys.path).
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import purser_client as c; "
             "from purser_client import Client, verify_webhook; print(c.__version__, c.__file__)")
    done = subprocess.run([sys.executable, "-c", probe, str(site)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    version, where = done.stdout.split()
    assert version == _version() and Path(where).is_relative_to(site)
    assert (site / f"{NAME}-{version}.dist-info").is_dir()
