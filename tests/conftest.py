"""Fixtures shared by every test package."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder (vectors and datasets), read in place."""
    if not SHARED.is_dir():
        raise RuntimeError(f"{SHARED} is missing: clone the project next to its shared/ folder")
    return SHARED
