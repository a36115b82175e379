"""``python -m devstack run``: start the local dev stack (see devstack.launcher)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description="Purser local dev stack")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "run",
        help="start SecantusDB, Redis, migrations and the Procfile (web, worker, housekeeping, beat, flower)",
    )
    args = parser.parse_args(argv)
    if args.command == "run":
        from devstack.launcher import run

        return run()
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
