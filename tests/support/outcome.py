"""Whether a test's call phase failed, for fixtures that keep evidence at teardown
(a browser's screenshot, a chaos stack's logs and stacks). The hook that sets it lives in
``tests/conftest.py``."""

from __future__ import annotations

import pytest

FAILED = pytest.StashKey[bool]()


def failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test ``request`` belongs to failed in its call phase."""
    return request.node.stash.get(FAILED, False)
