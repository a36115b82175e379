"""py-spy around the benchmark's processes: start a recording, summarise its collapsed output."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def pyspy_available() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def pyspy_start(pid: int, seconds: float, out: Path, subprocesses: bool = False,
                gil: bool = False) -> subprocess.Popen[bytes] | None:
    binary = pyspy_available()
    if binary is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100",
               "--format", "raw", "--output", str(out), "--nonblocking"]
    if subprocesses:
        command.append("--subprocesses")
    if gil:
        command.append("--gil")  # only the thread holding the GIL: where a GIL-bound process burns CPU
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_collapsed(path: Path, top: int = 12) -> dict[str, Any]:
    """Inclusive and self sample shares per function from py-spy's raw (collapsed) output."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return {"samples": 0}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += count
        leaf[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += count
    if not total:
        return {"samples": 0}
    # Frames present in nearly every sample (thread bootstrap, the server's accept loop) say nothing.
    return {"samples": total,
            "inclusive": [(f, round(n / total, 3)) for f, n in inclusive.most_common(top * 4)
                          if n < 0.95 * total and not f.startswith(("<module>", "process ", "thread "))][:top],
            "self": [(f, round(n / total, 3)) for f, n in leaf.most_common(top)]}


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = file.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else file
    return f"{name} ({short})" if where else name
