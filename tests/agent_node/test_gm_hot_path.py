"""The ``gm`` profile keeps SM2 off the per-query path (issue 2: "authenticate a session once,
then use symmetric keys"), measured by counting SM2 work in-process.

The node runs in this process (``agent_node.server.start``, real gRPC over TLS, real vault) so
that one counter sees both sides. The counter wraps gmssl's point multiplication, through which
every SM2 signature, verification, encryption and decryption passes, and the SM2 entry points
of ``consent.sm``. This is instrumentation, not a mock: every wrapped call still runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from gmssl.sm2 import CryptSM2

from agent_node.client import NodeClient
from agent_node.home import load_home
from agent_node.requester import Requester
from agent_node.server import RunningNode, start
from consent import sm
from consent.envelope_gm import GMSession
from consent.grants import issue_grant
from consent.identity import Identity
from consent.integrity import EDDSA_JCS, SM2_JCS, verify_document
from tests.agent_node.conftest import (
    DATASET_TOML,
    PASSPHRASE,
    bind_all,
    run_cli,
    set_privacy,
    sqlite_source,
)

WALLETS = 6
QUERY = {"dataset": "contacts", "purpose": "marketing-analytics", "measures": ["count"]}
ENTRY_POINTS = [(sm.SM2PrivateKey, "sign"), (sm.SM2PrivateKey, "decrypt"),
                (sm.SM2PublicKey, "verify"), (sm.SM2PublicKey, "encrypt"), (CryptSM2, "_kg")]


@pytest.fixture
def sm2_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts every SM2 operation in this process (the wrapped functions still run)."""
    calls: Counter[str] = Counter()

    def counted(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    for owner, name in ENTRY_POINTS:
        monkeypatch.setattr(owner, name, counted(name, getattr(owner, name)))
    return calls


@pytest.fixture(scope="module")
def gm_home(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]]
            ) -> tuple[Path, list[Identity], Identity]:
    tmp = tmp_path_factory.mktemp("gm-hot")
    home = tmp / "node"
    run_cli("sov-node", "init", "--home", str(home), "--profile", "gm")
    (home / "datamap.toml").write_text(sqlite_source(tmp, bank_rows) + DATASET_TOML)
    run_cli("sov-node", "sync", "--home", str(home))
    # Threshold mode: these tests are about SM2 sessions, and compare repeated answers.
    set_privacy(home, "threshold")
    wallets = [Identity.generate("gm") for _ in range(WALLETS)]
    bind_all(home, wallets)
    requester = Identity.generate("gm")
    node = start(load_home(home, PASSPHRASE), address="127.0.0.1:0")
    try:
        for wallet in wallets:
            credential = issue_grant(wallet, requester=requester.did,
                                     nodes=[node.service.identity.did],
                                     purpose="marketing-analytics", scopes=["transaction"],
                                     ttl=timedelta(hours=24))
            with _client(node, wallet) as client:
                client.submit_grant(credential)
    finally:
        node.stop()
    return home, wallets, requester


def _client(node: RunningNode, who: Identity) -> NodeClient:
    return NodeClient(f"127.0.0.1:{node.port}", node.service.home.ca_pem(), who)


@pytest.fixture
def running(gm_home: tuple[Path, list[Identity], Identity]) -> Iterator[RunningNode]:
    node = start(load_home(gm_home[0], PASSPHRASE), address="127.0.0.1:0")
    yield node
    node.stop()


def test_later_queries_of_a_session_do_no_sm2_work(
    running: RunningNode, gm_home: tuple[Path, list[Identity], Identity],
    sm2_calls: Counter[str]
) -> None:
    requester = gm_home[2]
    with _client(running, requester) as client:
        client.node_info()  # the node's SM2-signed description: once per client, not per query
        sm2_calls.clear()
        first = Requester(requester).ask_with(client, QUERY)
        opening = Counter(sm2_calls)
        # Opening the session is the only SM2 work: the requester encrypts the session secret
        # and signs the opening; the node verifies it and decrypts the secret.
        assert opening["encrypt"] == 1 and opening["sign"] == 1
        assert opening["verify"] == 1 and opening["decrypt"] == 1
        sm2_calls.clear()
        answers = [Requester(requester).ask_with(client, QUERY) for _ in range(5)]
    assert sm2_calls == Counter()  # five more queries, not one SM2 operation on either side
    assert all(a.groups == first.groups for a in answers)
    assert first.groups[0]["values"]["count"] == 6 * WALLETS


def test_a_lost_session_is_reopened_once(
    gm_home: tuple[Path, list[Identity], Identity], sm2_calls: Counter[str]
) -> None:
    """A node restart forgets every session: the client opens a new one and resends."""
    home, _, requester = gm_home
    node = start(load_home(home, PASSPHRASE), address="127.0.0.1:0")
    port = node.port
    client = NodeClient(f"127.0.0.1:{port}", node.service.home.ca_pem(), requester)
    try:
        before = Requester(requester).ask_with(client, QUERY)
        old_session = client.gm_session()[0]
        node.stop()
        node = start(load_home(home, PASSPHRASE), address=f"127.0.0.1:{port}")
        sm2_calls.clear()
        after = Requester(requester).ask_with(client, QUERY)
        assert client.gm_session()[0] is not old_session
        assert sm2_calls["sign"] == 1 and sm2_calls["decrypt"] == 1  # exactly one new session
        assert after.groups == before.groups
    finally:
        client.close()
        node.stop()


def test_operator_can_ask_for_sm2_proofs_on_every_answer(
    gm_home: tuple[Path, list[Identity], Identity], sm2_calls: Counter[str]
) -> None:
    home, _, requester = gm_home
    node_home = load_home(home, PASSPHRASE)
    node_home.config.gm_sm2_answer_proofs = True
    node = start(node_home, address="127.0.0.1:0")
    try:
        with _client(node, requester) as client:
            Requester(requester).ask_with(client, QUERY)
            sm2_calls.clear()
            answer = Requester(requester).ask_with(client, QUERY)
    finally:
        node.stop()
    # The price: the node signs and the requester verifies one SM2 proof per answer.
    assert sm2_calls["sign"] == 1 and sm2_calls["verify"] == 1
    assert [p["cryptosuite"] for p in answer.document["proof"]] == [SM2_JCS, EDDSA_JCS]
    assert verify_document(answer.document, require_sm2=True) == node.service.identity.did


def test_a_stale_opening_is_replaced_once(
    running: RunningNode, gm_home: tuple[Path, list[Identity], Identity],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """An opening that waited longer than the node's window (say, while the node was down) is
    refused as too old; the client opens a fresh session and the query is answered."""
    requester = gm_home[2]
    real_open_to = GMSession.open_to
    created: list[GMSession] = []

    def first_one_stale(*args: Any, **kwargs: Any) -> GMSession:
        if not created:  # a real session, only dated ten minutes back
            kwargs["now"] = datetime.now(UTC) - timedelta(minutes=10)
        created.append(real_open_to(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(GMSession, "open_to", first_one_stale)
    with _client(running, requester) as client:
        answer = Requester(requester).ask_with(client, QUERY)
    assert len(created) == 2 and created[1].established and not created[0].established
    assert answer.groups[0]["values"]["count"] == 6 * WALLETS
