"""The destination side of a migration (issue 13) in one process: node B imports what node A
exported under the customer's signed request, binds it, keeps it through a sync and answers a
repeated request with the same receipt; a changed export, a forged or misdirected request and
an export B cannot hold are each refused in one sentence with nothing changed."""

from __future__ import annotations

import copy
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent_node import locations
from agent_node.errors import PermissionDenied, PreconditionFailed, Unauthenticated
from agent_node.importstore import ImportStore
from agent_node.vault import sync
from consent import protocol as wire
from consent.identity import Identity
from ledger import migration
from tests.agent_node.conftest import THRESHOLD, InProcessNode, in_process_node

ROWS = [{"age": 41, "job": "zq-import-job", "duration": 120, "education": "zq-import-edu",
         "y": "no"}, {"age": 42, "job": "admin.", "duration": 30, "education": None, "y": "yes"}]


def _export(source: Identity, customer: str, datasets: dict[str, Any]) -> dict[str, Any]:
    """Node A's signed Export reply document, as its service signs it."""
    body = {"export": {"subject": customer, "node": source.did, "datasets": datasets}}
    return dict(json.loads(wire.sign_reply("Export", secrets.token_hex(16),
                                           datetime.now(UTC).isoformat(), body, source)))


def _counts(node: InProcessNode) -> list[int]:
    with node.vault.connection() as conn:
        return [conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                for t in locations.vault_tables(conn)]


@pytest.fixture
def b_node(tmp_path: Path, bank_rows: list[dict[str, Any]]) -> InProcessNode:
    return in_process_node(tmp_path, bank_rows[:60], "import-b", THRESHOLD)


def test_import_binds_keeps_through_sync_and_repeats(b_node: InProcessNode) -> None:
    source, customer = Identity.generate(), Identity.generate()
    export = _export(source, customer.did, {"contacts": ROWS, "chats": []})  # B has no chats
    request = migration.issue_request(customer, source=source.did, target=b_node.home.identity.did,
                                      migration=migration.new_migration_id(), export=export)
    store = ImportStore(b_node.home, b_node.vault)
    receipt = store.import_customer(customer.did, {"request": request, "export": export})
    assert migration.verify_import(receipt, node_did=b_node.home.identity.did,
                                   request=request) == b_node.home.identity.did
    assert receipt["datasets"] == {"contacts": 2, "chats": 0}
    with b_node.vault.connection() as conn:
        [sid] = b_node.vault.sids_for_did(conn, customer.did)
        assert conn.execute("SELECT count(*) FROM ds_contacts WHERE sid = ?",
                            (sid,)).fetchone()[0] == 2
    assert sync(b_node.vault, b_node.home.datamap())[0].deleted == 0  # B's source lacks them
    with b_node.vault.connection() as conn:
        assert conn.execute("SELECT count(*) FROM ds_contacts WHERE sid = ?",
                            (sid,)).fetchone()[0] == 2
    before = _counts(b_node)
    assert store.import_customer(customer.did, {"request": request, "export": export}) == receipt
    assert _counts(b_node) == before


def test_bad_imports_are_refused_and_change_nothing(b_node: InProcessNode) -> None:
    source, customer, other = Identity.generate(), Identity.generate(), Identity.generate()
    target = b_node.home.identity.did
    export = _export(source, customer.did, {"contacts": ROWS})

    def request_for(document: dict[str, Any], signer: Identity = customer,
                    to: str = target) -> dict[str, Any]:
        return migration.issue_request(signer, source=source.did, target=to,
                                       migration=migration.new_migration_id(), export=document)

    changed = copy.deepcopy(export)
    changed["body"]["export"]["datasets"]["contacts"][0]["age"] = 99
    unmapped = _export(source, customer.did, {"orders": [{"amount": 1.0}]})
    extra = _export(source, customer.did, {"contacts": [{**ROWS[0], "salary": 1}]})
    someone_elses = _export(source, other.did, {"contacts": ROWS})
    cases = [
        (customer.did, request_for(export), changed, Unauthenticated, "changed after"),
        (customer.did, request_for(export, to=other.did), export, PermissionDenied,
         "another destination"),
        (other.did, request_for(export), export, PermissionDenied, "another customer's"),
        (customer.did, request_for(someone_elses), someone_elses, PermissionDenied,
         "another customer's or another node's"),
        (customer.did, request_for(unmapped), unmapped, PreconditionFailed,
         "does not map dataset 'orders'"),
        (customer.did, request_for(extra), extra, PreconditionFailed, "no column 'salary'"),
    ]
    forged = request_for(export)
    forged["to"] = target
    forged["export"] = migration.export_digest(changed)
    cases.append((customer.did, forged, changed, Unauthenticated, "signature does not verify"))
    store = ImportStore(b_node.home, b_node.vault)
    before = _counts(b_node)
    for caller, request, document, error, words in cases:
        with pytest.raises(error, match=words):
            store.import_customer(caller, {"request": request, "export": document})
    assert _counts(b_node) == before
