"""The SQLite-backed log: receipts verify, tampering is caught, restarts keep everything."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest

from consent.errors import KeystoreError
from ledger.errors import EventError, StorageError
from ledger.events import make_event, subject_commitment, validate_event
from ledger.home import DATABASE, open_log
from ledger.log import Log
from ledger.models import LogPublicKey, Receipt
from ledger.verify import CheckFailed, verify_consistency_proof, verify_receipt

from .conftest import PASSPHRASE, grant_event


def _flip_b64(value: str) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode()


def test_every_receipt_of_a_batch_verifies(log: Log, ledger_home) -> None:
    receipts = log.append([grant_event(i) for i in range(37)])
    assert [r.index for r in receipts] == list(range(37))
    for receipt in receipts:
        result = verify_receipt(Receipt.loads(receipt.dumps()), ledger_home[1])
        assert result.checkpoint.size == 37


def test_receipt_by_entry_hash_tracks_the_latest_tree_head(log: Log, ledger_home) -> None:
    first = log.append([grant_event(1)])[0]
    log.append([grant_event(i) for i in range(2, 10)])
    later = log.receipt(first.entry_hash)
    assert later.index == 0
    assert verify_receipt(later, ledger_home[1]).checkpoint.size == 9


def test_appending_the_same_event_twice_returns_the_first_entry(log: Log) -> None:
    event = grant_event(5)
    a = log.append([event, event])
    b = log.append([event])
    assert a[0].index == a[1].index == b[0].index == 0
    assert log.size == 1


@pytest.mark.parametrize("part", ["entry", "proof", "tree head root", "signature", "index"])
def test_tampered_receipt_is_rejected(log: Log, ledger_home, part: str) -> None:
    receipts = log.append([grant_event(i) for i in range(11)])
    doc = receipts[6].to_json()
    if part == "entry":
        doc["entry"]["grant_digest"] = "f" * 64
        del doc["entry_hash"]  # an attacker would recompute it; the proof must still fail
    elif part == "proof":
        doc["inclusion_proof"][1] = _flip_b64(doc["inclusion_proof"][1])
    elif part == "tree head root":
        lines = doc["checkpoint"].split("\n")
        lines[2] = _flip_b64(lines[2])
        doc["checkpoint"] = "\n".join(lines)
    elif part == "signature":
        text, sig = doc["checkpoint"].rsplit(" ", 1)
        doc["checkpoint"] = text + " " + _flip_b64(sig[:-1]) + "\n"
    else:
        doc["index"] = 7
    with pytest.raises(CheckFailed) as failure:
        verify_receipt(Receipt.from_json(json.loads(json.dumps(doc))), ledger_home[1])
    expected = "tree-head signature" if part in ("tree head root", "signature") else "inclusion"
    assert failure.value.check == expected


def test_receipt_from_another_log_key_is_rejected(log: Log, tmp_path: Path) -> None:
    from ledger.home import init_home

    other = init_home(tmp_path / "other", origin=log.origin, passphrase=PASSPHRASE)
    receipt = log.append([grant_event(1)])[0]
    with pytest.raises(CheckFailed) as failure:
        verify_receipt(receipt, other)
    assert failure.value.check == "tree-head signature"


def test_consistency_between_published_sizes(log: Log, ledger_home) -> None:
    log.append([grant_event(i) for i in range(3)])
    log.append([grant_event(i) for i in range(3, 10)])
    log.append([grant_event(i) for i in range(10, 21)])
    assert log.tree_sizes() == [3, 10, 21]
    for old in (3, 10, 21):
        old_cp, new_cp = verify_consistency_proof(log.consistency(old), ledger_home[1])
        assert (old_cp.size, new_cp.size) == (old, 21)
    forged = log.consistency(3, 10)
    bad = type(forged)(
        forged.origin, forged.hash_algorithm, forged.old_checkpoint, log.note_at(21),
        forged.proof,
    )
    with pytest.raises(CheckFailed) as failure:
        verify_consistency_proof(bad, ledger_home[1])
    assert failure.value.check == "consistency"


def test_reopening_keeps_every_entry_and_the_same_root(ledger_home) -> None:
    home, public = ledger_home
    with open_log(home, PASSPHRASE) as log:
        receipts = log.append([grant_event(i) for i in range(100)])
        root = log.tree.root()
    with open_log(home, PASSPHRASE) as log:
        assert log.size == 100
        assert log.tree.root() == root
        assert verify_receipt(log.receipt(receipts[42].entry_hash), public).checkpoint.size == 100


def test_altered_database_is_refused_at_open(ledger_home) -> None:
    home, _ = ledger_home
    with open_log(home, PASSPHRASE) as log:
        log.append([grant_event(i) for i in range(5)])
    with sqlite3.connect(home / DATABASE) as db:
        db.execute("UPDATE entries SET leaf_hash = ? WHERE idx = 2", (b"\x00" * 32,))
    with pytest.raises(StorageError, match="altered outside the ledger"):
        open_log(home, PASSPHRASE)


def test_wrong_passphrase_is_refused(ledger_home) -> None:
    with pytest.raises(KeystoreError):
        open_log(ledger_home[0], "not the passphrase")


def test_events_carrying_personal_data_are_refused(log: Log) -> None:
    event = grant_event(1)
    for extra in ({"email": "x@example.com"}, {"subject": "did:key:z6Mkabc"}, {"name": "Ana"}):
        with pytest.raises(EventError, match="does not allow the field"):
            log.append([{**event, **extra}])
    with pytest.raises(EventError, match="subject_commitment"):
        log.append([{**event, "subject_commitment": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2Q"}])
    assert log.size == 0


@pytest.mark.parametrize(
    "event, message",
    [
        ({"type": "gossip", "schema_version": 1, "time": "2026-01-01T00:00:00Z"}, "unknown event"),
        ({"type": "grant", "schema_version": 2, "time": "2026-01-01T00:00:00Z"}, "schema_version"),
        ({"type": "erasure", "schema_version": 1, "time": "yesterday"}, "time"),
        ({"type": "model", "schema_version": 1, "time": "2026-01-01T00:00:00Z"}, "model_digest"),
    ],
)
def test_invalid_events_name_what_is_wrong(event: dict, message: str) -> None:
    with pytest.raises(EventError, match=message):
        validate_event(event)


def test_every_event_type_is_accepted(log: Log, ledger_home) -> None:
    node = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    commitment = subject_commitment("did:key:z6MkexampleCustomer", b"\x01" * 32)
    events = [
        grant_event(1),
        make_event("revocation", revocation_digest="a" * 64, grant_digest="b" * 64,
                   subject_commitment=commitment),
        make_event("access_head", node=node, head="c" * 64, sequence=12,
                   subject_commitments=[commitment], purpose="quote-generation"),
        make_event("model", model_digest="d" * 64, run_id="run-1", nodes=[node]),
        make_event("erasure", proof_digest="e" * 64, subject_commitment=commitment, node=node),
    ]
    for receipt in log.append(events):
        verify_receipt(receipt, ledger_home[1])
    assert log.size == 5


def test_subject_commitment_is_salted() -> None:
    did = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    a, b = subject_commitment(did, b"\x01" * 32), subject_commitment(did, b"\x02" * 32)
    assert a != b and did not in a
    with pytest.raises(EventError):
        subject_commitment(did, b"short")


def test_log_public_key_round_trips(ledger_home) -> None:
    home, public = ledger_home
    assert LogPublicKey.load(home / "log-public.json") == public
    assert public.verifier_keys[0].startswith(public.origin + "+")


def test_gm_profile_log_uses_sm3_and_signs_with_ed25519_and_sm2(tmp_path: Path) -> None:
    from ledger.home import init_home

    public = init_home(tmp_path / "gm", origin="gm.test.example/log", passphrase=PASSPHRASE,
                       profile="gm")
    assert public.hash_algorithm == "sm3" and len(public.verifier_keys) == 2
    with open_log(tmp_path / "gm", PASSPHRASE) as log:
        receipt = log.append([grant_event(i) for i in range(3)])[2]
    assert receipt.checkpoint.count("\u2014 gm.test.example/log ") == 2
    assert verify_receipt(receipt, public).checkpoint.size == 3
    # Strip the SM2 line: a gm verifier insists on both signatures.
    text, lines = receipt.checkpoint.split("\n\n")
    ed_only = text + "\n\n" + lines.split("\n")[0] + "\n"
    with pytest.raises(CheckFailed) as failure:
        verify_receipt(Receipt(**{**receipt.__dict__, "checkpoint": ed_only}), public)
    assert failure.value.check == "tree-head signature"
