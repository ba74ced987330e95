"""``sov-audit``: the compliance officer's verifier for the hash ledger (RFC 9162 receipts,
C2SP signed tree heads, chain anchors).

Exit status: 0 only when every check passed; 1 when a check failed (each failure names the
check and why); 2 for usage errors. Options, errors and output follow the shared convention
(``consent.commandline``); ``--json`` prints every check and its outcome.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from consent import timespec
from consent.commandline import (
    ToolGroup,
    emit,
    json_option,
    out_option,
    progress,
    usage_error,
)
from ledger.audit import (
    BUNDLE_FORMAT,
    AuthorityPolicy,
    Bundle,
    Outcome,
    build_bundle,
    check_bundled_erasures,
    check_consistency,
    check_erasure,
    check_heads_match,
    check_migration,
    check_receipt,
    load_items,
    load_json,
    read_tree_head,
)
from ledger.errors import LedgerError
from ledger.events import subject_commitment as make_commitment
from ledger.models import ConsistencyProof, LogPublicKey, Receipt
from ledger.verify import CheckFailed, verify_consistency_proof

_HEX64 = re.compile(r"[0-9a-f]{64}")
LOG_KEY_HELP = "The log's public-key file (log-public.json), obtained out of band."


def _log_key(path: Path) -> LogPublicKey:
    try:
        return LogPublicKey.load(path)
    except LedgerError as exc:
        usage_error(str(exc))
        raise AssertionError from exc  # unreachable: usage_error raises


def _write(out: Path, text: str) -> None:
    """Write an output file, or exit 2 with one sentence (e.g. a missing folder)."""
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        usage_error(f"cannot write {out}: {exc.strerror}; give --out a path in an existing "
                    "folder")


def _report(outcome: Outcome, as_json: bool = False, **extra: Any) -> None:
    """Every check and its outcome (or one JSON object with them), then exit 0 only when all
    passed, else 1."""
    if as_json:
        emit(True, {"ok": outcome.ok, "passed": outcome.passed, "legacy": outcome.legacy,
                    "failed": [{"check": f.check, "reason": f.reason} for f in outcome.failed],
                    **extra}, "")
        sys.exit(0 if outcome.ok else 1)
    for line in outcome.passed:
        click.echo(f"PASS {line}")
    for line in outcome.legacy:
        click.echo(f"LEGACY {line} (accepted: --accept-legacy)")
    for failure in outcome.failed:
        click.echo(f"FAIL {failure.check}: {failure.reason}")
    if outcome.ok:
        legacy = (f"; {len(outcome.legacy)} entr{'y' if len(outcome.legacy) == 1 else 'ies'} "
                  "accepted unauthenticated (legacy)") if outcome.legacy else ""
        click.echo(f"OK: all {len(outcome.passed)} check(s) passed{legacy}")
        sys.exit(0)
    click.echo(f"NOT VERIFIED: {len(outcome.failed)} check(s) failed")
    sys.exit(1)


def _chain(url: str | None) -> Any:
    if url is None:
        return None
    from ledger.anchor import rpc_web3

    return rpc_web3(url)


@click.group(cls=ToolGroup, expected_errors=(LedgerError,))
def main() -> None:
    """Verify hash-ledger receipts, tree heads and anchors, offline or against a chain."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--log-key", "log_key_path", required=True, type=click.Path(path_type=Path),
              help=LOG_KEY_HELP)
@click.option("--chain-rpc", help="JSON-RPC URL of the chain: also check the receipts' anchors.")
@click.option("--authors", "authors_path", type=click.Path(path_type=Path),
              help="The ledger's authors file ('sov-ledger authors list --json', obtained out "
                   "of band): also check each author was registered for its entry's kind.")
@click.option("--grant", "grant_paths", multiple=True, type=click.Path(path_type=Path),
              help="A grant (signed credential JSON) whose customer's entries must be written "
                   "with the key it binds (repeatable).")
@click.option("--accept-legacy", is_flag=True,
              help="Accept entries written before entries were signed, reported as "
                   "'unauthenticated (legacy)' (they fail otherwise).")
