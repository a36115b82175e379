"""The per-process cache of stored roles: at most ROLE_CACHE_SECONDS old, bounded in size."""

from __future__ import annotations

import pytest

import api.auth as auth
from api.auth import RoleCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(auth.time, "monotonic", fake)
    return fake


class Store:
    """The 'users collection': what load_stored_role answers, and how often it is asked."""

    def __init__(self) -> None:
        self.roles: dict[str, str | None] = {}
        self.reads: list[str] = []

    def load(self, user_id: str) -> str | None:
        self.reads.append(user_id)
        return self.roles.get(user_id)


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Store:
    fake = Store()
    monkeypatch.setattr(auth, "load_stored_role", fake.load)
    monkeypatch.setattr(auth, "ROLE_CACHE", RoleCache())
    return fake


def test_a_demotion_is_seen_within_the_cache_time(clock: Clock, store: Store) -> None:
    store.roles["u1"] = "admin"
    assert auth.stored_role("u1", 5) == "admin"
    store.roles["u1"] = "free"  # demoted by another process
    clock.now += 4.9
    assert auth.stored_role("u1", 5) == "admin"  # still cached
    clock.now += 0.1
    assert auth.stored_role("u1", 5) == "free"
    assert store.reads == ["u1", "u1"]


def test_a_zero_cache_time_reads_every_time(clock: Clock, store: Store) -> None:
    store.roles["u1"] = "admin"
    assert auth.stored_role("u1", 0) == "admin"
    store.roles["u1"] = "free"
    assert auth.stored_role("u1", 0) == "free"
    assert store.reads == ["u1", "u1"]


def test_unknown_users_are_cached_too(clock: Clock, store: Store) -> None:
    assert auth.stored_role("ghost", 5) is None
    assert auth.stored_role("ghost", 5) is None
    assert store.reads == ["ghost"]


def test_forget_drops_one_entry(clock: Clock, store: Store) -> None:
    store.roles["u1"] = "admin"
    auth.stored_role("u1", 5)
    store.roles["u1"] = "free"
    auth.forget_role("u1")
    assert auth.stored_role("u1", 5) == "free"


def test_the_cache_is_bounded(clock: Clock) -> None:
    cache = RoleCache(max_entries=3)
    for n in range(3):
        cache.put(f"u{n}", "free", 5)
    clock.now += 6  # all expired: the next insert prunes them
    cache.put("u3", "free", 5)
    assert cache.get("u0", 5) == (False, None)
    assert cache.get("u3", 5) == (True, "free")
    for n in range(4, 7):
        cache.put(f"u{n}", "free", 5)  # full of live entries: cleared rather than grown
    assert len(cache._entries) <= 3


def test_a_role_read_before_an_invalidation_is_not_cached(clock: Clock, store: Store,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The invalidation of a change lands while this process reads the old role: not cached."""
    store.roles["u1"] = "free"

    def read_then_invalidated(user_id: str) -> str | None:
        role = store.load(user_id)  # the old role, read just before the change committed
        store.roles["u1"] = "creator"
        auth.forget_role("u1")  # api/user_changes: the announcement arrives
        return role

    monkeypatch.setattr(auth, "load_stored_role", read_then_invalidated)
    assert auth.stored_role("u1", 5) == "free"  # this request saw the old role...
    monkeypatch.setattr(auth, "load_stored_role", store.load)
    assert auth.stored_role("u1", 5) == "creator"  # ...but the next one reads again


def test_a_resubscription_forgets_every_role(clock: Clock, store: Store) -> None:
    store.roles.update(u1="admin", u2="admin")
    auth.stored_role("u1", 5), auth.stored_role("u2", 5)
    store.roles.update(u1="free", u2="free")
    auth.forget_all_roles()  # announcements may have been missed while Redis was away
    assert (auth.stored_role("u1", 5), auth.stored_role("u2", 5)) == ("free", "free")
