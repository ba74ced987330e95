"""ledger.subjectindex: the access heads naming a subject commitment, found by the ledger
(Log.find_access_heads, and LedgerService.FindAccessHeads over real TLS gRPC)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import pytest

from consent.identity import Identity
from ledger.events import make_event
from ledger.home import init_home, open_log
from ledger.log import Log
from ledger.service import start_server
from protos.sovereign.v1 import ledger_pb2 as pb
from protos.sovereign.v1 import ledger_pb2_grpc as pb_grpc
from protos.transport import secure_channel

NODE = Identity.generate().did
MINE, THEIRS = "aa" * 32, "bb" * 32


def _heads(log: object) -> None:
    log.append([  # type: ignore[attr-defined]
        make_event("access_head", node=NODE, head="01" * 32, sequence=1,
                   subject_commitments=[MINE]),
        make_event("grant", grant_digest="02" * 32, subject_commitment=MINE, purpose="x"),
        make_event("access_head", node=NODE, head="03" * 32, sequence=2,
                   subject_commitments=[THEIRS]),
        make_event("access_head", node=NODE, head="04" * 32, sequence=3,
                   subject_commitments=[THEIRS, MINE]),
    ])


def test_heads_are_found_by_commitment_and_paged(tmp_path: Path) -> None:
    home = tmp_path / "ledger"
    key = init_home(home, origin="ledger.test.example/log", passphrase="pw")
    log = open_log(home, "pw")
    try:
        _heads(log)
        receipts, more = log.find_access_heads(bytes.fromhex(MINE))
        assert [r.index for r in receipts] == [0, 3] and not more
        assert all(r.event["type"] == "access_head" for r in receipts)  # not the grant
        first, more = log.find_access_heads(bytes.fromhex(MINE), limit=1)
        assert [r.index for r in first] == [0] and more
        later, _ = log.find_access_heads(bytes.fromhex(MINE), after_index=1)
        assert [r.index for r in later] == [3]
        assert log.find_access_heads(bytes.fromhex("cc" * 32)) == ([], False)
    finally:
        log.close()
    assert key.origin


def test_a_database_from_before_the_index_is_indexed_when_opened(tmp_path: Path) -> None:
    home = tmp_path / "ledger"
    init_home(home, origin="ledger.test.example/log", passphrase="pw")
    log = open_log(home, "pw")
    _heads(log)
    log.close()
    with sqlite3.connect(next(home.glob("*.db"))) as db:
        db.execute("DROP TABLE head_subjects")
    log = open_log(home, "pw")
    try:
        assert [r.index for r in log.find_access_heads(bytes.fromhex(THEIRS))[0]] == [2, 3]
    finally:
        log.close()


def test_the_rpc_refuses_a_malformed_commitment(log: Log, ledger_home: tuple, authors: object
                                                ) -> None:
    home, _ = ledger_home
    running = start_server(log, address="127.0.0.1:0",
                           cert_pem=(home / "tls" / "server.pem").read_bytes(),
                           key_pem=(home / "tls" / "server.key").read_bytes(),
                           authors=authors)  # type: ignore[arg-type]
    try:
        with secure_channel(f"127.0.0.1:{running.port}",
                            (home / "tls" / "ca.pem").read_bytes()) as channel:
            stub = pb_grpc.LedgerServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.FindAccessHeads(pb.FindAccessHeadsRequest(version=1,
                                                               subject_commitment=b"x"))
    finally:
        running.stop(None)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "32-byte" in (info.value.details() or "")
