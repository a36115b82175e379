"""Store chores for fixtures that reset the database while a worker may be settling."""

from __future__ import annotations

import threading

from pymongo.database import Database

UNBLOCK_EVERY = 2.0  # seconds a drop may take before open transactions are aborted


def drop_database_unblocked(db: Database) -> None:
    """Drop ``db``, aborting open transactions if the drop stalls.

    SecantusDB 0.7 (the embedded store) deadlocks a ``dropDatabase`` that meets a
    document written by a still-open transaction: the drop retries its removal while
    holding the storage lock, so the transaction (a session worker settling the
    previous test's jobs) can neither commit nor abort, and the fixture hangs forever
    (seen in CI-sized runs, store at 100% CPU). ``killAllSessions`` aborts every open
    transaction, which frees the drop; the settler's transaction is retried as after
    any transient error. Real MongoDB would abort the transaction on the drop itself.
    """
    done = threading.Event()

    def unblock() -> None:
        while not done.wait(UNBLOCK_EVERY):
            try:
                db.client.admin.command("killAllSessions", [])
            except Exception:  # noqa: BLE001 - best effort; the next round tries again
                pass

    watchdog = threading.Thread(target=unblock, name="drop-unblock", daemon=True)
    watchdog.start()
    try:
        db.client.drop_database(db.name)
    finally:
        done.set()
        watchdog.join()