@json_option
def verify(files: tuple[Path, ...], log_key_path: Path, chain_rpc: str | None,
           authors_path: Path | None, grant_paths: tuple[Path, ...], accept_legacy: bool,
           as_json: bool) -> None:
    """Verify receipts, bundles or erasure receipts: signature, inclusion, who wrote each entry
    (authority), an erasure's signed proof against its entry, and with --chain-rpc, the
    anchor."""
    log_key = _log_key(log_key_path)
    policy = _policy(authors_path, grant_paths, accept_legacy)
    chain = _chain(chain_rpc)
    outcome = Outcome()
    for path in files:
        if _is_erasure(path):
            check_erasure(outcome, str(path), load_json(path), log_key, chain, policy)
            continue
        if _is_erasure(path, "ledger.migration"):
            check_migration(outcome, str(path), load_json(path), log_key, chain, policy)
            continue
        try:
            receipts, proofs, bundle_key = load_items(path)
        except CheckFailed as exc:
            outcome.failed.append(CheckFailed(exc.check, f"{path}: {exc.reason}"))
            continue
        if bundle_key is not None and bundle_key != log_key:
            outcome.failed.append(
                CheckFailed("log key", f"{path}: the bundle's log key is not the one given")
            )
            continue
        for n, receipt in enumerate(receipts):
            label = str(path) if len(receipts) == 1 else f"{path} receipt {n + 1}"
            check_receipt(outcome, label, receipt, log_key, chain, policy)
        for n, proof in enumerate(proofs):
            check_consistency(outcome, f"{path} consistency {n + 1}", proof, log_key)
        if bundle_key is not None:  # a bundle: its erasure proofs against its receipts
            check_bundled_erasures(outcome, str(path), _bundle_erasures(path), receipts)
    _report(outcome, as_json)


def _bundle_erasures(path: Path) -> list[dict[str, Any]]:
    """A bundle's erasure proofs as written (each is checked by check_bundled_erasures)."""
    doc = load_json(path)
    return list(Bundle.from_json(doc).erasures) if doc.get("format") == BUNDLE_FORMAT else []


def _is_erasure(path: Path, protocol: str = "ledger.erasure") -> bool:
    """An erasure receipt (the node's proof + the ledger receipt of its entry)? With
    ``ledger.migration``: a migration receipt (request, export, import, erasure)?"""
    from importlib import import_module

    try:
        return load_json(path).get("format") == import_module(protocol).RECEIPT_FORMAT
    except CheckFailed:
        return False  # load_items reports the file's defect


def _policy(authors_path: Path | None, grant_paths: tuple[Path, ...], accept_legacy: bool
            ) -> AuthorityPolicy:
    """The authority policy from the options; a usage error (exit 2) for a bad file."""
    from consent.errors import ConsentError
    from consent.grants import verify_grant
    from ledger.audit import load_json
    from ledger.authors import load_authors_file

    try:
        authors = load_authors_file(authors_path) if authors_path is not None else None
    except LedgerError as exc:
        usage_error(str(exc))
    grants = {}
    for path in grant_paths:
        try:
            credential = load_json(path)
            # Expired grants are still the customer's: judge the proof, not today's validity.
            grant = verify_grant(credential, now=_issued(credential))
        except (CheckFailed, ConsentError, ValueError) as exc:
            usage_error(f"{path} is not a signed grant: {exc}")
        grants[grant.digest] = grant
    return AuthorityPolicy(authors, accept_legacy, grants)


def _issued(credential: dict[str, Any]) -> datetime:
    """The grant's own issue time (validity is judged as of then)."""
    issued = credential.get("credentialSubject", {}).get("issued", "")
    try:
        return datetime.fromisoformat(str(issued).replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError("it has no valid issue time") from exc


@main.command()
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--log-key", "log_key_path", required=True, type=click.Path(path_type=Path),
              help=LOG_KEY_HELP)
@click.option("--proof", "proof_path", type=click.Path(path_type=Path),
              help="Consistency proof JSON (from 'sov-ledger consistency').")
