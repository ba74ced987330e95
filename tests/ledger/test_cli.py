"""sov-ledger and sov-audit end to end: init, append, export, verify, bundle, report, and a
real ``sov-ledger serve`` process used through the verifying client."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ledger.audit_cli import main as audit
from ledger.authority import sign_entry
from ledger.cli import main as ledger_cli
from ledger.client import LedgerClient
from ledger.events import make_event, subject_commitment
from ledger.models import LogPublicKey

from .conftest import NODE, PASSPHRASE
from .conftest import customer_grant as grant_event

ENV = {"SOV_LEDGER_PASSPHRASE": PASSPHRASE}
SUBJECT_DID = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
SALT = bytes(range(32))


def _run(cli, args: list[str], code: int = 0) -> str:
    result = CliRunner().invoke(cli, args, env=ENV, catch_exceptions=False)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture()
def populated(tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    home = tmp_path / "home"
    _run(ledger_cli, ["init", "--home", str(home), "--origin", "audit.test.example/log"])
    _run(ledger_cli, ["authors", "add", "--home", str(home), NODE.did, "--name", "test node",
                      "--role", "node"])
    commitment = subject_commitment(SUBJECT_DID, SALT)
    events = [grant_event(i) for i in range(3)]
    events.append(grant_event(7, subject_commitment=commitment, time="2026-03-01T10:00:00Z"))
    erasure = make_event("erasure", proof_digest="e" * 64, subject_commitment=commitment,
                         node=NODE.did)
    events.append(sign_entry({**erasure, "time": "2026-03-02T10:00:00Z"}, NODE))
    events_file = tmp_path / "events.json"
    events_file.write_text(json.dumps(events))
    out = tmp_path / "receipts"
    _run(ledger_cli, ["append", "--home", str(home), str(events_file), "-o", str(out)])
    receipts = sorted(out.glob("receipt-*.json"))
    assert len(receipts) == 5
    return home, home / "log-public.json", receipts


def test_verify_accepts_receipts_and_rejects_a_tampered_copy(populated, tmp_path: Path) -> None:
    _, key, receipts = populated
    output = _run(audit, ["verify", "--log-key", str(key), *map(str, receipts)])
    # Two checks per receipt: in the signed tree, and who wrote it (authority).
    assert output.count("PASS") == 10 and "OK: all 10 check(s) passed" in output
    assert f"written by {NODE.did}; registration not checked" in output  # the erasure
    assert f"endorsed by {NODE.did}" in output  # the customers' grants

    doc = json.loads(receipts[1].read_text())
    proof = bytearray(base64.b64decode(doc["inclusion_proof"][0]))
    proof[3] ^= 0x10
    doc["inclusion_proof"][0] = base64.b64encode(bytes(proof)).decode()
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    output = _run(audit, ["verify", "--log-key", str(key), str(tampered)], code=1)
    assert "FAIL inclusion:" in output and "does not lead to the tree head's root" in output

    doc = json.loads(receipts[1].read_text())
    doc["entry"]["purpose"] = "marketing-analytics"
    tampered.write_text(json.dumps(doc))
    output = _run(audit, ["verify", "--log-key", str(key), str(tampered)], code=1)
    assert "FAIL receipt format:" in output or "FAIL format:" in output
    assert "entry check failed" in output


def test_verify_usage_errors_are_one_sentence(populated, tmp_path: Path) -> None:
    _, _, receipts = populated
    result = CliRunner().invoke(audit, ["verify", "--log-key", str(tmp_path / "nope.json"),
                                        str(receipts[0])])
    assert result.exit_code == 2 and "cannot read the log key file" in result.output
    assert "Traceback" not in result.output
    not_json = tmp_path / "junk.json"
    not_json.write_text("{{{")
    output = _run(audit, ["verify", "--log-key", str(populated[1]), str(not_json)], code=1)
    assert "FAIL file:" in output and "is not JSON" in output


def test_consistency_between_two_receipts(populated, tmp_path: Path) -> None:
    home, key, receipts = populated
    old = tmp_path / "old.json"
    old.write_text(receipts[0].read_text())
    events_file = tmp_path / "more.json"
    events_file.write_text(json.dumps([grant_event(i) for i in range(20, 26)]))
    _run(ledger_cli, ["append", "--home", str(home), str(events_file), "-o", str(tmp_path / "r2")])
    new = sorted((tmp_path / "r2").glob("*.json"))[-1]
    proof = tmp_path / "proof.json"
    _run(ledger_cli, ["consistency", "--home", str(home), "5", "-o", str(proof)])
    output = _run(audit, ["consistency", str(old), str(new), "--log-key", str(key),
                          "--proof", str(proof)])
    assert "tree size 5 is a prefix of tree size 11" in output
    doc = json.loads(proof.read_text())
    doc["proof"][0] = base64.b64encode(b"\x00" * 32).decode()
    proof.write_text(json.dumps(doc))
    output = _run(audit, ["consistency", str(old), str(new), "--log-key", str(key),
                          "--proof", str(proof)], code=1)
    assert "FAIL consistency:" in output


def test_bundle_verifies_offline_and_report_shows_the_subject(populated, tmp_path: Path) -> None:
    _, key, receipts = populated
    bundle = tmp_path / "bundle.json"
    _run(audit, ["bundle", "--log-key", str(key), "-o", str(bundle), *map(str, receipts)])
    verified = _run(audit, ["verify", "--log-key", str(key), str(bundle)])
    assert "OK: all 10 check(s) passed" in verified

    report = tmp_path / "report.html"
    output = _run(audit, ["report", "--log-key", str(key), str(bundle), "--subject-did",
                          SUBJECT_DID, "--salt", SALT.hex(), "-o", str(report)])
    assert "2 event(s)" in output
    html = report.read_text()
    assert '<svg' in html and 'id="per-day"' in html and html.count('<tr id="entry-') == 2
    assert SUBJECT_DID not in html  # the report holds commitments, never the DID
    assert subject_commitment(SUBJECT_DID, SALT) in html
    assert not re.search(r"(src|href)=\"https?:", html)  # no external assets

    # A tampered bundle is rejected, and bundling a tampered receipt writes nothing.
    doc = json.loads(bundle.read_text())
    doc["receipts"][0]["index"] = 1
    bundle.write_text(json.dumps(doc))
    assert "FAIL inclusion" in _run(audit, ["verify", "--log-key", str(key), str(bundle)], code=1)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc["receipts"][0]))
    out = tmp_path / "never.json"
    _run(audit, ["bundle", "--log-key", str(key), "-o", str(out), str(bad)], code=1)
    assert not out.exists()


def test_report_by_period(populated, tmp_path: Path) -> None:
    _, key, receipts = populated
    report = tmp_path / "march.html"
    output = _run(audit, ["report", "--log-key", str(key), *map(str, receipts),
                          "--since", "2026-03-01", "--until", "2026-03-31", "-o", str(report)])
    assert "2 event(s)" in output
    assert "erasure" in report.read_text()


def test_ledger_cli_errors_are_one_sentence(tmp_path: Path) -> None:
    result = CliRunner().invoke(ledger_cli, ["receipt", "--home", str(tmp_path), "00" * 32],
                                env=ENV)
    assert result.exit_code == 1 and "is not a ledger home" in result.output
    assert "Traceback" not in result.output


def test_serve_process_with_client_and_audit(tmp_path: Path) -> None:
    home = tmp_path / "served"
    _run(ledger_cli, ["init", "--home", str(home)])
    _run(ledger_cli, ["authors", "add", "--home", str(home), NODE.did, "--name", "test node",
                      "--role", "node"])
    bin_dir = Path(sys.executable).parent
    proc = subprocess.Popen(
        [str(bin_dir / "sov-ledger"), "serve", "--home", str(home), "--listen", "127.0.0.1:0",
         "--anchor-interval", "3600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **ENV},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(re.search(r"serving on [\d.]+:(\d+)", line).group(1))
        key = LogPublicKey.load(home / "log-public.json")
        ca = (home / "tls" / "ca.pem").read_bytes()
        with LedgerClient(f"127.0.0.1:{port}", ca, log_key=key) as client:
            receipt = client.append(grant_event(1))
            assert client.latest_tree_head().size == 1
        path = tmp_path / "served-receipt.json"
        path.write_text(receipt.dumps())
        check = subprocess.run(
            [str(bin_dir / "sov-audit"), "verify", "--log-key", str(home / "log-public.json"),
             str(path)],
            capture_output=True, text=True, timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert "forgets its chain" in proc.stderr.read()


def test_verify_with_chain_rpc_against_anvil(populated, tmp_path: Path) -> None:
    from .test_anchor import AnvilProcess

    home, key, receipts = populated
    node = AnvilProcess(tmp_path / "anvil-state.json")
    node.start()
    try:
        doc = json.loads(receipts[3].read_text())
        plain = tmp_path / "plain.json"
        plain.write_text(json.dumps(doc))
        output = _run(audit, ["verify", "--log-key", str(key), "--chain-rpc", node.url,
                              str(plain)], code=1)
        assert "FAIL chain anchor: " in output and "carries no anchor" in output

        output = _run(ledger_cli, ["anchor", "--home", str(home), "--chain-rpc", node.url])
        assert "anchored tree size 5" in output
        anchored = tmp_path / "anchored.json"
        _run(ledger_cli, ["receipt", "--home", str(home), doc["entry_hash"], "--with-anchors",
                          "-o", str(anchored)])
        output = _run(audit, ["verify", "--log-key", str(key), "--chain-rpc", node.url,
                              str(anchored)])
        assert "the chain carries tree heads covering entry 3" in output

        forged = json.loads(anchored.read_text())
        tx = forged["anchors"][0]["tx_hash"]
        forged["anchors"][0]["tx_hash"] = tx[:-2] + ("00" if tx[-2:] != "00" else "11")
        anchored.write_text(json.dumps(forged))
        output = _run(audit, ["verify", "--log-key", str(key), "--chain-rpc", node.url,
                              str(anchored)], code=1)
        assert "FAIL chain anchor: " in output and "not found" in output
    finally:
        node.stop()


def test_local_append_follows_the_services_rules(tmp_path: Path) -> None:
    # The operator's own `sov-ledger append` writes nothing unsigned, unregistered or replayed.
    home = tmp_path / "local"
    _run(ledger_cli, ["init", "--home", str(home)])
    events_file = tmp_path / "events.json"
    cases = [(make_event("access_head", node=NODE.did, head="ab" * 32, sequence=1),
              "event 0: the entry carries no author signature"),
             (sign_entry(make_event("access_head", node=NODE.did, head="ab" * 32, sequence=1),
                         NODE), "is not registered with this ledger")]
    for event, message in cases:
        events_file.write_text(json.dumps([event]))
        output = _run(ledger_cli, ["append", "--home", str(home), str(events_file)], code=1)
        assert output.startswith("error: ") and message in output
    _run(ledger_cli, ["authors", "add", "--home", str(home), NODE.did, "--name", "n",
                      "--role", "node"])
    _run(ledger_cli, ["append", "--home", str(home), str(events_file)])
    output = _run(ledger_cli, ["append", "--home", str(home), str(events_file)], code=1)
    assert "already (entry 0), a replayed append" in output
    proof = _run(ledger_cli, ["consistency", "--home", str(home), "1"])
    assert json.loads(proof)["new_checkpoint"].split("\n")[1] == "1"  # one entry, written once


def test_submit_sends_signed_events_to_a_served_ledger(tmp_path: Path) -> None:
    from tests.wallet.conftest import LedgerProcess

    ledger = LedgerProcess(tmp_path)
    try:
        ledger.register(NODE.did)
        events_file = tmp_path / "head.json"
        head = make_event("access_head", node=NODE.did, head="cd" * 32, sequence=1)
        common = ["submit", "--ledger", ledger.address, "--ca", str(ledger.ca_path)]
        events_file.write_text(json.dumps(head))
        output = _run(ledger_cli, [*common, str(events_file)], code=1)
        assert "(UNAUTHENTICATED): nothing was appended" in output
        events_file.write_text(json.dumps(sign_entry(head, NODE)))
        receipt = json.loads(_run(ledger_cli, [*common, "--log-key",
                                               str(ledger.home / "log-public.json"),
                                               str(events_file)]))
        assert receipt["index"] == 0 and receipt["entry"]["author"] == NODE.did
    finally:
        ledger.stop()


def test_authors_bad_input_is_one_sentence_and_changes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "authors"
    _run(ledger_cli, ["init", "--home", str(home)])
    base = ["authors", "add", "--home", str(home), NODE.did]
    assert "error: invalid value for '--kind'" in _run(
        ledger_cli, [*base, "--name", "n", "--role", "node", "--kind", "poem"], code=2)
    assert "the name must be 1 to 80" in _run(
        ledger_cli, [*base, "--name", "<script>", "--role", "node"], code=1)
    x25519 = "did:key:z6LSeu9HkTHSfLLeUs2nnzUSNedgDUevfNQgQjQC23ZCit6F"  # not a signing key
    assert "must be an Ed25519 did:key" in _run(
        ledger_cli, ["authors", "add", "--home", str(home), x25519, "--name", "n",
                     "--role", "node"], code=1)
    assert "is not a registered author" in _run(
        ledger_cli, ["authors", "remove", "--home", str(home), NODE.did], code=1)
    assert "no authors registered" in _run(ledger_cli, ["authors", "list", "--home", str(home)])
    assert "is not a ledger home" in _run(
        ledger_cli, ["authors", "list", "--home", str(tmp_path / "nowhere")], code=1)
    _run(ledger_cli, [*base, "--name", "coordinator", "--role", "coordinator", "--kind", "model"])
    listed = json.loads(_run(ledger_cli, ["authors", "list", "--home", str(home), "--json"]))
    assert [(a["role"], a["kinds"]) for a in listed["authors"]] == [("coordinator", ["model"])]
