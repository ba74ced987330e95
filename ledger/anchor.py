"""Anchoring signed tree heads to an Ethereum-compatible chain (JSON-RPC, through web3).

An anchor is a zero-value transaction from the anchoring account to itself whose ``data`` is

    b"sov-ledger-anchor/v1" || SHA-256(origin) || uint64_be(tree size) || root hash

so it binds the root to one log and one size. Anyone holding the tree head can later find
the transaction and check that the chain has carried this root since that block.

Chains:
- embedded default: an in-process EVM (eth-tester with py-evm). It lives only as long as the
  process and forgets its chain on restart, so its anchors prove nothing after that: use it
  for tests and the demo only.
- any JSON-RPC URL: anvil (``node_modules/.bin/anvil --state FILE`` keeps its chain), a dev
  chain, or a production chain. The account must be unlocked on the node (``eth_accounts``).

Requests go through a durable queue in SQLite: when the chain is unreachable, they stay queued
with the error and are retried on the next run, so no anchor request is lost.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from web3.exceptions import Web3Exception

from ledger.errors import AnchorError
from ledger.models import Anchor
from ledger.note import Checkpoint
from ledger.verify import CheckFailed

MAGIC = b"sov-ledger-anchor/v1"
RPC_TIMEOUT_SECONDS = 10
# web3's own errors (not found, timeouts, RPC errors) plus transport errors: requests'
# ConnectionError is an OSError; malformed hashes raise ValueError.
CHAIN_ERRORS = (Web3Exception, OSError, ValueError, IndexError, TimeoutError)

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    size INTEGER PRIMARY KEY,
    checkpoint TEXT NOT NULL,
    requested TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS anchors (
    size INTEGER PRIMARY KEY,
    chain_id INTEGER NOT NULL,
    tx_hash TEXT NOT NULL,
    block_number INTEGER NOT NULL,
    root BLOB NOT NULL,
    checkpoint TEXT NOT NULL,
    anchored TEXT NOT NULL
);
"""


def anchor_payload(origin: str, size: int, root: bytes) -> bytes:
    return MAGIC + hashlib.sha256(origin.encode()).digest() + size.to_bytes(8, "big") + root


def embedded_web3() -> Any:
    """A web3 client on a fresh in-process EVM (forgotten when the process ends)."""
    from web3 import Web3

    return Web3(Web3.EthereumTesterProvider())


def rpc_web3(url: str) -> Any:
    from web3 import Web3

    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": RPC_TIMEOUT_SECONDS}))


def _checkpoint(note: str) -> Checkpoint:
    return Checkpoint.parse(note.split("\n\n")[0] + "\n")


