"""CLI: python -m migrations up [--to N] | down [--to N] | status"""

from __future__ import annotations

import argparse
import sys

from infra.config import settings_or_exit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m migrations")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--to", type=int, default=None)
    args = parser.parse_args(argv)
    settings_or_exit()

    import migrations
    from infra.mongo import get_db

    db = get_db()
    if args.command == "up":
        ran = migrations.up(db, args.to)
        print(f"applied: {ran or 'nothing to do'}")
    elif args.command == "down":
        ran = migrations.down(db, args.to or 0)
        print(f"reverted: {ran or 'nothing to do'}")
    else:
        for number, name, done in migrations.status(db):
            print(f"{number:04d} {name:<30} {'applied' if done else 'pending'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
