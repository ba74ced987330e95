"""Fixtures for the ledger tests: a fresh ledger home with an open log, and signed entries
(ledger.authority) by a registered test node and by customers' per-grant keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consent.identity import Identity
from ledger.authority import endorse_entry, sign_entry
from ledger.authors import AuthorRegistry
from ledger.events import make_event
from ledger.home import init_home, open_authors, open_log
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


# Fixed seeds: the same test node in every test (and in subprocesses), still a real key.
NODE = Identity.from_seed(bytes(range(32)))
OTHER_NODE = Identity.from_seed(bytes(range(1, 33)))


def node_head(i: int, node: Identity = NODE) -> dict[str, Any]:
    """An access_head entry signed by ``node`` (a party: one signature)."""
    event = make_event("access_head", node=node.did, head=f"{i:064x}", sequence=i + 1)
    return sign_entry(event, node)


def customer_grant(
    i: int, node: Identity = NODE, key: Identity | None = None, **fields: Any
) -> dict[str, Any]:
    """A customer's grant entry: signed by a per-grant key, endorsed by the node it names."""
    key = key or Identity.from_seed(i.to_bytes(32, "big"))
    event = {**grant_event(i), "nodes": [node.did], "endorser": node.did, **fields}
    return endorse_entry(sign_entry(event, key), node)


@pytest.fixture()
def authors(ledger_home: tuple[Path, LogPublicKey]) -> Iterator[AuthorRegistry]:
    """The home's registry with ``NODE`` registered as a node."""
    registry = open_authors(ledger_home[0])
    registry.add(NODE.did, "test node", "node")
    yield registry
    registry.close()


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
