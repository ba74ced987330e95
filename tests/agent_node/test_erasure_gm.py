"""Erasure at a gm-profile node (issue 13): the proof carries the SM2 proof chained to the
Ed25519 one, anchored as a ledger entry; ``sov-audit verify`` checks both signatures of the
erasure receipt: one flipped bit of the SM2 signature fails it, and so does a bad SM2
signature under a valid Ed25519 proof (the SM2 signature itself is checked)."""

from __future__ import annotations

import copy
import dataclasses
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agent_node import accesslog
from agent_node.erasure import Erasure
from agent_node.home import init_home
from agent_node.vault import Vault, iso, sync
from consent import multibase
from consent.identity import Identity
from consent.integrity import EDDSA_JCS, SM2_JCS, sign_document, unsecured, verify_document
from ledger import erasure as protocol
from ledger.audit_cli import main as audit
from ledger.cli import main as ledger_cli
from tests.agent_node.conftest import DATASET_TOML, PASSPHRASE, sqlite_source

ENV = {"SOV_LEDGER_PASSPHRASE": PASSPHRASE}


def _run(cli: Any, args: list[str], code: int = 0) -> str:
    result = CliRunner().invoke(cli, args, env=ENV, catch_exceptions=False)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture(scope="module")
def erased(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]]
           ) -> Iterator[tuple[Path, Path, dict[str, Any], Identity]]:
    """A gm node erases one gm customer; its ledger entry is appended to a ledger. The
    ledger's public key, the erasure receipt file (as the wallet writes it) and the proof."""
    tmp = tmp_path_factory.mktemp("gm-erasure")
    home = init_home(tmp / "node", PASSPHRASE, name="gm-erasure", profile="gm")
    home.datamap_path.write_text(sqlite_source(tmp, bank_rows[:60]) + DATASET_TOML)
    vault = Vault(home.vault_path, home.keys)
    sync(vault, home.datamap())
    customer = Identity.generate("gm")
    vault.bind(["C000"], customer.did)
    with vault.transaction() as conn:
        accesslog.remember_salt(conn, customer.did, secrets.token_hex(32),
                                iso(datetime.now(UTC)))
    request = protocol.issue_request(customer, home.identity.did)
    outcome = Erasure(home, vault).erase(request, caller=customer.did)
    assert outcome.entry is not None

    ledger = tmp / "ledger"
    _run(ledger_cli, ["init", "--home", str(ledger), "--origin", "gm.test.example/log"])
    _run(ledger_cli, ["authors", "add", "--home", str(ledger), home.identity.did, "--name",
                      "gm node", "--role", "node"])
    entries = tmp / "entries.json"
    entries.write_text(json.dumps([outcome.entry]))
    _run(ledger_cli, ["append", "--home", str(ledger), str(entries), "-o", str(tmp / "out")])
    [receipt] = sorted((tmp / "out").glob("receipt-*.json"))
    document = {"format": protocol.RECEIPT_FORMAT, "proof": outcome.proof,
                "receipt": json.loads(receipt.read_text())}
    erasure_file = tmp / "erasure-gm.json"
    erasure_file.write_text(json.dumps(document))
    yield ledger / "log-public.json", erasure_file, outcome.proof, home.identity


@dataclass(frozen=True)
class _FlippingSM2:
    """The node's SM2 key, except that each signature comes out with one bit flipped: a
    forger's proof whose Ed25519 part is valid (a test double, to reach the SM2 check)."""

    key: Any

    def public_key(self) -> Any:
        return self.key.public_key()

    def sign(self, data: bytes) -> bytes:
        signature = bytearray(self.key.sign(data))
        signature[5] ^= 0x01
        return bytes(signature)


