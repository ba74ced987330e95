"""The access log's set layout keeps its guarantees (in-process engine over a real SQLite
vault): repeated queries over one population write one event row and no new set rows, every
subject still finds exactly the events that used its data, grant usage is counted right for
grants with and without a budget, an old-layout vault is upgraded on open, and the fast
canonical form of event values is byte-identical to RFC 8785 (``rfc8785``)."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_node import accesslog
from agent_node.engine import QueryEngine
from agent_node.errors import PermissionDenied
from agent_node.grantstore import GrantStore
from agent_node.home import init_home
from agent_node.vault import Vault
from consent.canonical import canonicalize
from consent.grants import issue_grant
from consent.identity import Identity
from tests.agent_node.conftest import PASSPHRASE, in_process_node

PURPOSE = "marketing-analytics"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]]
         ) -> tuple[Vault, QueryEngine, GrantStore, list[Identity], str]:
    parts = in_process_node(tmp_path_factory.mktemp("perf-log"), bank_rows, "perf")
    return parts.vault, parts.engine, parts.store, parts.wallets, parts.home.identity.did


def _grant(store: GrantStore, node_did: str, wallet: Identity, requester: Identity,
           **kw: Any) -> str:
    return store.submit(issue_grant(wallet, requester=requester.did, nodes=[node_did],
                                    purpose=kw.pop("purpose", PURPOSE), scopes=["transaction"],
                                    ttl=timedelta(hours=2), **kw))[0].id


def _count(vault: Vault, table: str) -> int:
    with vault.connection() as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def _sids(vault: Vault, wallet: Identity) -> list[int]:
    with vault.connection() as conn:
        return vault.sids_for_did(conn, wallet.did)


def test_repeated_queries_add_one_row_each_and_no_set_rows(node: Any,
                                                           bank_rows: list[dict[str, Any]]
                                                           ) -> None:
    vault, engine, store, wallets, did = node
    requester = Identity.generate()
    for wallet in wallets:
        _grant(store, did, wallet, requester)
    # A selective filter: an age some (5 to 30) of the 50 customers have.
    age = next(a for a in sorted({r["age"] for r in bank_rows})
               if 5 <= len({r["customer_id"] for r in bank_rows if r["age"] == a}) <= 30)
    query = {"dataset": "contacts", "purpose": PURPOSE, "measures": ["count"],
             "filters": [{"column": "age", "op": "eq", "value": age}]}
    engine.run(query, requester.did)
    before = {t: _count(vault, t) for t in ("access_log", "access_sets", "access_set_subjects",
                                             "access_set_grants", "grant_usage")}
    for _ in range(5):
        engine.run(query, requester.did)
    after = {t: _count(vault, t) for t in before}
    assert after["access_log"] == before["access_log"] + 5
    assert {t: after[t] - before[t] for t in before if t != "access_log"} == {
        "access_sets": 0, "access_set_subjects": 0, "access_set_grants": 0, "grant_usage": 0}

    # The stored subject set is every customer in the consent filter, not only those whose
    # rows match: in dp mode who is read and debited must not depend on the data.
    with vault.connection() as conn:
        seq, subject_set = conn.execute(
            "SELECT seq, subject_set FROM access_log ORDER BY seq DESC LIMIT 1").fetchone()
        members = {r[0] for r in conn.execute(
            "SELECT sid FROM access_set_subjects WHERE set_id = ?", (subject_set,))}
        consenting = {sid for wallet in wallets for sid in vault.sids_for_did(conn, wallet.did)}
        assert members == consenting
        # Each consenting customer finds the event through its data.
        for wallet in wallets[:10]:
            by_data, _ = accesslog.events_for(conn, vault.sids_for_did(conn, wallet.did), [],
                                              None)
            assert seq in {e["body"]["seq"] for e in by_data}


def test_events_for_keeps_subjects_apart(node: Any) -> None:
    vault, engine, store, wallets, did = node
    requester = Identity.generate()
    mine = _grant(store, did, wallets[0], requester, purpose="quote-generation")
    others = [_grant(store, did, w, requester, purpose="renewal-warning") for w in wallets[1:8]]
    engine.run({"dataset": "contacts", "purpose": "quote-generation", "measures": ["count"]},
               requester.did)
    engine.run({"dataset": "contacts", "purpose": "renewal-warning", "measures": ["count"]},
               requester.did)
    with vault.connection() as conn:
        own, chain = accesslog.events_for(conn, _sids(vault, wallets[0]), [mine], None)
        stranger, _ = accesslog.events_for(conn, _sids(vault, wallets[9]), [], None)
    purposes = [e["body"]["purpose"] for e in own]
    assert "quote-generation" in purposes and "renewal-warning" not in purposes
    # Another customer's grant ids appear nowhere in what this one receives; its own grant
    # is proven to be in each event's grant set.
    assert not any(other in json.dumps(own) for other in others)
    for event in [e for e in own if e["body"]["purpose"] == "quote-generation"]:
        body, proofs = event["body"], event["proofs"]
        assert body["grant_count"] == 1 and [p["member"] for p in proofs["grants"]] == [mine]
        assert all(accesslog.verify_membership(p, body["grant_count"], body["grants_root"])
                   for p in proofs["grants"])
        assert [p["member"] for p in proofs["subjects"]] == vault.refs_for_sids(
            conn, _sids(vault, wallets[0]))
    assert not [e for e in stranger if e["body"]["requester"] == requester.did]
    head = chain[-1]
    check = accesslog.verify_events(own, chain, int(head[0]), head[2])
    assert check.chain_intact and all(check.verified.values())


def test_grant_usage_counts_with_and_without_budgets(node: Any) -> None:
    vault, engine, store, wallets, did = node
    requester = Identity.generate()
    free = _grant(store, did, wallets[0], requester, purpose="service-improvement")
    capped = [_grant(store, did, w, requester, purpose="service-improvement", max_queries=9)
              for w in wallets[1:10]]
    query = {"dataset": "contacts", "purpose": "service-improvement", "measures": ["count"]}
    for _ in range(3):
        engine.run(query, requester.did)
    [status] = store.status(wallets[0].did, [free])
    assert status["queries_used"] == 3 and status["max_queries"] is None
    [status] = store.status(wallets[1].did, [capped[0]])
    assert status["queries_used"] == 3 and status["max_queries"] == 9
    # dp mode: every grant has a privacy budget (the node's default when the wallet set
    # none) and was debited each answer's epsilon: journalled once per answer for its grant
    # set (agent_node.spend, issue 15), not as a counter row per grant; spend is derived.
    with vault.connection() as conn:
        rows = {r[0] for r in conn.execute("SELECT grant_id FROM grant_usage")}
        journal = conn.execute("SELECT COUNT(*) FROM grant_set_spend").fetchone()[0]
    assert not {free, *capped} & rows and journal >= 2  # a set's row and the totals row
    [status] = store.status(wallets[0].did, [free])
    assert status["epsilon_spent"] == 3.0 and status["epsilon_left"] == 7.0


def test_old_layout_vault_is_upgraded_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    keys = init_home(tmp_path / "h", PASSPHRASE).keys
    db = sqlite3.connect(path)
    db.executescript("""
      CREATE TABLE grants (grant_id TEXT PRIMARY KEY, subject TEXT NOT NULL,
        requester TEXT NOT NULL, purpose TEXT NOT NULL, scopes TEXT NOT NULL,
        not_before REAL NOT NULL, expires REAL NOT NULL, max_queries INTEGER, dp_epsilon REAL,
        queries_used INTEGER NOT NULL DEFAULT 0, epsilon_spent REAL NOT NULL DEFAULT 0,
        digest TEXT NOT NULL, credential TEXT NOT NULL, received_at TEXT NOT NULL,
        revoked_at TEXT, revocation TEXT);
      CREATE TABLE access_log (seq INTEGER PRIMARY KEY, time TEXT NOT NULL, body TEXT NOT NULL,
        body_digest TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
      CREATE TABLE access_subjects (sid INTEGER NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY (sid, seq)) WITHOUT ROWID;
      CREATE TABLE access_grants (grant_id TEXT NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY (grant_id, seq)) WITHOUT ROWID;
    """)
    db.execute("INSERT INTO grants VALUES ('g1', 's', 'r', 'p', 'transaction', 0, 0, 5, NULL, "
               "2, 0, 'd', '{}', 't', NULL, NULL)")
    prev = accesslog.GENESIS
    for seq, outcome in ((1, "answered"), (2, "refused"), (3, "answered")):
        body = {"seq": seq, "outcome": outcome, "time": "t", "grant_ids": ["g1"]}
        digest = accesslog.body_digest(body)
        new = accesslog.chain_hash(prev, digest)
        db.execute("INSERT INTO access_log VALUES (?, 't', ?, ?, ?, ?)",
                   (seq, json.dumps(body), digest, prev, new))
        prev = new
    db.executemany("INSERT INTO access_subjects VALUES (?, ?)", [(7, 1), (8, 1), (7, 3)])
    db.executemany("INSERT INTO access_grants VALUES (?, ?)", [("g1", 1), ("g1", 2)])
    db.commit()
    db.close()

    vault = Vault(path, keys)
    Vault(path, keys)  # a second open finds it upgraded already
    with vault.connection() as conn:
        assert [e["body"]["seq"] for e in accesslog.events_for(conn, [7], [], None)[0]] == [1, 3]
        assert [e["body"]["seq"] for e in accesslog.events_for(conn, [8], [], None)[0]] == [1]
        assert [e["body"]["seq"] for e in accesslog.events_for(conn, [], ["g1"], None)[0]] \
            == [1, 2]
        assert accesslog.answered_with(conn, "g1") == 1
        assert conn.execute("SELECT queries_used FROM grant_usage WHERE grant_id = 'g1'"
                            ).fetchone() == (2,)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert not tables & {"access_subjects", "access_grants"}


event_values = st.recursive(
    st.none() | st.booleans() | st.text()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
    lambda inner: st.lists(inner, max_size=4), max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(event_values)
def test_event_canonical_bytes_equal_rfc8785(value: Any) -> None:
    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:  # lone surrogates: both refuse
        with pytest.raises(ValueError):
            canonicalize(value)
        return
    assert canonicalize(value) == expected


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(min_size=1).filter(lambda k: k != "seq"), event_values,
                       max_size=8).map(lambda d: {"time": "t", **d}),
       st.integers(min_value=1, max_value=2**40))
def test_prepared_event_equals_rfc8785(body: dict[str, Any], seq: int) -> None:
    try:
        expected = rfc8785.dumps({**body, "seq": seq})
    except rfc8785.CanonicalizationError:
        return
    assert accesslog.prepare(body).canonical(seq) == expected


def test_cached_active_grants_follow_validity_boundaries(node: Any) -> None:
    """The consent view keeps its active-grant list only until the next moment a grant
    becomes valid or expires: a query after expiry is refused, one before it answered."""
    _, engine, store, wallets, did = node
    requester = Identity.generate()
    for wallet in wallets[:8]:
        _grant(store, did, wallet, requester, purpose="fraud-prevention")
    query = {"dataset": "contacts", "purpose": "fraud-prevention", "measures": ["count"]}
    now = datetime.now(UTC)
    assert engine.run(query, requester.did, now=now)["groups"]
    assert engine.run(query, requester.did, now=now + timedelta(minutes=30))["groups"]
    with pytest.raises(PermissionDenied):
        engine.run(query, requester.did, now=now + timedelta(hours=3))  # all expired
    with pytest.raises(PermissionDenied):
        engine.run(query, requester.did, now=now - timedelta(hours=1))  # none valid yet
    assert engine.run(query, requester.did, now=now + timedelta(minutes=1))["groups"]


def test_a_customer_bound_to_two_wallets_names_both_grants(node: Any) -> None:
    vault, engine, store, wallets, did = node
    requester, second = Identity.generate(), Identity.generate()
    vault.bind(["C000"], second.did)  # the same customer, a second wallet
    ids = [_grant(store, did, w, requester, purpose="intent-model-training")
           for w in (wallets[0], second, *wallets[1:6])]
    answer = engine.run({"dataset": "contacts", "purpose": "intent-model-training",
                         "measures": ["count"]}, requester.did)
    with vault.connection() as conn:
        [body] = [json.loads(r[0]) for r in conn.execute(
            "SELECT body FROM access_log WHERE seq = ?", (answer["event_seq"],))]
    assert (body["grant_count"], body["grants_root"]) == accesslog.set_commitment(ids)
    assert body["subject_count"] == 6 and "grant_ids" not in body
