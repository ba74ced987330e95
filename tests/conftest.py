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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` first, those allowed the longest timeout (the demo: 3-6 minutes)
    before the others: under ``make test``'s ``--dist worksteal`` the worker that starts the
    demo has its other tests taken over by the worker that runs out, instead of the demo
    starting last and running alone."""

    def allowed(item: pytest.Item) -> float:
        marker = item.get_closest_marker("timeout")
        return float(marker.args[0]) if marker and marker.args else 0.0

    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, -allowed(item)))
