"""Fixtures for the ledger tests: a fresh ledger home with an open log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.events import make_event
from ledger.home import init_home, open_log
from ledger.log import Log
from ledger.models import LogPublicKey

PASSPHRASE = "correct horse battery staple"
ORIGIN = "ledger.test.example/log"


def grant_event(i: int) -> dict[str, Any]:
    return make_event(
        "grant",
        grant_digest=f"{i:064x}",
        subject_commitment=f"{i * 7919:064x}",
        purpose="quote-generation",
        scopes=["transaction"],
    )


@pytest.fixture()
def ledger_home(tmp_path: Path) -> tuple[Path, LogPublicKey]:
    home = tmp_path / "ledger"
    public = init_home(home, origin=ORIGIN, passphrase=PASSPHRASE)
    return home, public


@pytest.fixture()
def log(ledger_home: tuple[Path, LogPublicKey]) -> Iterator[Log]:
    opened = open_log(ledger_home[0], PASSPHRASE)
    yield opened
    opened.close()
