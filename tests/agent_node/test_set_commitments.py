"""Access events commit to their grant and subject sets by RFC 9162 Merkle roots
(agent_node.accesslog.set_commitment), and a subject gets inclusion proofs of its own members.

The reference vectors are the RFC 6962 / 9162 8-leaf tree (../shared/vectors/merkle): its
leaves are ASCII strings already in byte order, so a set of them must hash to the RFC's roots
and prove inclusion with the RFC's audit paths, whatever order the members come in.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from agent_node import accesslog


@pytest.fixture(scope="module")
def reference(shared_dir: Path) -> dict[str, Any]:
    return json.loads((shared_dir / "vectors/merkle/rfc6962_reference_tree.json").read_text())


def _members(reference: dict[str, Any], size: int) -> list[str]:
    return [bytes.fromhex(x).decode() for x in reference["leaf_inputs_hex"][:size]]


@pytest.mark.parametrize("size", range(9))
def test_set_root_is_the_rfc_tree_hash(reference: dict[str, Any], size: int) -> None:
    members = _members(reference, size)
    expected = next(r["root"] for r in reference["root_hashes"] if r["tree_size"] == size)
    shuffled = members[:]
    random.Random(size).shuffle(shuffled)
    assert accesslog.set_commitment(shuffled) == (size, expected)
    assert accesslog.set_commitment(shuffled + members) == (size, expected)  # a set: no repeats


def test_membership_proofs_are_the_rfc_audit_paths(reference: dict[str, Any]) -> None:
    checked = 0
    for vector in reference["inclusion_proofs"]:
        members = _members(reference, vector["tree_size"])
        member = members[vector["leaf_index"]]
        [proof] = accesslog.membership_proofs(members, [member])
        assert proof == {"member": member, "index": vector["leaf_index"],
                         "path": vector["audit_path"]}
        assert accesslog.verify_membership(proof, vector["tree_size"], vector["root"])
        checked += 1
    assert checked >= 5


def test_only_members_get_proofs() -> None:
    members = [f"urn:uuid:{i:04d}" for i in range(37)]
    proofs = accesslog.membership_proofs(members, ["urn:uuid:0005", "urn:uuid:9999"])
    assert [p["member"] for p in proofs] == ["urn:uuid:0005"]


@pytest.mark.parametrize("tamper", [
    lambda p: {**p, "member": "urn:uuid:0006"},  # another member's proof
    lambda p: {**p, "member": "urn:uuid:stranger"},
    lambda p: {**p, "index": p["index"] + 1},
    lambda p: {**p, "path": p["path"][:-1]},
    lambda p: {**p, "path": [*p["path"], "00" * 32]},
    lambda p: {**p, "path": ["ff" * 32, *p["path"][1:]]},
    lambda p: {**p, "path": ["not hex"]},
    lambda p: {k: v for k, v in p.items() if k != "index"},
    lambda p: None,
])
def test_a_tampered_proof_does_not_verify(tamper: Any) -> None:
    members = [f"urn:uuid:{i:04d}" for i in range(37)]
    size, root = accesslog.set_commitment(members)
    [proof] = accesslog.membership_proofs(members, ["urn:uuid:0005"])
    assert accesslog.verify_membership(proof, size, root)
    assert not accesslog.verify_membership(tamper(proof), size, root)
    assert not accesslog.verify_membership(proof, 5, root)  # a size the proof cannot fit
    assert not accesslog.verify_membership(proof, size, "00" * 32)


def _event(grants: list[str], refs: list[str], own_grants: list[str], own_refs: list[str]
           ) -> dict[str, Any]:
    grant_count, grants_root = accesslog.set_commitment(grants)
    subject_count, subjects_root = accesslog.set_commitment(refs)
    body = {"v": accesslog.EVENT_VERSION, "seq": 7, "grant_count": grant_count,
            "grants_root": grants_root, "subject_count": subject_count,
            "subjects_root": subjects_root, "outcome": "answered"}
    return {"body": body, "prev_hash": "00" * 32, "hash": "11" * 32,
            "proofs": {"grants": accesslog.membership_proofs(grants, own_grants),
                       "subjects": accesslog.membership_proofs(refs, own_refs)}}


def test_the_client_shows_proven_members_and_refuses_unproven_events() -> None:
    from agent_node.client import _checked_event

    grants = [f"urn:uuid:{i:04d}" for i in range(12)]
    refs = [f"{i:032x}" for i in range(9)]
    event = _event(grants, refs, ["urn:uuid:0003"], [refs[4]])
    shown = _checked_event(event, on_chain=True)
    assert shown["verified"] and shown["own_grants"] == ["urn:uuid:0003"]
    assert shown["own_subject_refs"] == [refs[4]] and shown["grant_count"] == 12
    assert not _checked_event(event, on_chain=False)["verified"]

    # A proof that does not lead to the event's root, or no proof at all: not verified.
    forged = _event(grants, refs, ["urn:uuid:0003"], [])
    forged["proofs"]["grants"][0]["member"] = "urn:uuid:0004"
    assert not _checked_event(forged, on_chain=True)["verified"]
    for proofs in ({"grants": [], "subjects": []}, None, {"grants": "x"}):
        assert not _checked_event({**event, "proofs": proofs}, on_chain=True)["verified"]
    # Events written before v2 listed their grant ids; the chain alone verifies them.
    old = {"body": {"seq": 3, "grant_ids": grants}, "prev_hash": "00" * 32, "hash": "11" * 32}
    assert _checked_event(old, on_chain=True)["verified"]
