"""``make demo`` works every time (issue 27, item 2): cold twice in a row, then again on the same ``var/``.

Each run is ``python -m devstack demo`` (what ``make demo`` runs) with the default two
web processes, where seeding used to meet a stale role in the process that had not
served the promotion (403 on "publish the content"), and a second run on the same
``var/`` tripped the registration limit with its 409s (429). Here every run must seed,
print who is who with the right roles and balances, and stop cleanly on Ctrl-C; the
third run logs the same accounts in without registering anyone, funds nobody twice
and publishes one more content item.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack import demo
from tests.demo.demo_stack import DemoStack

pytestmark = pytest.mark.slow

_PERSON = re.compile(r"^  (admin|creator|fan|fan2)\s+(\S+@\S+)\s+(\w+)\s+([0-9a-f]{24})(?:\s+balance (-?\d+))?$", re.M)
_CONTENT = re.compile(r"^  content  ([0-9a-f]{24}) ", re.M)
_ACCESS = r"^\d\d:\d\d:\d\d\.\d{{3}} web +\w+ +{method} {path} {status}\b"


@dataclass
class Run:
    people: dict[str, tuple[str, str, int | None]]  # key -> (role, user id, balance)
    content_id: str
    console: str

    def access_lines(self, method: str, path: str, status: str = r"\d{3}") -> int:
        """Access lines of the web processes in the readable console; arguments are regular expressions."""
        return len(re.findall(_ACCESS.format(method=method, path=path, status=status), self.console, re.M))


def _run(var_dir: Path, log_path: Path) -> Run:
    stack = DemoStack(var_dir, log_path)  # WEB_CONCURRENCY unset: two web processes, as `make demo`
    try:
        out = stack.wait_seeded()
    finally:
        status = stack.stop()
    report = out.split("Demo data", 1)[1]
    people = {key.upper(): (role, user_id, int(balance) if balance else None)
              for key, _email, role, user_id, balance in _PERSON.findall(report)}
    content = _CONTENT.search(report)
    assert content, report
    assert status == 0, f"Ctrl-C did not stop the demo cleanly (status {status}):\n{stack.output()[-3000:]}"
    return Run(people, content.group(1), stack.output())


def _expected() -> dict[str, tuple[str, int | None]]:
    return {p.key: (p.role, None if p.role == "admin" else p.funding) for p in demo.PEOPLE}


def test_make_demo_cold_twice_then_again_on_the_same_var(tmp_path: Path) -> None:
    first = _run(tmp_path / "first" / "var", tmp_path / "first.log")
    second = _run(tmp_path / "second" / "var", tmp_path / "second.log")
    again = _run(tmp_path / "second" / "var", tmp_path / "again.log")

    for run in (first, second, again):
        assert {k: (role, balance) for k, (role, _, balance) in run.people.items()} == _expected(), run.people
        assert run.access_lines("PUT", "/api/subscription/plan", "200") == 1
        assert run.access_lines("POST", "/api/premium/content", "201") == 1
        assert not run.access_lines("[A-Z]+", r"\S+", "(403|429)"), "no refusal, no limit tripped"
    for cold in (first, second):
        assert cold.access_lines("POST", "/api/auth/register", "201") == len(demo.PEOPLE) - 1
    assert {k: v[1] for k, v in first.people.items()} != {k: v[1] for k, v in second.people.items()}

    # The same var/: the same accounts, logged in (never registered), funded once, one more content item.
    assert {k: v[1] for k, v in again.people.items()} == {k: v[1] for k, v in second.people.items()}
    assert again.access_lines("POST", "/api/auth/register") == 0
    assert again.access_lines("POST", "/api/auth/login", "401") == 0
    assert again.access_lines("PATCH", r"/api/admin/users/\S+") == 0, "roles already set: nothing to change"
    assert again.content_id != second.content_id
