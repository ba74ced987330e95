"""``sov-node log events``: the operator's view of the access log. Events name their grants
and customers only by Merkle roots; the operator sees the members of each set, checked
against those roots and against the hash chain, and a vault altered behind the node's back
is reported (exit status 1)."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_node import accesslog
from agent_node.errors import PermissionDenied
from consent.grants import issue_grant
from consent.identity import Identity
from tests.agent_node.conftest import in_process_node, run_cli

PURPOSE = "quote-generation"
QUERY = {"dataset": "contacts", "purpose": PURPOSE, "measures": ["count"]}


@pytest.fixture
def logged(tmp_path: Path, bank_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A node whose log holds one answered and one refused query, run as the engine does."""
    node = in_process_node(tmp_path, bank_rows, "operator-log")
    requester = Identity.generate()
    grant_ids = sorted(
        node.store.submit(issue_grant(w, requester=requester.did, nodes=[node.home.identity.did],
                                      purpose=PURPOSE, scopes=["transaction"],
                                      ttl=timedelta(hours=2)))[0].id
        for w in node.wallets[:12])
    answered = node.engine.run(QUERY, requester.did)
    with pytest.raises(PermissionDenied):
        node.engine.run({**QUERY, "purpose": "renewal-warning"}, requester.did)
    return {"home": node.home, "grant_ids": grant_ids, "answered": answered,
            "requester": requester.did}


def _events(home: Any, *extra: str, check: bool = True) -> Any:
    return run_cli("sov-node", "log", "events", "--home", str(home.path), *extra, check=check)


def test_events_show_their_members_checked_against_roots_and_chain(logged: dict[str, Any]
                                                                   ) -> None:
    listed = json.loads(_events(logged["home"], "--json").stdout)
    answered = next(e for e in listed if e["seq"] == logged["answered"]["event_seq"])
    assert answered["grant_ids"] == logged["grant_ids"]
    assert (answered["grant_count"], answered["grants_root"]) == \
        accesslog.set_commitment(logged["grant_ids"])
    assert len(answered["subject_refs"]) == answered["subject_count"] == 12
    refused = listed[-1]
    assert refused["outcome"] == "refused" and refused["grant_ids"] == []
    assert all(e["sets_match"] is True and e["chain_ok"] is True for e in listed)
    human = _events(logged["home"]).stdout.splitlines()
    assert len(human) == len(listed) and all("[sets ok, chain ok]" in line for line in human)
    assert "12 grant(s), 12 customer(s)" in human[0]
    assert _events(logged["home"], "--limit", "1", "--json").stdout.count('"seq"') == 1
    assert json.loads(_events(logged["home"], "--since", "2999-01-01T00:00Z", "--json").stdout
                      ) == []


@pytest.mark.parametrize("tamper, verdict", [
    ("DELETE FROM access_set_grants WHERE grant_id = (SELECT grant_id FROM "
     "access_set_grants LIMIT 1)", "SETS DO NOT MATCH"),
    ("UPDATE access_log SET body = replace(body, 'answered', 'refused') WHERE seq = 1",
     "CHAIN BROKEN"),
    ("UPDATE access_log SET body = 'not json' WHERE seq = 1", "CHAIN BROKEN"),
    ("UPDATE access_log SET body = '{\"v\": 2}' WHERE seq = 1", "SETS DO NOT MATCH"),
])
def test_an_altered_vault_is_reported(logged: dict[str, Any], tamper: str, verdict: str) -> None:
    with sqlite3.connect(logged["home"].vault_path) as conn:
        conn.execute("ATTACH DATABASE ? AS activity",  # where the access log's tables are
                     (str(logged["home"].path / "activity.sqlite"),))
        conn.execute(tamper)
    result = _events(logged["home"], check=False)
    assert result.returncode == 1 and verdict in result.stdout
    assert "the vault was altered" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("option", "value", "error"), [
    ("--since", "yesterday", "cannot read the time 'yesterday'"),
    ("--until", "2026-02-30", "cannot read the time '2026-02-30'"),
    ("--since", "-3h", "cannot read the time '-3h'"),
])
def test_a_bad_time_is_a_clear_error(logged: dict[str, Any], option: str, value: str,
                                     error: str) -> None:
    result = _events(logged["home"], option, value, check=False)
    assert result.returncode == 2 and error in result.stderr and option in result.stderr
    assert "Traceback" not in result.stderr


def test_since_and_until_share_the_tools_syntax(logged: dict[str, Any]) -> None:
    """consent.timespec: a day, a date-time or a duration ago; a day as --until is whole."""
    every = json.loads(_events(logged["home"], "--json").stdout)
    day, moment = every[0]["time"][:10], every[0]["time"]

    def seqs(*extra: str) -> list[int]:
        return [e["seq"] for e in json.loads(_events(logged["home"], *extra, "--json").stdout)]

    everything = [e["seq"] for e in every]
    assert seqs("--since", "1h") == everything and seqs("--until", "1h") == []
    assert seqs("--since", day, "--until", day) == everything  # the whole day
    assert seqs("--until", moment) == [e["seq"] for e in every if e["time"] <= moment]
    assert seqs("--since", "2999-01-01") == [] and seqs("--until", "2000-01-01T00:00Z") == []
    human = _events(logged["home"], "--since", day, "--until", day).stdout.splitlines()
    assert human[0].startswith(f"events since {day} (from {day}T00:00Z), until {day} "
                               "(whole day, up to ")
    assert len(human) == len(every) + 1
    reversed_range = _events(logged["home"], "--since", day, "--until", "2000-01-01",
                             check=False)
    assert reversed_range.returncode == 2 and "is before --since" in reversed_range.stderr
