"""A known ledger history for the report tests: grants, the access heads that used them, a
revocation of a grant in the history and one of a grant whose entry is not, a legacy head
without a summary, and an entry just after the selected days. Written to a real log; each
receipt is a file, as ``sov-audit report`` reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from consent.identity import Identity
from ledger.events import make_event
from ledger.log import Log
from ledger.models import Anchor, LogPublicKey
from ledger.note import Checkpoint

PURPOSE, OTHER = "quote-generation", "renewal-warning"
NODE = Identity.generate().did
CRM = Identity.generate().did
G1, G2, G3, G4, GX = (f"{n:064x}" for n in (0xA1, 0xA2, 0xA3, 0xA4, 0xAF))
SUBJECT = f"{0x5B:064x}"


def _at(text: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(text)


def _grant(time: str, digest: str, purpose: str, scopes: list[str]) -> dict[str, Any]:
    return make_event("grant", time=_at(time), grant_digest=digest, subject_commitment=SUBJECT,
                      purpose=purpose, scopes=scopes, requester=CRM, nodes=[NODE],
                      expires="2026-03-02T09:00:00Z")


def _head(time: str, sequence: int, digests: list[str], **extra: Any) -> dict[str, Any]:
    return make_event("access_head", time=_at(time), node=NODE, head=f"{sequence:064x}",
                      sequence=sequence, grant_digests=digests, subject_commitments=[SUBJECT],
                      **extra)


def _row(outcome: str, count: int, purpose: str, **extra: Any) -> dict[str, Any]:
    return {"outcome": outcome, "count": count, "requester": CRM, "purpose": purpose, **extra}


# (entry index in the log) -> event, in log order.
HISTORY = [
    _grant("2026-03-01T09:00:00+00:00", G1, PURPOSE, ["transaction"]),
    _grant("2026-03-01T10:00:00+00:00", G2, OTHER, ["identity", "transaction"]),
    _head("2026-03-01T12:00:00+00:00", 3, [G1], accesses=[
        _row("answered", 2, PURPOSE, scopes=["transaction"]),
        _row("refused", 1, OTHER, reason="no-grant")]),
    _head("2026-03-02T08:00:00+00:00", 5, [G1, G2, GX], accesses=[
        _row("answered", 1, OTHER, scopes=["identity", "transaction"]),
        _row("nothing-released", 1, PURPOSE, scopes=["transaction"]),
        _row("refused", 1, PURPOSE, reason="scope")]),
    make_event("revocation", time=_at("2026-03-02T09:30:00+00:00"), revocation_digest="c1" * 32,
               grant_digest=G1, subject_commitment=SUBJECT, node=NODE),
    make_event("revocation", time=_at("2026-03-03T10:00:00+00:00"), revocation_digest="c3" * 32,
               grant_digest=G3, subject_commitment=SUBJECT, node=NODE),
    _head("2026-03-03T23:59:59+00:00", 6, [G2]),  # written before heads carried a summary
    _grant("2026-03-04T00:00:00+00:00", G4, PURPOSE, ["transaction"]),  # after the 3rd
]
ANCHORED_SIZE = 4  # entries 0..3 are covered by a chain anchor


def write_history(log: Log, folder: Path) -> list[Path]:
    """Append HISTORY (the first ANCHORED_SIZE entries in one batch, anchored), write one
    receipt file per entry and return their paths."""
    first = log.append(HISTORY[:ANCHORED_SIZE])
    note = log.note_at(ANCHORED_SIZE)
    assert note is not None
    head = Checkpoint.parse(note.split("\n\n")[0] + "\n")
    anchor = Anchor(chain_id=31337, tx_hash="0x" + "7e" * 32, block_number=12,
                    size=ANCHORED_SIZE, root=head.root, checkpoint=note)
    receipts = [log.receipt(r.entry_hash, [anchor]) for r in first]
    receipts += log.append(HISTORY[ANCHORED_SIZE:])
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for receipt in receipts:
        path = folder / f"receipt-{receipt.index}.json"
        path.write_text(receipt.dumps(), encoding="utf-8")
        paths.append(path)
    return paths


def write_report(log: Log, public: LogPublicKey, folder: Path) -> tuple[str, Path]:
    """``sov-audit report --since 2026-03-01 --until 2026-03-03`` over the history's receipts:
    (its output, the HTML file)."""
    from click.testing import CliRunner

    from ledger.audit_cli import main as audit

    paths = write_history(log, folder / "receipts")
    out = folder / "march.html"
    result = CliRunner().invoke(audit, ["report", "--log-key", str(key_file(public, folder)),
                                        "-o", str(out), "--since", "2026-03-01", "--until",
                                        "2026-03-03", *map(str, paths)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output, out


def key_file(public: LogPublicKey, folder: Path) -> Path:
    path = folder / "log-public.json"
    path.write_text(json.dumps(public.to_json()), encoding="utf-8")
    return path
