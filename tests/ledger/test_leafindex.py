"""Finding entries by leaf hash: the in-memory index (sorted arrays + tail), its folds, 8-byte
key collisions, and a log that keeps deduplicating across folds and reopenings."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from ledger.home import DATABASE, open_log
from ledger.leafindex import LeafIndex
from ledger.log import LAYOUT
from ledger.verify import verify_receipt

from .conftest import PASSPHRASE, grant_event


def _leaf(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


@pytest.fixture()
def small_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fold every 64 entries instead of every 65,536, so tests cross many folds quickly.
    monkeypatch.setattr("ledger.leafindex.fold_threshold", lambda size: 64)


def _index(leaves: list[bytes], batch: int) -> tuple[LeafIndex, bytearray]:
    packed = bytearray()
    index = LeafIndex(packed, 32)
    for start in range(0, len(leaves), batch):
        chunk = leaves[start : start + batch]
        packed += b"".join(chunk)
        index.add(chunk, start)
    return index, packed


def test_every_leaf_is_found_in_the_tail_and_after_folds(small_folds: None) -> None:
    leaves = [_leaf(i) for i in range(1000)]
    index, packed = _index(leaves, 37)
    assert index.nbytes > 0  # folds happened: most keys live in the sorted arrays
    assert [index.find(h) for h in leaves] == list(range(1000))
    assert index.find(_leaf(5000)) is None
    assert index.find(b"short") is None
    assert index.find_many([_leaf(3), _leaf(5000), _leaf(999)]) == {_leaf(3): 3, _leaf(999): 999}
    rebuilt = LeafIndex(packed, 32)
    rebuilt.rebuild(1000)
    assert [rebuilt.find(h) for h in leaves[::97]] == list(range(0, 1000, 97))


def test_leaves_sharing_their_first_8_bytes_are_told_apart(small_folds: None) -> None:
    # Same 8-byte key, different hashes: the key narrows the search, the full hash decides.
    twins = [bytes(8) + _leaf(i)[8:] for i in range(5)]
    leaves = [_leaf(i) for i in range(200)]
    leaves[10], leaves[90], leaves[150] = twins[0], twins[1], twins[2]
    index, _ = _index(leaves, 50)
    assert index.find(twins[0]) == 10 and index.find(twins[1]) == 90
    assert index.find(twins[2]) == 150 and index.find(twins[3]) is None


def test_truncate_forgets_entries_in_the_tail_and_in_the_arrays(small_folds: None) -> None:
    leaves = [_leaf(i) for i in range(300)]
    index, _ = _index(leaves, 30)
    index.truncate(280)
    assert index.find(leaves[279]) == 279 and index.find(leaves[285]) is None
    index.truncate(100)
    assert index.find(leaves[99]) == 99 and index.find(leaves[150]) is None


def test_log_deduplicates_across_folds_and_reopening(small_folds: None, ledger_home) -> None:
    home, public = ledger_home
    events = [grant_event(i) for i in range(500)]
    with open_log(home, PASSPHRASE) as log:
        for start in range(0, 500, 45):
            log.append(events[start : start + 45])
        again = log.append([events[3], events[250], events[499], grant_event(9999)])
        assert [r.index for r in again] == [3, 250, 499, 500] and log.size == 501
    with open_log(home, PASSPHRASE) as log:
        assert log.append([events[17]])[0].index == 17 and log.size == 501
        receipt = log.receipt(again[1].entry_hash)
        assert receipt.index == 250 and verify_receipt(receipt, public).checkpoint.size == 501


def test_layout_1_database_is_upgraded_when_opened(ledger_home) -> None:
    home, public = ledger_home
    # Built once: an event's time is part of it, so rebuilding could cross a second boundary.
    events = [grant_event(i) for i in range(30)]
    with open_log(home, PASSPHRASE) as log:
        first = log.append(events[:20])
    # Turn the file back into layout 1: a leaf_key column with an index, no layout mark.
    with sqlite3.connect(home / DATABASE) as db:
        db.execute("ALTER TABLE entries ADD COLUMN leaf_key INTEGER NOT NULL DEFAULT 0")
        db.execute("UPDATE entries SET leaf_key = idx * 7")
        db.execute("CREATE INDEX entries_by_leaf_key ON entries (leaf_key)")
        db.execute("DELETE FROM meta WHERE key = 'layout'")
    with open_log(home, PASSPHRASE) as log:
        more = log.append(events[15:30])
        assert [r.index for r in more] == [*range(15, 20), *range(20, 30)]
        assert verify_receipt(log.receipt(first[4].entry_hash), public).checkpoint.size == 30
    with sqlite3.connect(home / DATABASE) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(entries)")]
        layout = db.execute("SELECT value FROM meta WHERE key = 'layout'").fetchone()[0]
    assert columns == ["idx", "leaf_hash", "entry"] and layout == LAYOUT