class AnchorStore:
    """The durable queue of anchor requests and the list of anchors written."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def request(self, note: str) -> bool:
        """Queue a signed tree head for anchoring; False if it is anchored or queued already."""
        size = _checkpoint(note).size
        with self._lock:
            if size == 0 or self._db.execute(
                "SELECT 1 FROM anchors WHERE size = ?", (size,)
            ).fetchone():
                return False
            cur = self._db.execute(
                "INSERT OR IGNORE INTO queue (size, checkpoint, requested) VALUES (?, ?, ?)",
                (size, note, datetime.now(UTC).isoformat()),
            )
            return cur.rowcount == 1

    def pending(self) -> list[tuple[int, str, int, str | None]]:
        with self._lock:
            return self._db.execute(
                "SELECT size, checkpoint, attempts, last_error FROM queue ORDER BY size"
            ).fetchall()

    def record(self, anchor: Anchor) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO anchors VALUES (?, ?, ?, ?, ?, ?, ?)",
                (anchor.size, anchor.chain_id, anchor.tx_hash, anchor.block_number,
                 anchor.root, anchor.checkpoint, datetime.now(UTC).isoformat()),
            )
            self._db.execute("DELETE FROM queue WHERE size = ?", (anchor.size,))
            self._db.execute("COMMIT")

    def failed(self, size: int, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE queue SET attempts = attempts + 1, last_error = ? WHERE size = ?",
                (error, size),
            )

    def anchors(self, min_size: int = 0) -> list[Anchor]:
        with self._lock:
            rows = self._db.execute(
                "SELECT chain_id, tx_hash, block_number, size, root, checkpoint FROM anchors "
                "WHERE size >= ? ORDER BY size",
                (min_size,),
            ).fetchall()
        return [Anchor(c, t, b, s, bytes(r), n) for c, t, b, s, r, n in rows]


class Anchorer:
    """Writes queued tree heads to a chain; ``run_once`` never raises on chain failures."""

    def __init__(self, store: AnchorStore, web3_factory: Callable[[], Any], origin: str) -> None:
        self.store = store
        self.origin = origin
        self._factory = web3_factory
        self._w3: Any = None
        self._lock = threading.Lock()

    def _web3(self) -> Any:
        if self._w3 is None:
            self._w3 = self._factory()
        return self._w3

    def run_once(self) -> tuple[list[Anchor], list[str]]:
        """Try every queued request once; return (anchors written, errors)."""
        written: list[Anchor] = []
        errors: list[str] = []
        with self._lock:
            for size, note, _, _ in self.store.pending():
                try:
                    anchor = self._send(note)
                except AnchorError as exc:
                    self.store.failed(size, str(exc))
                    errors.append(str(exc))
                    continue
                self.store.record(anchor)
                written.append(anchor)
        return written, errors

    def _send(self, note: str) -> Anchor:
        checkpoint = _checkpoint(note)
        payload = anchor_payload(self.origin, checkpoint.size, checkpoint.root)
        try:
            w3 = self._web3()
            account = w3.eth.accounts[0]
            tx_hash = w3.eth.send_transaction(
                {"from": account, "to": account, "value": 0, "data": payload}
            )
            receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RPC_TIMEOUT_SECONDS * 3)
            chain_id = int(w3.eth.chain_id)
        except CHAIN_ERRORS as exc:
            # Any of these means "not anchored this time": the request stays queued.
            raise AnchorError(
                f"the chain is unreachable or refused the anchor: {_brief(exc)}"
            ) from exc
        if receipt["status"] != 1:
            raise AnchorError("the anchor transaction was mined but reverted")
        return Anchor(chain_id, "0x" + bytes(tx_hash).hex(), int(receipt["blockNumber"]),
                      checkpoint.size, checkpoint.root, note)

    def verify(self, anchor: Anchor) -> None:
        verify_on_chain(anchor, self._web3(), self.origin)


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def verify_on_chain(anchor: Anchor, w3: Any, origin: str) -> None:
    """Raise ``CheckFailed("chain anchor", ...)`` unless the chain carries this anchor."""
    try:
        chain_id = int(w3.eth.chain_id)
        tx = w3.eth.get_transaction(anchor.tx_hash)
        receipt = w3.eth.get_transaction_receipt(anchor.tx_hash)
    except CHAIN_ERRORS as exc:
        # Not found, malformed hash, or no connection: all mean the anchor is not confirmed.
        raise CheckFailed(
            "chain anchor", f"transaction {anchor.tx_hash} not found on the chain ({_brief(exc)})"
        ) from exc
    if chain_id != anchor.chain_id:
        raise CheckFailed(
            "chain anchor", f"the RPC serves chain {chain_id}, the anchor is on {anchor.chain_id}"
        )
    if receipt["status"] != 1 or tx["blockNumber"] != anchor.block_number:
        raise CheckFailed("chain anchor", "the transaction is not mined in the anchor's block")
    if bytes(tx["input"]) != anchor_payload(origin, anchor.size, anchor.root):
        raise CheckFailed(
            "chain anchor", "the transaction's data does not carry this log's root and size"
        )


class AnchorScheduler:
    """Background thread: queue the latest tree head and run the anchorer every interval."""

    def __init__(
        self, anchorer: Anchorer, latest_note: Callable[[], str], interval_seconds: float
    ) -> None:
        self.anchorer = anchorer
        self._latest = latest_note
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-anchor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def anchor_now(self) -> tuple[list[Anchor], list[str]]:
        self.anchorer.store.request(self._latest())
        return self.anchorer.run_once()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.anchor_now()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=RPC_TIMEOUT_SECONDS * 4)
