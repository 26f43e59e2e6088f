"""Shared fixtures."""

from __future__ import annotations

import pytest

from headwater_runtime.embedded import PROCESS_CACHE


@pytest.fixture(autouse=True)
def _fresh_process_cache() -> None:
    """Each test starts with an empty embedded result cache."""
    PROCESS_CACHE.clear()
