"""Operator CLI: ``python -m ops reconcile`` and ``python -m ops verify-audit``.

Both print a JSON report and exit 1 on any mismatch, 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops")
    parser.add_argument("command", choices=["reconcile", "verify-audit"])
    args = parser.parse_args(argv)

    from infra.config import settings_or_exit
    settings_or_exit()
    from infra.mongo import get_db
    from services.check_runs import record_run
    from services.reconcile import reconcile, verify_audit

    db = get_db()
    report = reconcile(db) if args.command == "reconcile" else verify_audit(db)
    print(json.dumps(report.as_dict(), indent=2, default=str))
    record_run(db, args.command, report.as_dict())  # shown by the operator console's overview
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
