"""README's "Try it", run as printed against a real ``make demo`` stack.

README.md is the source of truth: the commands are extracted from its "Try it" block
and run by bash, one after the other in one shell (later commands use the variables
earlier ones set), after the ``export`` lines the demo printed. The stack is
``python -m devstack demo`` itself (what ``make demo`` runs) on free ports and a
private ``var/``, with the console renderer on, so the readable console is checked
on the same run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import demo
from ledger.splits import rule_for, split
from tests.demo.demo_stack import DemoStack
from tests.support.env import ROOT

pytestmark = pytest.mark.slow

README = ROOT / "README.md"


def readme_try_it() -> str:
    """The commands block of README's "Try it" section (the one that runs curl)."""
    text = README.read_text()
    assert "\n## Try it\n" in text, "README.md has no '## Try it' section"
    section = text.split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b.strip("\n") for b in re.findall(r"```sh\n(.*?)```", section, re.S)]
    found = [b for b in blocks if "curl" in b]
    assert len(found) == 1, f"expected one block of curl commands in 'Try it', found {len(found)}"
    return found[0]


def test_readme_shows_exactly_what_the_demo_prints_in_under_ten_commands() -> None:
    block = readme_try_it()
    assert block == demo.try_it_text(), "README's 'Try it' block and devstack/demo.py TRY_IT differ"
    assert len(demo.try_it_commands(block)) < 10
    assert "make demo" in README.read_text().split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture
def demo_stack(tmp_path: Path) -> Iterator[DemoStack]:
    stack = DemoStack(tmp_path / "var", tmp_path / "demo.log", {"WEB_CONCURRENCY": "1"})
    try:
        yield stack
    finally:
        stack.stop()


def run_block(exports: list[str], commands: list[str], env: dict[str, str]) -> list[tuple[int, str]]:
    """Run ``commands`` in one bash after ``exports``: (exit status, output) per command."""
    marker = "__try_it_status__"
    script = ["set -o pipefail", *exports]
    for command in commands:
        script += [command, f'echo "{marker}$?"']
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done
    pieces = re.split(rf"{marker}(\d+)\n", done.stdout)
    results = [(int(pieces[i + 1]), pieces[i]) for i in range(0, len(pieces) - 1, 2)]
    assert len(results) == len(commands), (done.stdout, done.stderr)
    return results


def _json(text: str) -> Any:
    return json.loads(text)


def test_try_it_runs_as_printed_against_make_demo(demo_stack: DemoStack) -> None:
    for tool in ("curl", "jq", "bash"):
        assert shutil.which(tool), f"README's 'Try it' needs {tool}"
    out = demo_stack.wait_seeded()
    printed = out.split("Demo data", 1)[1]
    exports = [line for line in printed.splitlines() if line.startswith("export ")]
    assert exports and all("\n" not in e for e in exports)
    assert demo.try_it_text() in printed, "the demo must print README's commands"
    env_file = demo_stack.var_dir / "demo.env"
    assert env_file.read_text().splitlines() == exports and env_file.stat().st_mode & 0o077 == 0

    commands = demo.try_it_commands(readme_try_it())
    shell_env = {k: v for k, v in demo_stack.env.items() if k not in ("PURSER_VAR_DIR",)}
    results = run_block(exports, commands, shell_env)
    for (status, output), command in zip(results, commands, strict=True):
        assert status == 0, f"exit {status}: {command}\n{output}"
    outputs = dict(zip(commands, (o.strip() for _, o in results), strict=True))

    def output_of(fragment: str, nth: int = 0) -> str:
        return [o for c, o in outputs.items() if fragment in c][nth]

    topped = _json(output_of("/api/payments/webhook"))
    assert topped["type"] == "topup" and topped["status"] in ("queued", "settled")
    job_id = re.fullmatch(r"job ([0-9a-f]{24})", output_of("/api/premium/unlock")).group(1)
    rule = rule_for("unlock")
    assert rule is not None
    parts = split(demo.CONTENT_PRICE, rule)
    job = _json(output_of("/api/jobs/$JOB"))
    assert job["status"] == "settled", job
    assert job["result"]["split"] == parts and sum(parts.values()) == demo.CONTENT_PRICE
    fan = next(p for p in demo.PEOPLE if p.key == "FAN")
    fan_balance = _json(output_of("/api/wallet/balance", 0))
    creator_balance = _json(output_of("/api/wallet/balance", 1))
    assert fan_balance["balance"] == fan.funding + demo.TOPUP - demo.CONTENT_PRICE, fan_balance
    assert creator_balance["balance"] + creator_balance["incoming"] == parts["creator"], creator_balance
    tasks = _json(output_of("$FLOWER"))
    assert tasks and all(t["state"] == "SUCCESS" for t in tasks.values()), tasks

    # The readable console of the same run: the unlock's request and its settlement, by id.
    console = demo_stack.output()
    assert re.search(rf"^\d\d:\d\d:\d\d\.\d{{3}} web +INFO  POST /api/premium/unlock 202  "
                     rf"requestId=\S+ jobId={job_id}", console, re.M), console[-4000:]
    assert re.search(rf"^\d\d:\d\d:\d\d\.\d{{3}} worker +INFO  job settled  requestId=\S+ jobId={job_id}",
                     console, re.M), console[-4000:]
    assert not re.search(r"^\S+ (web|worker) +\{", console, re.M), "raw JSON reached the console"

    # The ledger agrees with the balances after all this (the operator's own check).
    uri = re.search(r"MongoDB\s+(mongodb://\S+)", console).group(1)
    check = subprocess.run([sys.executable, "-m", "ops", "reconcile"], cwd=ROOT, capture_output=True, text=True,
                           env={**shell_env, "APP_ENV": "development", "MONGODB_URI": uri,
                                "PURSER_VAR_DIR": str(demo_stack.var_dir)}, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
