"""``python -m devstack run|demo``: start the local dev stack (see devstack.launcher).

``demo`` is ``run`` plus demo data (devstack.demo); so is ``run`` with ``DEMO=1`` in the
environment, which is what ``make run DEMO=1`` gives (make exports command-line variables).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description="Purser local dev stack")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "run",
        help="start SecantusDB, Redis, migrations and the Procfile (web, worker, housekeeping, beat, flower)",
    )
    commands.add_parser(
        "demo",
        help="run, then seed an admin, a creator with content and a plan, two funded fans, and print "
             "their tokens and the commands of README's 'Try it'",
    )
    args = parser.parse_args(argv)
    if args.command in ("run", "demo"):
        from devstack.launcher import run

        wants_demo = args.command == "demo" or os.environ.get("DEMO", "").lower() in ("1", "true", "yes")
        return run(demo=wants_demo)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
