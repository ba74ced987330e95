"""``sov-audit verify`` checks who wrote each entry (ledger.authority) and says so.

The entries are put straight into the log (``Log.append``, below the service's checks) to
stand for what an operator could have written by hand, or what was written before entries
were signed: unsigned (legacy), forged, by an unregistered party, or a customer's entry
not written with the key its grant binds. Each fails the ``authority`` check by name.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from consent.grants import issue_grant, verify_grant
from consent.identity import Identity
from ledger.audit_cli import main as audit
from ledger.authority import sign_entry
from ledger.authors import AuthorRegistry
from ledger.customer import grant_entry, grant_key
from ledger.events import make_event
from ledger.log import Log

from .conftest import NODE, OTHER_NODE, customer_grant, grant_event, node_head


def _audit(args: list[object], code: int) -> str:
    result = CliRunner().invoke(audit, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def _receipts(log: Log, tmp_path: Path, events: list[dict[str, Any]]) -> list[Path]:
    paths = []
    for receipt in log.append(events):
        path = tmp_path / f"receipt-{receipt.index}.json"
        path.write_text(receipt.dumps())
        paths.append(path)
    return paths


def test_legacy_entries_are_never_ok(log: Log, ledger_home, tmp_path: Path) -> None:
    key = ledger_home[0] / "log-public.json"
    legacy, signed = _receipts(log, tmp_path, [grant_event(1), node_head(2)])
    output = _audit(["verify", "--log-key", key, legacy, signed], code=1)
    assert "FAIL authority:" in output and "unauthenticated (legacy)" in output
    assert "NOT VERIFIED: 1 check(s) failed" in output
    output = _audit(["verify", "--log-key", key, "--accept-legacy", legacy, signed], code=0)
    assert f"LEGACY {legacy}: entry 0 (grant) is unauthenticated (legacy)" in output
    assert "OK: all 3 check(s) passed; 1 entry accepted unauthenticated (legacy)" in output
    assert f"PASS {signed}: entry 1 written by {NODE.did}" in output


def test_forged_and_unregistered_authors_fail_the_authority_check(
    log: Log, ledger_home, authors: AuthorRegistry, tmp_path: Path
) -> None:
    home = ledger_home[0]
    key, authors_file = home / "log-public.json", tmp_path / "authors.json"
    authors_file.write_text(json.dumps(authors.to_json()))
    forged = {**sign_entry(node_head(5, OTHER_NODE), OTHER_NODE), "author": NODE.did}
    wrong_node = sign_entry(make_event("erasure", proof_digest="cd" * 32,
                                       subject_commitment="ab" * 32, node=NODE.did), OTHER_NODE)
    stranger, registered, grant = _receipts(
        log, tmp_path, [forged, wrong_node, node_head(6, OTHER_NODE), node_head(7),
                        customer_grant(8)])[2:]
    output = _audit(["verify", "--log-key", key, tmp_path / "receipt-0.json",
                     tmp_path / "receipt-1.json"], code=1)
    assert "does not verify over this entry" in output
    assert "may be written only by the node it names" in output
    # Without the authors file the stranger's own head passes, saying registration was not
    # checked; with it, it fails, and the registered node is named.
    output = _audit(["verify", "--log-key", key, stranger], code=0)
    assert "registration not checked (no --authors)" in output
    output = _audit(["verify", "--log-key", key, "--authors", authors_file, stranger,
                     registered, grant], code=1)
    assert (f"FAIL authority: {stranger}: the author {OTHER_NODE.did} is not registered with "
            "this ledger") in output
    assert f"written by {NODE.did} (node 'test node')" in output
    assert f"endorsed by {NODE.did} (node 'test node')" in output
    bad = _audit(["verify", "--log-key", key, "--authors", key, registered], code=2)
    assert "is not an authors file" in bad


def test_an_officer_with_the_grant_tells_the_customers_entry(
    log: Log, ledger_home, tmp_path: Path
) -> None:
    customer = Identity.generate()
    grant_id = "urn:uuid:0b7e6a52-6a43-4c61-9f3e-2f5d1c9e8a01"
    key = grant_key(customer, grant_id)
    credential = issue_grant(customer, requester=Identity.generate().did, nodes=[NODE.did],
                             purpose="churn-analysis", scopes=["sentiment"],
                             ttl=timedelta(hours=2), grant_id=grant_id, ledger_key=key.did)
    grant = verify_grant(credential)
    event = {**grant_entry(grant, "ab" * 32, NODE.did)}
    own = customer_grant(0, key=key, **{k: v for k, v in event.items() if k != "time"})
    other = customer_grant(0, key=Identity.generate(),
                           **{k: v for k, v in event.items() if k != "time"})
    mine, forged = _receipts(log, tmp_path, [own, other])
    grant_file = tmp_path / "grant.json"
    grant_file.write_text(json.dumps(credential))
    log_key = ledger_home[0] / "log-public.json"
    output = _audit(["verify", "--log-key", log_key, "--grant", grant_file, mine], code=0)
    assert "the customer's own: the key its grant binds" in output
    output = _audit(["verify", "--log-key", log_key, "--grant", grant_file, forged], code=1)
    assert "FAIL authority:" in output and "not the customer's" in output
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    assert "is not a signed grant" in _audit(
        ["verify", "--log-key", log_key, "--grant", junk, mine], code=2)


def test_the_report_leaves_out_an_entry_whose_author_does_not_hold(
    log: Log, ledger_home, tmp_path: Path
) -> None:
    forged = {**sign_entry(node_head(5, OTHER_NODE), OTHER_NODE), "author": NODE.did}
    bad, good = _receipts(log, tmp_path, [forged, node_head(6)])
    out = tmp_path / "report.html"
    output = _audit(["report", "--log-key", ledger_home[0] / "log-public.json", "-o", out,
                     bad, good], code=1)
    assert f"FAIL authority: {bad} entry 0: the author's signature does not verify" in output
    assert "wrote" in output and "1 event(s)" in output  # only the entry that holds is listed
