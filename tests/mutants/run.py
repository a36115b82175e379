"""Curated mutants of the I/O money path (issue 17, item 2).

A full mutation run of ``services/`` and ``api/`` is too slow against real stores, so
this keeps a list of realistic bugs a payments reviewer would plant: each names a
file, an exact snippet of it, its replacement and the tests that must catch it. Each
mutant is applied to a SCRATCH COPY of the repository (never the working tree) and
only its tests run there. A mutant is killed when those tests fail (pytest exit 1).

    .venv/bin/python tests/mutants/run.py               # every mutant, from HEAD
    .venv/bin/python tests/mutants/run.py -k webhook    # names containing "webhook"
    .venv/bin/python tests/mutants/run.py --worktree    # the working tree instead of HEAD
    .venv/bin/python tests/mutants/run.py --record docs/testing.md

Exit status 0 only when every mutant is killed. A snippet that no longer occurs
exactly once is reported STALE (the list must follow the code), also a failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    original: str
    replacement: str
    tests: tuple[str, ...]


S = "tests/settlement/"
MO = S + "test_money_out_settlement.py::"
MUTANTS: tuple[Mutant, ...] = (
    # --- the five planted bugs of issue 17 -------------------------------------------
    Mutant("settlement: debit guard removed", "ledger/write_plan.py",
           'Update({"_id": doc_id, "balance": {"$gte": floor}}, update, guard=FLOOR)',
           'Update({"_id": doc_id}, update)',
           (S + "test_guards_and_claims.py::test_debit_guard_refuses_a_decision_made_on_a_stale_balance",)),
    Mutant("idempotency: fingerprint not bound to route and method", "api/money.py",
           '{"route": request.path, "method": request.method, "body": data}', '{"body": data}',
           ("tests/unit/test_fingerprint.py",)),
    Mutant("webhook: HMAC over t:body instead of t.body", "api/routes/payments.py",
           'f"{timestamp}.".encode()', 'f"{timestamp}:".encode()',
           ("tests/unit/test_webhook_signature.py",)),
    Mutant("reconcile: unbalanced transactions not reported", "services/reconcile.py",
           'report.unbalanced_transactions.append(tx["_id"])', "pass",
           (S + "test_reconcile_detects.py::test_unbalanced_transaction_is_reported",)),
    # --- idempotency (issue 24: the job is the claim) ----------------------------------
    Mutant("idempotency: fingerprint mismatch ignored (replays another request)", "services/jobs.py",
           'if held[idempotency.FIELD]["fp"] != claim.fingerprint:', "if False:",
           (S + "test_guards_and_claims.py::test_another_fingerprint_is_a_mismatch_and_keys_are_per_owner",)),
    Mutant("idempotency: a replay answers the job's current state", "services/jobs.py",
           'as_accepted = {**job, "status": QUEUED, "settledAt": None, "result": None, "error": None}',
           "as_accepted = job",
           (S + "test_guards_and_claims.py::test_the_job_holds_its_key_and_a_replay_is_derived_from_it",)),
    Mutant("idempotency: an expired key found by a request is not released", "services/idempotency.py",
           "if expires > (now or utcnow()):", "if True:",
           (S + "test_guards_and_claims.py::"
                "test_a_key_expired_before_beat_removed_it_is_released_by_the_next_request",)),
    Mutant("idempotency: expiry stops after the first chunk", "services/idempotency.py",
           "        if len(ids) < chunk:\n            break", "        break",
           (S + "test_guards_and_claims.py::"
                "test_expired_keys_are_removed_in_chunks_the_jobs_stay_and_the_key_is_new_again",)),
    Mutant("idempotency: missing key accepted", "api/money.py",
           'raise ApiError(400, "IDEMPOTENCY_KEY_REQUIRED", "Send an Idempotency-Key header with money requests.")',
           "return None",
           ("tests/api/test_idempotency.py::test_every_money_post_requires_a_key",)),
    # --- webhooks --------------------------------------------------------------------
    Mutant("webhook: MAC compared with nothing", "api/routes/payments.py",
           "if not hmac.compare_digest(expected, given):", "if not given:",
           ("tests/unit/test_webhook_signature.py",)),
    Mutant("webhook: future timestamps accepted (abs dropped)", "api/routes/payments.py",
           "if abs(time.time() - timestamp) > TOLERANCE_SECONDS:", "if time.time() - timestamp > TOLERANCE_SECONDS:",
           ("tests/unit/test_webhook_signature.py",)),
    Mutant("webhook: replay window 10x too wide", "api/routes/payments.py",
           "TOLERANCE_SECONDS = 300", "TOLERANCE_SECONDS = 3000",
           ("tests/unit/test_webhook_signature.py",)),
    # --- settlement and deferred credits ---------------------------------------------
    Mutant("settlement: inbound credits not spendable before deciding", "services/batch_runner.py",
           "snapshot.wallets.setdefault(wallet_id, WalletState(0)).balance += amount", "pass",
           (S + "test_guards_and_claims.py::test_a_credit_received_is_spendable_in_the_batch_that_applies_it",)),
    Mutant("settlement: inbound credit never marked applied (applied twice)", "ledger/write_plan.py",
           '{"$set": {"applied": True, "appliedAt": now, "appliedIn": batch_seq}}',
           '{"$set": {"appliedAt": now, "appliedIn": batch_seq}}',
           (S + "test_single_writer.py::test_a_cross_partition_credit_is_incoming_until_its_owner_applies_it",)),
    Mutant("settlement: the partition head written without its seq guard", "ledger/write_plan.py",
           'plan.head = Update({"_id": router.partition, "seq": head.seq},',
           'plan.head = Update({"_id": router.partition},',
           (S + "test_write_guards.py::"
                "test_the_partition_seq_guard_refuses_a_batch_read_before_another_settler_committed",)),
    Mutant("settlement: an inbound credit marked applied without its applied:false guard", "ledger/write_plan.py",
           'return Update({"_id": credit["_id"], "applied": False},', 'return Update({"_id": credit["_id"]},',
           (S + "test_write_guards.py::"
                "test_a_credit_read_as_unapplied_after_its_owner_applied_it_is_not_applied_twice",)),
    # --- money out: refunds and chargebacks (the loader and the write plan) -------------
    Mutant("refunds: earlier refunds not loaded (each refund sees the whole original)", "services/batch_read.py",
           'legs[row["walletId"]] = legs.get(row["walletId"], 0) + row["amount"]', "pass",
           (MO + "test_partial_then_full_refund_of_an_unlock_gives_back_exactly_the_price",)),
    Mutant("refunds: legs given back not recorded on the refund", "ledger/effects.py",
           '"refundLegs": [{"walletId": w, "amount": a} for w, a in self.legs], ', "",
           (MO + "test_partial_then_full_refund_of_an_unlock_gives_back_exactly_the_price",)),
    Mutant("chargebacks: the store guard ignores the allowed debt", "ledger/write_plan.py",
           "floor = -delta - allowed_debt.get(doc_id, 0)", "floor = -delta",
           (MO + "test_a_chargeback_leaves_debt_that_blocks_debits_until_a_credit_repays_it",)),
    Mutant("payouts: the hold bucket may give back more than it holds", "ledger/write_plan.py",
           'writes.append(Update({"_id": doc_id, "balance": {"$gte": -delta}}, update, guard=BUCKET))',
           'writes.append(Update({"_id": doc_id}, update))',
           (S + "test_guards_and_claims.py::test_the_in_flight_bucket_guard_refuses_to_post_more_than_it_holds",)),
    # --- reconcile and audit verification ----------------------------------------------
    Mutant("reconcile: unapplied credits left out of the drift check", "services/reconcile.py",
           "if balance + incoming != ledger:", "if balance != ledger:",
           (S + "test_reconcile_detects.py::test_altered_unapplied_credit_is_drift",)),
    Mutant("reconcile: unapplied credits left out of the total", "services/reconcile.py",
           "report.total_balance += balance + incoming", "report.total_balance += balance",
           (S + "test_reconcile_detects.py::test_altered_unapplied_credit_is_drift",)),
    Mutant("reconcile: negative check off by one", "services/reconcile.py",
           "if balance < 0 and not may_go_negative(wallet_id)", "if balance < -1 and not may_go_negative(wallet_id)",
           (S + "test_reconcile_detects.py::test_negative_user_wallet_is_reported",)),
    Mutant("reconcile: system buckets not compared with the ledger", "services/reconcile.py",
           "            report._drift(name, balance, 0, ledger)", "            pass",
           (S + "test_reconcile_detects.py::test_altered_bucket_is_drift",)),
    Mutant("reconcile: settled job without entries tolerated", "services/reconcile.py",
           "for query in (unrecorded, stray):", "for query in (stray,):",
           (S + "test_reconcile_detects.py::test_settled_job_without_entries_is_reported",)),
    Mutant("reconcile: entries on a job not settled tolerated", "services/reconcile.py",
           "for query in (unrecorded, stray):", "for query in (unrecorded,):",
           (S + "test_reconcile_detects.py::test_entries_on_a_job_no_longer_settled_are_reported",)),
    Mutant("verify_audit: job audit pointers not checked", "services/reconcile.py",
           '                        or job.get("audit") != {"partition": partition, "seq": entry.get("seq")}:',
           "                        :",
           (S + "test_reconcile_detects.py::test_job_audit_pointer_moved_is_reported",)),
    Mutant("verify_audit: chain head not compared", "services/reconcile.py",
           'if last is None or last["hash"] != part["auditHead"]:', "if last is None:",
           (S + "test_reconcile_detects.py::test_truncated_chain_with_its_head_count_rewound_is_reported",)),
    # --- revenue split constants ------------------------------------------------------
    Mutant("splits: platform and processing shares swapped", "ledger/splits.py",
           "    (PLATFORM_REVENUE, 1500),\n    (PLATFORM_PROCESSING, 500),",
           "    (PLATFORM_REVENUE, 500),\n    (PLATFORM_PROCESSING, 1500),",
           ("tests/unit/ledger/test_splits.py",)),
    Mutant("splits: leftover coins to the smallest remainder", "ledger/splits.py",
           "first, then earlier rule position.\n        remainders.append((-frac, index, party))",
           "first, then earlier rule position.\n        remainders.append((frac, index, party))",
           ("tests/unit/ledger/test_splits.py",)),
    # --- authorization and rate limits ----------------------------------------------
    Mutant("authorization: role check disabled", "api/auth.py",
           "if roles and principal.role not in roles:", "if False:",
           ("tests/api/test_admin.py::test_non_admins_get_403_everywhere_admin",)),
    Mutant("rate limits: admins no longer exempt", "api/limits.py",
           "or (principal is not None and principal.is_admin)", "or False",
           ("tests/observability/test_rate_limits.py::test_limit_follows_the_stored_role_and_admin_is_exempt",)),
    Mutant("rate limits: every role gets the free tier", "api/limits.py",
           "return tier_limits.get(role, settings.rate_limits_free)", "return settings.rate_limits_free",
           ("tests/observability/test_rate_limits.py::test_limit_follows_the_stored_role_and_admin_is_exempt",)),
    Mutant("rate limits: premium tier default ten times higher", "infra/config_table.py",
           'Var("rate_limits_premium", "RATE_LIMITS_PREMIUM", rate, "100/minute")',
           'Var("rate_limits_premium", "RATE_LIMITS_PREMIUM", rate, "1000/minute")',
           ("tests/observability/test_rate_limits.py::test_limit_follows_the_stored_role_and_admin_is_exempt",)),
    Mutant("login limits: lockout after 50 wrong passwords instead of 5", "infra/config_table.py",
           'Var("rate_limits_login_email", "RATE_LIMITS_LOGIN_EMAIL", rate, "5/15minutes")',
           'Var("rate_limits_login_email", "RATE_LIMITS_LOGIN_EMAIL", rate, "50/15minutes")',
           ("tests/observability/test_rate_limits.py::test_sixth_wrong_password_for_one_email_is_429_and_locks_the_account",)),
    # --- subscriptions ----------------------------------------------------------------
    Mutant("subscriptions: auto-renewing subscriptions expired by the tick", "services/subscriptions.py",
           'return {"status": SubscriptionStatus.ACTIVE, "autoRenew": False, "expiresAt": _until(now)}',
           'return {"status": SubscriptionStatus.ACTIVE, "expiresAt": _until(now)}',
           ("tests/subscriptions/test_subscription_lifecycle.py::test_subscribe_renew_three_periods_cancel_and_expire_with_exact_money",)),
)


def _tree(worktree: bool, dest: Path) -> None:
    """A copy of the repository at ``dest``: HEAD (default) or the working tree's files."""
    if worktree:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                               capture_output=True).stdout.decode().split("\0")
        for name in filter(None, files):
            src = ROOT / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
    else:
        archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def _pytest(tree: Path, tests: tuple[str, ...], timeout: float, test_timeout: int) -> tuple[int, float]:
    """Run ``tests`` in ``tree``; a hung test fails by pytest-timeout (a mutant that hangs is caught)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    proc = subprocess.Popen([str(PYTHON), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                             "-o", f"timeout={test_timeout}", *tests],
                            cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the test session's fixtures stop the stores and workers it started.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        rc = -1
    return rc, time.monotonic() - started


def run(mutants: list[Mutant], worktree: bool, timeout: float, test_timeout: int, baseline: bool) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="purser-mutants-") as tmp:
        tree = Path(tmp)
        _tree(worktree, tree)
        if baseline:
            tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
            rc, secs = _pytest(tree, tests, timeout * 3, test_timeout)
            print(f"baseline: {'pass' if rc == 0 else f'FAIL (exit {rc})'} in {secs:.0f}s", flush=True)
            if rc != 0:
                raise SystemExit("the unmutated tests fail: kills would mean nothing")
        for m in mutants:
            target = tree / m.path
            source = target.read_text()
            if source.count(m.original) != 1:
                verdict, rc, secs = "STALE", None, 0.0
            else:
                target.write_text(source.replace(m.original, m.replacement))
                try:
                    rc, secs = _pytest(tree, m.tests, timeout, test_timeout)
                finally:
                    target.write_text(source)
                verdict = {0: "SURVIVED", 1: "killed", -1: "TIMEOUT"}.get(rc, f"ERROR (exit {rc})")
            results.append({"name": m.name, "path": m.path, "verdict": verdict, "seconds": secs,
                            "tests": m.tests})
            print(f"{verdict:>10}  {secs:6.0f}s  {m.name}  [{m.path}]", flush=True)
    return results


def table(results: list[dict], total_seconds: float, source: str) -> str:
    killed = sum(r["verdict"] == "killed" for r in results)
    lines = [f"Last run: {time.strftime('%Y-%m-%d')}, {source}, {killed}/{len(results)} killed, "
             f"{total_seconds / 60:.1f} min.", "",
             "| mutant | file | result | caught by | s |", "|---|---|---|---|---|"]
    for r in results:
        tests = "<br>".join(f"`{t.removeprefix('tests/')}`" for t in r["tests"])
        lines.append(f"| {r['name']} | `{r['path']}` | {r['verdict']} | {tests} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


START, END = "<!-- curated-mutants:start -->", "<!-- curated-mutants:end -->"


def record(path: Path, text: str) -> None:
    doc = path.read_text()
    head, _, rest = doc.partition(START)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{START}\n{text}{END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="match", help="only mutants whose name contains this text")
    parser.add_argument("--worktree", action="store_true", help="copy the working tree instead of HEAD")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mutant (then TIMEOUT)")
    parser.add_argument("--test-timeout", type=int, default=120,
                        help="pytest-timeout per test in mutant runs: a hang fails the test (killed)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the named tests")
    parser.add_argument("--record", type=Path, help="write the result table into this file between markers")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if not args.match or args.match.lower() in m.name.lower()]
    if args.list:
        for m in mutants:
            print(f"{m.name}  [{m.path}]  -> {', '.join(m.tests)}")
        return 0
    started = time.monotonic()
    results = run(mutants, args.worktree, args.timeout, args.test_timeout, not args.no_baseline)
    elapsed = time.monotonic() - started
    text = table(results, elapsed, "working tree" if args.worktree else "HEAD")
    print(text)
    if args.record:
        record(args.record, text)
    return 0 if all(r["verdict"] == "killed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
