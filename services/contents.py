"""Premium content: publishing, lookup and who may see it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo.database import Database

from ledger.states import SubscriptionStatus
from ledger.timeutil import utcnow
from services.known_facts import KnownFacts


def publish(db: Database, creator_id: str, title: str, price: int) -> dict[str, Any]:
    """Store a new active content of ``creator_id``; the stored document."""
    doc = {"_id": str(ObjectId()), "creatorId": creator_id, "title": title, "price": price,
           "isActive": True, "createdAt": utcnow()}
    db.contents.insert_one(doc)
    return doc


def active_content(db: Database, content_id: str) -> dict[str, Any] | None:
    return db.contents.find_one({"_id": content_id, "isActive": True})


# A content keeps its creator, and nothing in Purser deactivates one (settlement reads
# the content again and fails an unlock of an inactive one), so the unlock's accept path
# reads the store only for a content it has not seen.
KNOWN_CONTENTS_MAX = 100_000
_creators: KnownFacts[str] = KnownFacts("content_creators", KNOWN_CONTENTS_MAX)


def active_creator(db: Database, content_id: str) -> str | None:
    """The creator of the active content ``content_id``, or None; at most one read per process."""
    def read() -> str | None:
        doc = db.contents.find_one({"_id": content_id, "isActive": True}, {"creatorId": 1})
        return doc["creatorId"] if doc else None

    return _creators.get(content_id, read)


def forget_known_contents() -> None:
    """Empty the cache of content creators (tests that drop the database)."""
    _creators.clear()


def has_access(db: Database, user_id: str, content: dict[str, Any], now: datetime | None = None) -> bool:
    """Unlocked, or an active subscriber of the content's creator, or its creator."""
    if content["creatorId"] == user_id:
        return True
    if db.unlocks.find_one({"userId": user_id, "contentId": content["_id"]}, {"_id": 1}):
        return True
    return db.subscriptions.find_one(
        {"subscriberId": user_id, "creatorId": content["creatorId"], "status": SubscriptionStatus.ACTIVE,
         "expiresAt": {"$gt": now or utcnow()}}, {"_id": 1}) is not None


def content_view(content: dict[str, Any]) -> dict[str, Any]:
    return {"contentId": content["_id"], "creatorId": content["creatorId"], "title": content["title"],
            "price": content["price"]}

