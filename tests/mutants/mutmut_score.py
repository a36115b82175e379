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
    killed = sum(s in ("killed", "timeout") for s in status.values())
    alive = sorted(name for name, s in status.items() if s not in ("killed", "timeout") and name not in equivalent)
    scored = len(status) - len(equivalent & set(status))
    score = killed / scored if scored else 0.0
    print(f"mutmut ledger/: {len(status)} mutants, {killed} killed, {len(equivalent & set(status))} "
          f"listed equivalent, score {score:.1%} (target {TARGET:.0%})")
    for name in alive:
        print(f"  not killed: {name}: {status[name]}")
    return 0 if score >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
