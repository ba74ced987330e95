"""Several ``sov-node serve`` worker processes on one port and one vault (``--workers``),
and replay protection that survives a restart and spans workers (real processes, real TLS,
real SQLite): answers keep flowing, the access-log chain stays one intact chain, and a sealed
request is answered once, whichever process receives it, before or after a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent_node import accesslog
from agent_node.client import NodeClient, NodeError
from agent_node.home import load_home
from agent_node.vault import Vault
from consent.identity import Identity
from tests.agent_node.conftest import (
    PASSPHRASE,
    SUBJECTS,
    NodeProcess,
    bind_all,
    grant_all,
    run_cli,
    serve,
    sqlite_home,
    stop,
)

PURPOSE = "marketing-analytics"
QUERY = {"dataset": "contacts", "purpose": PURPOSE, "measures": ["count"]}


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]]) -> Path:
    tmp = tmp_path_factory.mktemp("workers")
    # Threshold mode: the workers must give identical (exact) answers over one chain.
    home = sqlite_home(tmp, bank_rows, privacy="threshold")
    run_cli("sov-node", "sync", "--home", str(home))
    return home


@pytest.fixture(scope="module")
def workers(home: Path) -> Iterator[NodeProcess]:
    node = serve(home, workers=3)
    node.wallets = [Identity.generate() for _ in range(SUBJECTS)]
    bind_all(home, node.wallets)
    yield node
    children = _children(node.process.pid)
    stop(node)
    for child in children:  # the primary stopped its workers before exiting
        assert not Path(f"/proc/{child}").exists() or \
            "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_workers_answer_and_keep_one_chain(workers: NodeProcess) -> None:
    assert len(_children(workers.process.pid)) == 2  # three processes serve the port
    requester = Identity.generate()
    grant_all(workers, requester, workers.wallets)
    counts = set()
    for _ in range(12):  # a fresh channel each time: connections spread over the workers
        with NodeClient(workers.address, workers.ca_pem, requester) as client:
            counts.add(client.query(QUERY)["body"]["answer"]["groups"][0]["values"]["count"])
    assert len(counts) == 1
    vault = Vault(load_home(workers.home, PASSPHRASE).vault_path,
                  load_home(workers.home, PASSPHRASE).keys)
    with vault.connection() as conn:
        rows = conn.execute("SELECT seq, body_digest, prev_hash, hash FROM access_log "
                            "ORDER BY seq").fetchall()
    prev = accesslog.GENESIS
    for expected, (seq, digest, prev_hash, hash_) in enumerate(rows, start=1):
        assert seq == expected and prev_hash == prev
        assert accesslog.chain_hash(prev, digest) == hash_
        prev = hash_
    assert len(rows) >= 12


def test_a_replay_is_refused_by_every_worker(workers: NodeProcess) -> None:
    requester = Identity.generate()
    grant_all(workers, requester, workers.wallets[:10])
    with NodeClient(workers.address, workers.ca_pem, requester) as client:
        envelope, nonce = client.sealed_request("Query", {"query": QUERY})
        assert client.send("Query", envelope, nonce)["body"]["answer"]["groups"]
    refused = 0
    for _ in range(8):  # new connections land on other workers too
        with NodeClient(workers.address, workers.ca_pem, requester) as client, \
                pytest.raises(NodeError) as info:
            client.send("Query", envelope, nonce)
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "already received" in str(info.value)
        refused += 1
    assert refused == 8


def test_a_replay_after_a_restart_is_refused(home: Path, workers: NodeProcess) -> None:
    requester = Identity.generate()
    grant_all(workers, requester, workers.wallets[:10])
    with NodeClient(workers.address, workers.ca_pem, requester) as client:
        envelope, nonce = client.sealed_request("Query", {"query": QUERY})
        assert client.send("Query", envelope, nonce)["body"]["answer"]["groups"]
        grant_envelope, grant_nonce = client.sealed_request("GrantStatus", {"grant_ids": []})
        client.send("GrantStatus", grant_envelope, grant_nonce)
    with Vault(load_home(home, PASSPHRASE).vault_path,
               load_home(home, PASSPHRASE).keys).connection() as conn:
        before = conn.execute("SELECT COUNT(*) FROM access_log").fetchone()[0]
    restarted = serve(home, workers=1)
    try:
        with NodeClient(restarted.address, restarted.ca_pem, requester) as client:
            for method, sealed, once in (("Query", envelope, nonce),
                                         ("GrantStatus", grant_envelope, grant_nonce)):
                with pytest.raises(NodeError) as info:
                    client.send(method, sealed, once)
                assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
                assert "already received" in str(info.value)
            # A fresh request is answered as usual.
            assert client.query(QUERY)["body"]["answer"]["groups"]
    finally:
        stop(restarted)
    with Vault(load_home(home, PASSPHRASE).vault_path,
               load_home(home, PASSPHRASE).keys).connection() as conn:
        outcomes = [tuple(r) for r in conn.execute(
            "SELECT json_extract(body, '$.outcome'), json_extract(body, '$.reason') "
            "FROM access_log WHERE seq > ? ORDER BY seq", (before,))]
    # The replayed Query was refused when its nonce proved spent (and logged), never answered;
    # the replayed GrantStatus is logged as a refusal too.
    assert outcomes == [("refused", "replayed-nonce"), ("refused", "replay"), ("answered", "ok")]
