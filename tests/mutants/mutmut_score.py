"""Print the mutation score of the last ``mutmut run`` (``make mutants-ledger``).

Score = killed / (all mutants - listed equivalents); the equivalents are the mutant
names listed in docs/testing.md (a line starting with ``- `ledger.``), each with why.
Exit status 1 below the target.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = 0.95


def main() -> int:
    out = subprocess.run([str(ROOT / ".venv/bin/mutmut"), "results", "--all", "true"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    status = dict(re.findall(r"^\s*(\S+__mutmut_\d+): (.+)$", out, flags=re.M))
    doc = (ROOT / "docs/testing.md").read_text() if (ROOT / "docs/testing.md").exists() else ""
    equivalent = set(re.findall(r"^- `(ledger\.\S+__mutmut_\d+)`", doc, flags=re.M))
    # A timeout is a mutant that makes a test hang: caught.
    caught = {name for name, s in status.items() if s in ("killed", "timeout")}
    listed = equivalent & set(status)
    # A listed mutant that a test kills was not equivalent (or its number moved to
    # another mutant): it counts as killed, and the list needs fixing.
    wrongly_listed = sorted(listed & caught)
    excluded = listed - caught
    alive = sorted(set(status) - caught - excluded)
    scored = len(status) - len(excluded)
    score = len(caught) / scored if scored else 0.0
    print(f"mutmut ledger/: {len(status)} mutants, {len(caught)} killed, {len(excluded)} "
          f"listed equivalent, score {len(caught)} / {scored} = {score:.1%} (target {TARGET:.0%})")
    for name in alive:
        print(f"  not killed: {name}: {status[name]}")
    for name in wrongly_listed:
        print(f"  listed as equivalent but killed (fix docs/testing.md): {name}")
    for name in sorted(equivalent - set(status)):
        print(f"  listed as equivalent but not a mutant of this run (fix docs/testing.md): {name}")
    return 0 if score >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
