"""Review findings on the wallet, each pinned by a test against a real node process.

- a wrong CA or an unreachable address given to ``nodes add`` / ``--node-ca`` must not replace
  the CA of a node the wallet already talks to (it used to be saved before the node answered);
- ``export --out`` must never overwrite the wallet's own keystore or database;
- a grant the node refuses is a plain failure (exit 1), not "pending" (exit 3), and can be
  retried with ``grant --retry`` once the operator has fixed the cause;
- ``access-log`` asks only nodes that accepted a grant, and says why a node was not read;
- ``--purpose-text`` is bounded before anything is signed;
- an installed ``consent-wallet`` prints one line on stderr for a TLS failure (no gRPC core
  log lines).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from consent.grants import issue_grant, verify_grant
from consent.identity import Identity
from protos.tls import create_ca
from tests.wallet.conftest import NodeProcess
from tests.wallet.wallet_helpers import PASSPHRASE, WalletCLI, assert_clean_error
from wallet.cli import _sentence
from wallet.service import Wallet
from wallet.store import WalletStore

CONSENT_WALLET = str(Path(sys.executable).with_name("consent-wallet"))


def _did(cli: WalletCLI) -> str:
    return str(json.loads(cli.ok("whoami", "--json").output)["did"])


def _other_ca(tmp_path: Path) -> Path:
    path = tmp_path / "other-ca.pem"
    path.write_bytes(create_ca("not the node's CA").cert_pem)
    return path


def _grant_args(node: NodeProcess, requester: str, *extra: str) -> list[str]:
    return ["grant", "--node", node.address, "--requester", requester,
            "--purpose", "quote-generation", "--scope", "transaction", "--ttl", "2h", *extra]


def test_a_wrong_ca_never_replaces_a_working_one(
    initialised: WalletCLI, node: NodeProcess, tmp_path: Path, home: Path
) -> None:
    wallet = initialised
    node.bind(_did(wallet))
    wallet.ok("nodes", "add", node.address, "--ca", str(node.ca_path))
    wrong = _other_ca(tmp_path)

    result = wallet("nodes", "add", node.address, "--ca", str(wrong))
    assert_clean_error(result, "nothing was saved", "CA file")
    store = WalletStore(home)
    assert store.node(node.address).ca_pem == node.ca_pem  # type: ignore[union-attr]
    store.close()
    # The same through --node-ca on grant and export: refused, and nothing signed or saved.
    crm = Identity.generate().did
    assert_clean_error(wallet(*_grant_args(node, crm, "--node-ca", str(wrong))),
                       "nothing was saved")
    assert_clean_error(wallet("export", "--node", node.address, "--node-ca", str(wrong),
                              "--out", str(tmp_path / "x.json")), "nothing was saved")
    assert not (tmp_path / "x.json").exists()
    assert json.loads(wallet.ok("grants", "--offline", "--json").output) == []
    # ... and the wallet still reaches the node with the CA it had.
    granted = json.loads(wallet.ok(*_grant_args(node, crm, "--json")).output)
    assert granted["delivered"] is True

    # An address where nothing listens is not remembered either.
    result = wallet("nodes", "add", "127.0.0.1:9", "--ca", str(node.ca_path))
    assert_clean_error(result, "cannot be reached", "nothing was saved")
    listed = json.loads(wallet.ok("nodes", "list", "--json").output)
    assert [n["address"] for n in listed] == [node.address]
    human = wallet.ok("nodes", "list").output
    assert node.address in human and "distributor-eu" in human and node.did in human


def test_export_never_overwrites_the_wallet(
    initialised: WalletCLI, node: NodeProcess, home: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wallet = initialised
    node.bind(_did(wallet))
    wallet.ok("nodes", "add", node.address, "--ca", str(node.ca_path))
    keystore = home / "keystore.json"
    before = keystore.read_bytes()
    for target in (keystore, home / "wallet.db", home / "." / "keystore.json"):
        result = wallet("export", "--node", node.address, "--out", str(target))
        assert_clean_error(result, "choose another file")
    assert keystore.read_bytes() == before
    assert _did(wallet)  # the wallet still opens
    Wallet.open(home, PASSPHRASE).close()
    # A relative path that lands on the keystore is caught too.
    monkeypatch.chdir(home)
    assert_clean_error(wallet("export", "--node", node.address, "--out", "keystore.json"),
                       "keystore.json")
    assert keystore.read_bytes() == before
    out = tmp_path / "mine.json"
    wallet.ok("export", "--node", node.address, "--out", str(out))
    assert json.loads(out.read_text())["format"] == "sovereign-fabric-export"


def test_refused_grant_fails_plainly_and_can_be_retried(
    initialised: WalletCLI, node: NodeProcess
) -> None:
    wallet = initialised  # not bound to a customer at the node yet: the node refuses
    crm = Identity.generate().did
    result = wallet(*_grant_args(node, crm, "--node-ca", str(node.ca_path), "--json"))
    assert_clean_error(result, "refused", "sov-node subjects bind", exit_code=1)
    grant_id = json.loads(result.stdout)["grant_id"]
    assert result.output.splitlines()[-1].startswith("error: the node refused the grant")
    [view] = json.loads(wallet.ok("grants", "--json").output)
    assert view["status"] == "refused"
    assert "Nothing pending" in wallet.ok("sync").output  # sync cannot fix a refusal
    # The node holds nothing of ours, so the access log does not even ask it.
    log = json.loads(wallet.ok("access-log", "--json").output)
    assert log["events"] == [] and log["unreachable"] == {} and log["integrity"] == {}

    node.bind(_did(wallet))  # the operator fixes the cause; the same signed grant goes through
    retried = json.loads(wallet.ok("grant", "--retry", grant_id, "--json").output)
    assert retried["delivered"] is True and retried["grant_id"] == grant_id
    [view] = json.loads(wallet.ok("grants", "--json").output)
    assert view["status"] == "active" and view["status_fresh"] is True


def test_access_log_says_why_a_node_was_not_read(
    initialised: WalletCLI, node: NodeProcess
) -> None:
    wallet = initialised
    node.bind(_did(wallet))
    wallet.ok(*_grant_args(node, Identity.generate().did, "--node-ca", str(node.ca_path)))
    node.stop()
    result = wallet.ok("access-log")
    first = result.output.splitlines()[0]
    assert first.startswith(f"! The node at {node.address} cannot be reached")
    assert "showing the events cached" in first and "nothing was changed" not in first
    assert json.loads(wallet.ok("access-log", "--json").output)["unreachable"] == {
        node.address: f"the node at {node.address} cannot be reached (UNAVAILABLE)"}


def test_purpose_text_is_bounded_before_signing(initialised: WalletCLI, home: Path) -> None:
    result = initialised("grant", "--node", "127.0.0.1:9", "--requester",
                         Identity.generate().did, "--purpose", "quote-generation",
                         "--scope", "transaction", "--ttl", "1h", "--purpose-text", "x" * 501,
                         env={"CONSENT_WALLET_PASSPHRASE": "wrong, and never asked"})
    assert_clean_error(result, "--purpose-text may be at most 500 characters")
    store = WalletStore(home)
    assert store.grants() == [] and store.nodes() == []
    store.close()


def test_retry_of_an_expired_pending_grant(initialised: WalletCLI, home: Path) -> None:
    with Wallet.open(home, PASSPHRASE) as wallet:
        grant = verify_grant(issue_grant(
            wallet.identity, requester=Identity.generate().did,
            nodes=[Identity.generate().did], purpose="quote-generation",
            scopes=["transaction"], ttl=timedelta(hours=1)))
        wallet.store.add_grant(grant, "127.0.0.1:9")
        with wallet.store.transaction() as db:
            db.execute("UPDATE grants SET expires = '2000-01-01T00:00:00.000000Z'")
    assert_clean_error(initialised("grant", "--retry", grant.id), "expired", "sign a new one")
    assert [g["status"] for g in json.loads(
        initialised.ok("grants", "--offline", "--json").output)] == ["expired"]


def test_one_line_on_stderr_for_a_tls_failure(
    initialised: WalletCLI, node: NodeProcess, home: Path, tmp_path: Path
) -> None:
    """The installed entry point: a CA that does not match gives one sentence, exit 1."""
    env = {"PATH": "/usr/bin:/bin", "CONSENT_WALLET_PASSPHRASE": PASSPHRASE,
           "CONSENT_WALLET_HOME": str(home), "HOME": str(tmp_path)}
    proc = subprocess.run([CONSENT_WALLET, "nodes", "add", node.address, "--ca",
                           str(_other_ca(tmp_path))], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: the node at {node.address} cannot be reached")
    assert "nothing was saved" in line


def test_sentences_keep_the_spelling_of_names() -> None:
    assert _sentence(ValueError("the node refused")) == "The node refused"
    assert _sentence(ValueError("purposeText is too long")) == "purposeText is too long"
    assert _sentence(ValueError("--ttl is missing")) == "--ttl is missing"
    assert _sentence(ValueError("'x' is not a purpose")) == "'x' is not a purpose"
    assert _sentence("grant x is revoked") == "Grant x is revoked"


def test_a_damaged_wallet_database_is_one_sentence(initialised: WalletCLI, home: Path) -> None:
    (home / "wallet.db").write_bytes(b"not a database " * 100)
    for suffix in ("-wal", "-shm"):
        (home / f"wallet.db{suffix}").unlink(missing_ok=True)
    for args in (("whoami",), ("grants", "--offline"), ("nodes", "list"), ("access-log",)):
        assert_clean_error(initialised(*args), "is damaged or not a wallet database",
                           "keystore.json")
    assert (home / "wallet.db").read_bytes() == b"not a database " * 100  # left as it was


def test_dashboard_on_a_taken_port(initialised: WalletCLI) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = initialised("dashboard", "--no-refresh", "--port", str(port))
    assert_clean_error(result, f"cannot listen on 127.0.0.1:{port}", "choose another --port")


def test_ledger_set_on_an_unreachable_ledger_changes_nothing(
    initialised: WalletCLI, node: NodeProcess
) -> None:
    # A TLS server that is not a ledger (the node) and an address where nothing listens.
    for address in (node.address, "127.0.0.1:9"):
        result = initialised("ledger", "set", address, "--ca", str(node.ca_path))
        assert_clean_error(result, "a verified log key from the ledger", "nothing was changed")
    assert_clean_error(initialised("ledger", "show"), "no ledger is set")


def test_an_altered_access_event_shows_not_verified(
    initialised: WalletCLI, node: NodeProcess
) -> None:
    """The node operator rewrites the purpose of a logged access: the wallet's chain check
    must show that event as NOT VERIFIED (issue 5: "shown as verified or not")."""
    import sqlite3

    from agent_node.requester import Requester

    wallet = initialised
    node.bind(_did(wallet))
    crm = Identity.generate()
    grant_id = json.loads(wallet.ok(*_grant_args(node, crm.did, "--node-ca", str(node.ca_path),
                                                 "--json")).output)["grant_id"]
    Requester(crm).ask(node.address, node.ca_pem, {
        "dataset": "orders", "purpose": "quote-generation", "measures": ["count"],
        "group_by": [], "grant_ids": [grant_id]})
    [event] = json.loads(wallet.ok("access-log", "--json").output)["events"]
    assert event["verified"] is True

    with sqlite3.connect(node.home / "activity.sqlite") as db:  # the access log's file
        [(body,)] = db.execute("SELECT body FROM access_log").fetchall()
        db.execute("UPDATE access_log SET body = ?",
                   (body.replace("quote-generation", "fraud-prevention"),))
    [event] = json.loads(wallet.ok("access-log", "--json").output)["events"]
    assert event["verified"] is False
    assert "NOT VERIFIED" in wallet.ok("access-log").output