@click.option("--ledger", "address", help="Fetch the proof from this ledger service (host:port).")
@click.option("--ca", "ca_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CA certificate of the ledger service (with --ledger).")
@json_option
def consistency(
    old: Path,
    new: Path,
    log_key_path: Path,
    proof_path: Path | None,
    address: str | None,
    ca_path: Path | None,
    as_json: bool,
) -> None:
    """Check that tree head OLD is a prefix of tree head NEW (files: checkpoints or receipts)."""
    log_key = _log_key(log_key_path)
    if (proof_path is None) == (address is None):
        usage_error("give exactly one of --proof FILE or --ledger HOST:PORT --ca FILE")
    outcome = Outcome()

    def run() -> str:
        old_head, new_head = read_tree_head(old, log_key), read_tree_head(new, log_key)
        if old_head.size > new_head.size:
            raise CheckFailed("consistency", "OLD is a larger tree than NEW: swap them")
        proof = _load_proof(proof_path, address, ca_path, log_key, old_head.size, new_head.size)
        verify_consistency_proof(proof, log_key)  # signatures first, then compare heads
        check_heads_match(proof, old_head, new_head)
        return f"tree size {old_head.size} is a prefix of tree size {new_head.size}"

    outcome.run("consistency", run)
    _report(outcome, as_json)


def _load_proof(
    proof_path: Path | None,
    address: str | None,
    ca_path: Path | None,
    log_key: LogPublicKey,
    old_size: int,
    new_size: int,
) -> ConsistencyProof:
    if proof_path is not None:
        from ledger.audit import load_json

        try:
            return ConsistencyProof.from_json(load_json(proof_path))
        except LedgerError as exc:
            raise CheckFailed("proof format", str(exc)) from exc
    if ca_path is None:
        raise CheckFailed("usage", "--ledger needs --ca with the service's CA certificate")
    from ledger.client import LedgerClient

    with LedgerClient(str(address), ca_path.read_bytes(), log_key=log_key) as client:
        if old_size == new_size:
            raise CheckFailed("consistency", "equal sizes: compare the roots, no proof needed")
        return client.consistency(old_size, new_size)


@main.command()
@click.argument("receipts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--log-key", "log_key_path", required=True, type=click.Path(path_type=Path),
              help=LOG_KEY_HELP)
@click.option("--consistency", "proof_paths", multiple=True, type=click.Path(path_type=Path),
              help="Consistency proof JSON to include (repeatable).")
@out_option("Where to write the bundle.", required=True)
@json_option
def bundle(
    receipts: tuple[Path, ...], log_key_path: Path, proof_paths: tuple[Path, ...], out: Path,
    as_json: bool,
) -> None:
    """Verify RECEIPTS and write one offline bundle (receipts, tree heads, anchors, key)."""
    from ledger.audit import load_json

    log_key = _log_key(log_key_path)
    loaded: list[Receipt] = []
    proofs: list[ConsistencyProof] = []
    erasures: dict[str, dict[str, Any]] = {}  # the signed erasure proofs, by digest
    outcome = Outcome()
    for path in receipts:
        try:
            items, more_proofs, _ = load_items(path)
            erasures.update(_erasure_proofs(path))
        except CheckFailed as exc:
            outcome.failed.append(CheckFailed(exc.check, f"{path}: {exc.reason}"))
            continue
        loaded.extend(items)
        proofs.extend(more_proofs)
    for path in proof_paths:
        try:
            proofs.append(ConsistencyProof.from_json(load_json(path)))
        except LedgerError as exc:
            outcome.failed.append(CheckFailed("proof format", f"{path}: {exc}"))
    result, checks = build_bundle(loaded, proofs, log_key, list(erasures.values()))
    outcome.passed.extend(checks.passed)
    outcome.failed.extend(checks.failed)
    if outcome.ok:
        _write(out, json.dumps(result.to_json(), indent=2) + "\n")
        if not as_json:
            click.echo(f"wrote {out}: {len(loaded)} receipt(s), {len(proofs)} consistency "
                       f"proof(s), {len(erasures)} erasure proof(s)")
    elif not as_json:
        click.echo("no bundle written: some items did not verify")
    _report(outcome, as_json, out=str(out) if outcome.ok else None, receipts=len(loaded),
            consistency_proofs=len(proofs), erasure_proofs=len(erasures))


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--log-key", "log_key_path", required=True, type=click.Path(path_type=Path),
              help=LOG_KEY_HELP)
