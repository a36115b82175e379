"""The field types the request and response models share, validated strictly.

Strict types refuse ``true``, ``1.5``, ``"10"`` where an integer is expected; ids
have a fixed shape so an object such as ``{"$ne": null}`` can never reach a MongoDB
filter; statuses and roles are the values of ``ledger/states.py``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ledger import states
from ledger.money import MAX_AMOUNT

Id = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{24}$", strict=True)]
STRICT_INTEGER = ("A JSON integer: `1.0`, `\"1\"` and `true` are refused with 422 VALIDATION_FAILED, although "
                  "JSON Schema counts `1.0` as an integer.")
Amount = Annotated[int, Field(strict=True, ge=1, le=MAX_AMOUNT,
                              description=f"Coins (integer minor units), 1 to {MAX_AMOUNT}. {STRICT_INTEGER}")]
# ``\s`` differs between the engines that read this pattern (Python's and Rust's include
# U+0085, ECMA-262's, which OpenAPI clients use, includes U+FEFF instead): both are named.
# Surrounding white space is stripped (Rust's ``trim``, pydantic-core) before the pattern,
# so the documented pattern allows exactly those characters around the address.
_NOT_IN_EMAIL = r"[^@\s\x00-\x1f\x85\ufeff]"
_TRIMMED = r"[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*"
Email = Annotated[str, StringConstraints(strict=True, min_length=3, max_length=254, strip_whitespace=True,
                                         pattern=rf"^{_TRIMMED}{_NOT_IN_EMAIL}+@{_NOT_IN_EMAIL}+\.{_NOT_IN_EMAIL}+"
                                                 rf"{_TRIMMED}$")]
Text = Annotated[str, StringConstraints(strict=True, max_length=500)]


def one_of(states_enum: type[StrEnum]) -> Any:
    """``Literal`` of the enum's values: strict validation of plain JSON strings, an ``enum``
    in the OpenAPI document, and one source of truth (``ledger/states.py``)."""
    return Literal[tuple(member.value for member in states_enum)]


Role = one_of(states.Role)
JobStatus = one_of(states.JobStatus)
WalletStatus = one_of(states.WalletStatus)
SubscriptionStatus = one_of(states.SubscriptionStatus)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
