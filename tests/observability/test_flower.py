"""Flower, started with the Procfile's own command line, is behind basic auth on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from devstack.stores import ManagedProcess, free_port, port_in_use
from tests.support.env import ROOT, child_env, redis_db

CREDENTIALS = ("ops", "flower-test-s3cret")


def procfile_command(name: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and key.strip() == name:
            return command.strip()
    raise AssertionError(f"no {name!r} line in the Procfile")


def _env(stack_env: dict[str, str], port: int, basic_auth: str) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)  # the Procfile calls the `celery` script
    return child_env(stack_env, REDIS_URL=redis_db(stack_env["REDIS_URL"], 5), FLOWER_PORT=str(port),
                     FLOWER_BASIC_AUTH=basic_auth, PATH=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))


class Flower(ManagedProcess):
    ready_timeout = 30.0

    def __init__(self, env: dict[str, str], log_path: Path, port: int) -> None:
        super().__init__(["/bin/sh", "-c", "exec " + procfile_command("flower")], log_path=log_path, env=env,
                         cwd=ROOT, name=f"flower :{port}")
        self.port = port

    def probe(self) -> bool:
        return port_in_use(self.port)


@pytest.fixture(scope="module")
def flower(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flower]:
    port = free_port()
    server = Flower(_env(stack_env, port, ":".join(CREDENTIALS)), tmp_path_factory.mktemp("flower") / "flower.log",
                    port)
    try:
        yield server.start()
    finally:
        server.stop()


def test_flower_answers_401_without_credentials_and_200_with_them(flower: Flower) -> None:
    url = f"http://127.0.0.1:{flower.port}/"
    anonymous = requests.get(url, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.headers.get("WWW-Authenticate", "").lower().startswith("basic")
    assert requests.get(url, auth=(CREDENTIALS[0], "wrong"), timeout=10).status_code == 401
    assert requests.get(url, auth=CREDENTIALS, timeout=10).status_code == 200
    assert requests.get(f"http://127.0.0.1:{flower.port}/workers", auth=CREDENTIALS, timeout=10).status_code == 200


def test_flower_listens_on_loopback_only(flower: Flower) -> None:
    assert flower.pid is not None
    family = [psutil.Process(flower.pid), *flower.descendants()]
    listening = [c.laddr for p in family for c in p.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == flower.port]
    assert listening and {addr.ip for addr in listening} == {"127.0.0.1"}


def test_flower_refuses_to_start_without_credentials(stack_env: dict[str, str]) -> None:
    env = _env(stack_env, free_port(), "")
    result = subprocess.run(["/bin/sh", "-c", procfile_command("flower")], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH" in result.stderr