def _flip_sm2_bit(document: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    sm2 = changed["proof"]["proof"][0]
    raw = bytearray(multibase.decode(sm2["proofValue"]))
    raw[len(raw) // 2] ^= 0x01
    sm2["proofValue"] = multibase.encode(bytes(raw))
    return changed


def test_a_gm_node_signs_its_erasure_proof_with_sm2_too(
        erased: tuple[Path, Path, dict[str, Any], Identity], tmp_path: Path) -> None:
    log_key, erasure_file, proof, node = erased
    suites = [p["cryptosuite"] for p in proof["proof"]]
    assert suites == [SM2_JCS, EDDSA_JCS]  # the SM2 proof, then Ed25519 chained to it
    assert verify_document(proof, require_sm2=True) == proof["node"]

    verified = _run(audit, ["verify", "--log-key", str(log_key), str(erasure_file)])
    assert f"erasure proof signed by {proof['node']}" in verified
    assert "the erasure entry of exactly this proof" in verified

    flipped = tmp_path / "flipped.json"
    flipped.write_text(json.dumps(_flip_sm2_bit(json.loads(erasure_file.read_text()))))
    failed = _run(audit, ["verify", "--log-key", str(log_key), str(flipped)], code=1)
    assert "FAIL erasure" in failed and "signature does not verify" in failed

    forger = dataclasses.replace(node, sm2=_FlippingSM2(node.sm2))  # type: ignore[arg-type]
    forged = json.loads(erasure_file.read_text())
    forged["proof"] = sign_document(unsecured(proof), forger)
    bad_sm2 = tmp_path / "bad-sm2.json"
    bad_sm2.write_text(json.dumps(forged))
    failed = _run(audit, ["verify", "--log-key", str(log_key), str(bad_sm2)], code=1)
    assert "FAIL erasure" in failed and "SM2 signature does not verify" in failed


def test_an_audit_bundle_carries_the_erasure_proof_and_checks_its_content(
        erased: tuple[Path, Path, dict[str, Any], Identity], tmp_path: Path) -> None:
    """The offline bundle keeps the signed proof beside its entry's receipt: verifying the
    bundle checks what the proof says (locations, digests, scan), not only that an entry
    exists, and the report of the bundle shows it."""
    log_key, erasure_file, proof, _ = erased
    bundle = tmp_path / "bundle.json"
    made = _run(audit, ["bundle", "--log-key", str(log_key), "-o", str(bundle),
                        str(erasure_file)])
    assert "1 receipt(s), 0 consistency proof(s), 1 erasure proof(s)" in made
    doc = json.loads(bundle.read_text())
    assert doc["erasure_proofs"] == [proof]
    verified = _run(audit, ["verify", "--log-key", str(log_key), str(bundle)])
    assert f"erasure proof 1: erasure proof signed by {proof['node']}" in verified
    assert "the erasure entry of exactly this proof" in verified
    report = tmp_path / "report.html"
    _run(audit, ["report", "--log-key", str(log_key), "-o", str(report), str(bundle)])
    rows = next(loc["rows"] for loc in proof["locations"] if loc["name"] == "vault.dataset_rows")
    html = report.read_text()
    assert f"vault.dataset_rows {rows}" in html and "(signed proof checked)" in html

    # The proof's content changed in the bundle (a destroyed-rows digest, the scan's hits,
    # or the proof left with no entry naming it): the bundle no longer verifies.
    def digest(d: dict[str, Any]) -> None:
        d["erasure_proofs"][0]["locations"][0]["digest"] = "0" * 64

    def hits(d: dict[str, Any]) -> None:
        d["erasure_proofs"][0]["scan"]["files"][0]["hits"] = 1

    def no_entry(d: dict[str, Any]) -> None:
        d["receipts"] = []

    for change, words in ((digest, "signature does not verify"),
                          (hits, "signature does not verify"),
                          (no_entry, "no receipt of the bundle is this proof's ledger entry")):
        changed = json.loads(bundle.read_text())
        change(changed)
        path = tmp_path / f"changed-{change.__name__}.json"
        path.write_text(json.dumps(changed))
        failed = _run(audit, ["verify", "--log-key", str(log_key), str(path)], code=1)
        assert "FAIL" in failed and words in failed, failed
