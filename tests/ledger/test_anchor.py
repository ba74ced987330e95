"""Chain anchoring against the in-process EVM (eth-tester) and a real anvil process."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import Web3

from ledger.anchor import (
    Anchorer,
    AnchorScheduler,
    AnchorStore,
    embedded_web3,
    rpc_web3,
    verify_on_chain,
)
from ledger.log import Log
from ledger.models import Anchor
from ledger.verify import CheckFailed, verify_receipt
from protos.transport import free_port

from .conftest import grant_event

REPO = Path(__file__).resolve().parents[2]
ANVIL = REPO / "node_modules" / ".bin" / "anvil"


class AnvilProcess:
    """A real anvil JSON-RPC node on 127.0.0.1 whose chain persists in ``state``."""

    def __init__(self, state: Path, *extra_args: str) -> None:
        if not ANVIL.exists():
            raise RuntimeError(f"{ANVIL} is missing: run 'make anvil' to install it")
        self.state = state
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_args = list(extra_args)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(ANVIL), "--port", str(self.port), "--state", str(self.state), "--silent",
             *self.extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if Web3(Web3.HTTPProvider(self.url)).is_connected():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("anvil did not start within 30 s")

    def stop(self) -> None:
        if self.proc is not None:
            # SIGTERM lets anvil write its --state file before exiting.
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture()
def anvil(tmp_path: Path) -> Iterator[AnvilProcess]:
    node = AnvilProcess(tmp_path / "anvil-state.json")
    node.start()
    yield node
    node.stop()


def _anchor_latest(log: Log, anchorer: Anchorer) -> Anchor:
    assert anchorer.store.request(log.latest_note())
    written, errors = anchorer.run_once()
    assert errors == [] and len(written) == 1
    return written[0]


def test_anchor_on_embedded_evm_and_receipt_links_to_it(log: Log, ledger_home, tmp_path) -> None:
    store = AnchorStore(tmp_path / "anchors.db")
    anchorer = Anchorer(store, embedded_web3, log.origin)
    receipts = log.append([grant_event(i) for i in range(6)])
    anchor = _anchor_latest(log, anchorer)
    assert (anchor.size, anchor.root) == (6, log.tree.root())
    anchorer.verify(anchor)
    log.append([grant_event(i) for i in range(6, 13)])
    receipt = log.receipt(receipts[2].entry_hash, anchors=store.anchors())
    assert verify_receipt(receipt, ledger_home[1]).anchored_sizes == (6,)
    assert store.request(log.note_at(6)) is False  # anchored already: not queued twice


@pytest.mark.parametrize("field", ["root", "size", "tx_hash", "block_number", "chain_id"])
def test_tampered_anchor_is_rejected(log: Log, tmp_path: Path, field: str) -> None:
    anchorer = Anchorer(AnchorStore(tmp_path / "anchors.db"), embedded_web3, log.origin)
    log.append([grant_event(i) for i in range(4)])
    anchor = _anchor_latest(log, anchorer)
    changes = {
        "root": {"root": bytes([anchor.root[0] ^ 1]) + anchor.root[1:]},
        "size": {"size": anchor.size + 1},
        "tx_hash": {"tx_hash": anchor.tx_hash[:-1] + ("0" if anchor.tx_hash[-1] != "0" else "1")},
        "block_number": {"block_number": anchor.block_number + 1},
        "chain_id": {"chain_id": anchor.chain_id + 1},
    }[field]
    forged = Anchor(**{**anchor.__dict__, **changes})
    with pytest.raises(CheckFailed) as failure:
        anchorer.verify(forged)
    assert failure.value.check == "chain anchor"


def test_anvil_anchor_survives_restart_and_queue_waits_for_the_chain(
    log: Log, tmp_path: Path, anvil: AnvilProcess
) -> None:
    store = AnchorStore(tmp_path / "anchors.db")
    anchorer = Anchorer(store, lambda: rpc_web3(anvil.url), log.origin)
    log.append([grant_event(i) for i in range(5)])
    first = _anchor_latest(log, anchorer)
    verify_on_chain(first, rpc_web3(anvil.url), log.origin)

    anvil.stop()  # the chain goes away: the request must wait, not vanish
    log.append([grant_event(i) for i in range(5, 9)])
    assert store.request(log.latest_note())
    written, errors = anchorer.run_once()
    assert written == [] and len(errors) == 1 and "unreachable" in errors[0]
    [(size, _, attempts, last_error)] = store.pending()
    assert (size, attempts) == (9, 1) and last_error

    # A new anchorer process (fresh queue handle on the same file) finishes the job.
    anvil.start()
    retry = Anchorer(AnchorStore(tmp_path / "anchors.db"), lambda: rpc_web3(anvil.url), log.origin)
    written, errors = retry.run_once()
    assert errors == [] and [a.size for a in written] == [9]
    assert store.pending() == []
    # The first anchor is still on the restarted chain thanks to anvil --state.
    for anchor in store.anchors():
        verify_on_chain(anchor, rpc_web3(anvil.url), log.origin)


def test_scheduler_anchors_on_its_interval(log: Log, tmp_path: Path) -> None:
    store = AnchorStore(tmp_path / "anchors.db")
    scheduler = AnchorScheduler(Anchorer(store, embedded_web3, log.origin), log.latest_note, 0.2)
    log.append([grant_event(i) for i in range(3)])
    scheduler.start()
    try:
        deadline = time.monotonic() + 20
        while not store.anchors() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        scheduler.stop()
    assert [a.size for a in store.anchors()] == [3]