@click.option("--subject-commitment", help="Only events of this subject commitment (hex).")
@click.option("--subject-did", help="Only events of this subject (needs --salt).")
@click.option("--salt", help="The subject's 32-byte commitment salt, hex (from their wallet).")
@timespec.since_option()
@timespec.until_option()
@out_option("Where to write the HTML report.", required=True)
@json_option
def report(
    files: tuple[Path, ...],
    log_key_path: Path,
    subject_commitment: str | None,
    subject_did: str | None,
    salt: str | None,
    since: timespec.TimeBound | None,
    until: timespec.TimeBound | None,
    out: Path,
    as_json: bool,
) -> None:
    """Write a readable HTML report of the verified entries of a subject or a period:
    summary, entries per day by purpose, one row per entry with its links."""
    from ledger.report import render, select
    from ledger.verify import verify_receipt

    timespec.check_range(since, until)
    log_key = _log_key(log_key_path)
    commitment = _commitment(subject_commitment, subject_did, salt)
    outcome = Outcome()
    verified: list[tuple[Receipt, int]] = []
    proofs: dict[str, dict[str, Any]] = {}
    with progress(as_json) as shown:  # verifying thousands of receipts takes a while
        for path in files:
            try:
                items, _, _ = load_items(path)
                proofs.update(_erasure_proofs(path))
            except CheckFailed as exc:
                outcome.failed.append(CheckFailed(exc.check, f"{path}: {exc.reason}"))
                continue
            for receipt in items:
                label = f"{path} entry {receipt.index}"
                if outcome.run(label, functools.partial(_verified, receipt, log_key)):
                    verified.append((receipt,
                                     verify_receipt(receipt, log_key).checkpoint.size))
                shown.advance("verifying entries")
    chosen = select(verified, subject_commitment=commitment,
                    since=since.start if since else None, until=until.end if until else None)
    selection = _selection_text(commitment, since, until)
    html = render(
        chosen,
        title="Ledger audit report",
        origin=log_key.origin,
        selection=selection,
        failures=[f"{f.check}: {f.reason}" for f in outcome.failed],
        proofs=proofs,
    )
    _write(out, html)
    if not as_json:
        click.echo(f"wrote {out}: {len(chosen)} event(s) ({selection})")
    _report(outcome, as_json, out=str(out), events=len(chosen), selection=selection)


def _erasure_proofs(path: Path) -> dict[str, dict[str, Any]]:
    """The signed erasure proofs of an erasure or migration receipt file, or of a bundle, by
    digest, each signature verified (the report shows what they say beside their ledger
    entries; a bundle keeps them); {} for other files."""
    from ledger.audit import bundled_erasures, erasure_proofs, load_json
    from ledger.erasure import proof_digest

    if not (_is_erasure(path) or _is_erasure(path, "ledger.migration")):
        return {proof_digest(proof): proof
                for proof in bundled_erasures(load_json(path), str(path))}
    return {proof_digest(proof): proof for _, proof in erasure_proofs(load_json(path),
                                                                     str(path))}


def _verified(receipt: Receipt, log_key: LogPublicKey) -> str:
    """Signature and inclusion, and an author's signatures and node rules (an entry whose
    author does not hold is left out of the report as a failure; one without any author is
    listed, marked "unauthenticated (legacy)")."""
    from ledger.authority import check_entry
    from ledger.errors import AuthorityError
    from ledger.verify import verify_receipt

    verify_receipt(receipt, log_key)
    if "author" in receipt.event or "signature" in receipt.event:
        try:
            check_entry(receipt.event, receipt.entry, None)
        except AuthorityError as exc:
            raise CheckFailed("authority", str(exc)) from exc
    return "verified"


def _commitment(commitment: str | None, did: str | None, salt: str | None) -> str | None:
    if did is not None:
        if commitment is not None:
            usage_error("give --subject-did with --salt, or --subject-commitment, not both")
        try:
            raw = bytes.fromhex(salt or "")
            return make_commitment(did, raw)
        except (ValueError, LedgerError):
            usage_error("--subject-did needs --salt: the subject's 32-byte salt as 64 hex "
                        "characters")
    if salt is not None and did is None:
        usage_error("--salt only makes sense with --subject-did")
    if commitment is None:
        return None
    if _HEX64.fullmatch(commitment.lower()) is None:
        usage_error("--subject-commitment must be the subject's commitment: 64 hex characters")
    return commitment.lower()


def _selection_text(commitment: str | None, since: timespec.TimeBound | None,
                    until: timespec.TimeBound | None) -> str:
    parts = [f"subject commitment {commitment[:16]}..."] if commitment else []
    if since or until:
        parts.append(timespec.describe_range(since, until))
    return ", ".join(parts) or "all events"


__all__ = ["Bundle", "main"]
