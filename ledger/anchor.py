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
  chain, or a production chain. With an operator key (``AnchorKey``, kept encrypted in the
  ledger home in the Web3 Secret Storage v3 format), transactions are built here (nonce,
  EIP-155 chain id, gas estimate, EIP-1559 fees when the chain has a base fee), signed locally
  (eth-account) and sent with ``eth_sendRawTransaction``: the node never holds the key. Without
  one, the node's first unlocked account (``eth_accounts[0]``) signs: dev chains only.

Requests go through a durable queue in SQLite: when the chain is unreachable, they stay queued
with the error and are retried on the next run, so no anchor request is lost.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
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
    """Writes queued tree heads to a chain; ``run_once`` never raises on chain failures.

    ``account``: the operator's key (signs locally); None uses the node's ``eth_accounts[0]``.
    ``chain_id``: the chain the operator means to anchor to; an RPC serving another chain is
    refused before anything is signed.
    """

    def __init__(
        self,
        store: AnchorStore,
        web3_factory: Callable[[], Any],
        origin: str,
        *,
        account: LocalAccount | None = None,
        chain_id: int | None = None,
    ) -> None:
        self.store = store
        self.origin = origin
        self.account = account
        self.chain_id = chain_id
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
            chain_id = int(w3.eth.chain_id)
            if self.chain_id is not None and chain_id != self.chain_id:
                raise AnchorError(
                    f"the RPC serves chain id {chain_id} but anchors are configured for chain id "
                    f"{self.chain_id}: fix --chain-rpc or the anchor key's chain id"
                )
            if self.account is None:
                sender = w3.eth.accounts[0]
                tx_hash = w3.eth.send_transaction(
                    {"from": sender, "to": sender, "value": 0, "data": payload}
                )
            else:
                tx_hash = self._send_signed(w3, chain_id, payload)
            receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RPC_TIMEOUT_SECONDS * 3)
        except CHAIN_ERRORS as exc:
            # Any of these means "not anchored this time": the request stays queued.
            raise AnchorError(
                f"the chain is unreachable or refused the anchor: {_brief(exc)}"
            ) from exc
        if receipt["status"] != 1:
            raise AnchorError("the anchor transaction was mined but reverted")
        return Anchor(chain_id, "0x" + bytes(tx_hash).hex(), int(receipt["blockNumber"]),
                      checkpoint.size, checkpoint.root, note)

    def _send_signed(self, w3: Any, chain_id: int, payload: bytes) -> bytes:
        """Build, sign locally and send the anchor transaction from the operator's account."""
        assert self.account is not None
        address = self.account.address
        tx: dict[str, Any] = {"from": address, "to": address, "value": 0, "data": payload}
        # Estimated before fees are set, so that an unfunded account gets the clear error below
        # rather than the node's "insufficient funds" from the estimate.
        tx["gas"] = int(w3.eth.estimate_gas(tx) * 6 // 5)  # 20% headroom over the estimate
        tx.update(_fees(w3))
        # "pending": a sent-but-unmined anchor of ours must not have its nonce reused.
        tx["nonce"] = w3.eth.get_transaction_count(address, "pending")
        tx["chainId"] = chain_id
        price = tx.get("maxFeePerGas", tx.get("gasPrice", 0))
        balance = int(w3.eth.get_balance(address))
        if balance < tx["gas"] * price:
            raise AnchorError(
                f"the anchoring account {address} holds {balance} wei on chain {chain_id} but "
                f"an anchor may cost up to {tx['gas'] * price} wei: fund the account"
            )
        signed = self.account.sign_transaction(tx)
        return bytes(w3.eth.send_raw_transaction(signed.raw_transaction))

    def verify(self, anchor: Anchor) -> None:
        verify_on_chain(anchor, self._web3(), self.origin)


def _fees(w3: Any) -> dict[str, int]:
    """EIP-1559 fees when the chain has a base fee (twice it, plus the tip), else a gas price."""
    base_fee = w3.eth.get_block("latest").get("baseFeePerGas")
    if base_fee is None:
        return {"gasPrice": int(w3.eth.gas_price)}
    tip = int(w3.eth.max_priority_fee)
    return {"maxFeePerGas": 2 * int(base_fee) + tip, "maxPriorityFeePerGas": tip}


class AnchorKey:
    """The operator's anchoring account: a secp256k1 key in a Web3 Secret Storage (v3)
    keystore file, the format geth, foundry (``cast wallet``) and most wallets read and write,
    so an operator can bring an existing funded account or back the key up with those tools."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.exists()

    def address(self) -> str:
        """The account's address (readable without the passphrase)."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            return to_checksum_address("0x" + str(doc["address"]).removeprefix("0x"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AnchorError(f"{self.path} is not an anchor keystore") from exc

    def save(self, private_key: bytes, passphrase: str) -> str:
        """Encrypt ``private_key`` under ``passphrase`` (scrypt) and write it with mode 0600."""
        from consent.keystore import write_private_file

        if self.path.exists():
            raise AnchorError(f"{self.path} exists already: the anchor key is never overwritten")
        document = Account.encrypt(private_key, passphrase, kdf="scrypt")
        write_private_file(self.path, (json.dumps(document, indent=2) + "\n").encode())
        return Account.from_key(private_key).address

    def generate(self, passphrase: str) -> str:
        return self.save(bytes(Account.create().key), passphrase)

    def load(self, passphrase: str) -> LocalAccount:
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise AnchorError(
                f"{self.path} is missing: create it with 'sov-ledger anchor-key generate'"
            ) from exc
        except (OSError, ValueError) as exc:
            raise AnchorError(f"cannot read {self.path} as a keystore") from exc
        return Account.from_key(decrypt_keystore(document, passphrase, str(self.path)))


def decrypt_keystore(document: Any, passphrase: str, name: str) -> bytes:
    """The private key in a v3 keystore; one clear error for a wrong passphrase or bad file."""
    try:
        return bytes(Account.decrypt(document, passphrase))
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise AnchorError(f"cannot open {name}: wrong passphrase") from exc
        raise AnchorError(f"{name} is not a valid v3 keystore") from exc
    except (KeyError, TypeError, AttributeError) as exc:
        raise AnchorError(f"{name} is not a valid v3 keystore") from exc


def read_private_key(path: Path, passphrase: str) -> bytes:
    """A private key from FILE: a v3 keystore (opened with ``passphrase``) or 64 hex digits."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AnchorError(f"cannot read the key file {path}") from exc
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise AnchorError(f"{path} is neither a v3 keystore nor a hex private key") from exc
        return decrypt_keystore(document, passphrase, str(path))
    hex_text = text.removeprefix("0x")
    if len(hex_text) != 64:
        raise AnchorError(f"{path} is neither a v3 keystore nor a 32-byte hex private key")
    try:
        return bytes.fromhex(hex_text)
    except ValueError as exc:
        raise AnchorError(f"{path} is neither a v3 keystore nor a 32-byte hex private key") from exc


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


def anchorer_for_home(home: Path, chain_rpc: str | None, origin: str,
                      passphrase: str) -> tuple[Anchorer, bool]:
    """The anchorer of a ledger home (``sov-ledger serve`` and a coordinator hosting the
    ledger both use it) and whether it anchors to the embedded, forgetful chain.

    ``chain_rpc`` overrides the home's configured RPC; without any, the embedded in-process
    EVM. The operator's anchor key (if the home has one) signs for a real chain only.
    """
    from ledger.home import ANCHOR_KEY, ANCHORS, load_config

    config = load_config(home)
    url = chain_rpc or config.chain_rpc
    if url is None:
        # The embedded chain funds only its own dev accounts: the operator key is for real
        # chains, so it stays unused (and locked) here.
        return Anchorer(AnchorStore(Path(home) / ANCHORS), embedded_web3, origin), True
    key = AnchorKey(Path(home) / ANCHOR_KEY)
    account = key.load(passphrase) if key.exists() else None
    return Anchorer(AnchorStore(Path(home) / ANCHORS), lambda: rpc_web3(url), origin,
                    account=account, chain_id=config.anchor_chain_id), False
