"""sov-audit on inputs found by QA: receipts it must read without a traceback, and event times
the ledger must refuse before they reach the log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ledger.audit_cli import main as audit
from ledger.errors import EventError
from ledger.events import encode_event
from ledger.log import Log
from ledger.models import LogPublicKey

from .conftest import grant_event


def _audit(args: list[str], code: int) -> str:
    result = CliRunner().invoke(audit, args, catch_exceptions=False)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def _write_receipt(log: Log, event: dict, path: Path) -> Path:
    receipt = log.append([event])[0]
    path.write_text(receipt.dumps(), encoding="utf-8")
    return path


def _key_file(public: LogPublicKey, tmp_path: Path) -> Path:
    path = tmp_path / "log-public.json"
    path.write_text(json.dumps(public.to_json()), encoding="utf-8")
    return path


def test_report_reads_event_times_with_fractional_seconds(
    log: Log, ledger_home: tuple[Path, LogPublicKey], tmp_path: Path
) -> None:
    # ledger.events accepts "...:00.5Z"; the report used to crash parsing such a time.
    event = {**grant_event(1), "time": "2026-03-03T10:00:00.5Z"}
    receipt = _write_receipt(log, event, tmp_path / "r.json")
    key = _key_file(ledger_home[1], tmp_path)
    out = tmp_path / "report.html"
    text = _audit(["report", "--log-key", str(key), "-o", str(out), str(receipt),
                   "--since", "2026-03-03", "--until", "2026-03-04"], 0)
    assert "1 event(s)" in text
    assert "grant" in out.read_text(encoding="utf-8")


@pytest.mark.parametrize("time", ["2026-13-01T10:00:00Z", "2026-02-30T10:00:00Z",
                                  "2026-03-01T25:00:00Z"])
def test_impossible_event_times_are_refused(time: str) -> None:
    with pytest.raises(EventError, match="'time'"):
        encode_event({**grant_event(1), "time": time})


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e400"])
def test_receipt_with_a_non_canonical_number_is_a_format_failure(
    log: Log, ledger_home: tuple[Path, LogPublicKey], tmp_path: Path, value: str
) -> None:
    good = _write_receipt(log, grant_event(2), tmp_path / "good.json")
    doc = json.loads(good.read_text(encoding="utf-8"))
    doc.pop("entry_hash")
    text = json.dumps(doc).replace('"purpose": "quote-generation"', f'"purpose": {value}')
    assert value in text
    bad = tmp_path / "bad.json"
    bad.write_text(text, encoding="utf-8")
    key = _key_file(ledger_home[1], tmp_path)
    output = _audit(["verify", "--log-key", str(key), str(bad)], 1)
    assert "FAIL receipt format" in output
    assert "NOT VERIFIED" in output


@pytest.mark.parametrize("command", ["bundle", "report"])
def test_an_unwritable_output_path_is_one_sentence_and_exit_2(
    log: Log, ledger_home: tuple[Path, LogPublicKey], tmp_path: Path, command: str
) -> None:
    receipt = _write_receipt(log, grant_event(3), tmp_path / "r.json")
    key = _key_file(ledger_home[1], tmp_path)
    out = tmp_path / "no-such-folder" / "out"
    result = CliRunner().invoke(audit, [command, "--log-key", str(key), "-o", str(out),
                                        str(receipt)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"cannot write {out}" in result.output
    assert not out.exists()


def test_a_missing_ca_file_is_a_usage_error(
    log: Log, ledger_home: tuple[Path, LogPublicKey], tmp_path: Path
) -> None:
    receipt = _write_receipt(log, grant_event(4), tmp_path / "r.json")
    key = _key_file(ledger_home[1], tmp_path)
    result = CliRunner().invoke(audit, ["consistency", str(receipt), str(receipt), "--log-key",
                                        str(key), "--ledger", "127.0.0.1:1", "--ca",
                                        str(tmp_path / "missing-ca.pem")])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "missing-ca.pem" in result.output and "does not exist" in result.output


@pytest.mark.parametrize("commitment", ["<script>alert(1)</script>", "ab" * 31, "g" * 64])
def test_a_malformed_subject_commitment_is_refused_before_writing(
    log: Log, ledger_home: tuple[Path, LogPublicKey], tmp_path: Path, commitment: str
) -> None:
    receipt = _write_receipt(log, grant_event(5), tmp_path / "r.json")
    key = _key_file(ledger_home[1], tmp_path)
    out = tmp_path / "report.html"
    result = CliRunner().invoke(audit, ["report", "--log-key", str(key), "-o", str(out),
                                        "--subject-commitment", commitment, str(receipt)])
    assert result.exit_code == 2, result.output
    assert "64 hex characters" in result.output
    assert not out.exists()


def test_a_proof_with_a_forged_unicode_size_fails_the_signature_check(
    log: Log, ledger_home: tuple[Path, LogPublicKey], tmp_path: Path
) -> None:
    # The proof's tree heads used to be parsed before their signatures were checked, and a
    # size line of "²" (str.isdigit but not int()) crashed sov-audit with a traceback.
    old = _write_receipt(log, grant_event(6), tmp_path / "old.json")
    new = _write_receipt(log, grant_event(7), tmp_path / "new.json")
    proof = log.consistency(1, 2).to_json()
    proof["old_checkpoint"] = f"{log.origin}\n\u00b2\nAAAA\n\n\u2014 x AAAAAAAA\n"
    proof_path = tmp_path / "proof.json"
    proof_path.write_text(json.dumps(proof), encoding="utf-8")
    key = _key_file(ledger_home[1], tmp_path)
    output = _audit(["consistency", str(old), str(new), "--log-key", str(key),
                     "--proof", str(proof_path)], 1)
    assert "FAIL tree-head signature" in output


@pytest.mark.parametrize(("until", "count"), [("2026-03-31", 2), ("2026-03-31T09:59:59", 0),
                                             ("2026-03-31T10:00:00", 1)])
def test_until_a_date_includes_that_whole_day(
    log: Log, ledger_home: tuple[Path, LogPublicKey], tmp_path: Path, until: str, count: int
) -> None:
    # docs/audit.md reports March with --until 2026-03-31: events later on the 31st count.
    first = _write_receipt(log, {**grant_event(8), "time": "2026-03-31T10:00:00.5Z"},
                           tmp_path / "a.json")
    last = _write_receipt(log, {**grant_event(9), "time": "2026-03-31T23:59:59Z"},
                          tmp_path / "b.json")
    key = _key_file(ledger_home[1], tmp_path)
    out = tmp_path / "march.html"
    text = _audit(["report", "--log-key", str(key), "-o", str(out), str(first), str(last),
                   "--since", "2026-03-31", "--until", until], 0)
    assert f"{count} event(s)" in text


@pytest.mark.parametrize(("change", "reason"), [
    ({"receipts": 5}, "must be lists"),
    ({"consistency_proofs": None}, "must be lists"),
    ({"receipts": [], "consistency_proofs": []}, "nothing to verify"),
])
def test_a_malformed_bundle_is_a_bundle_format_failure(
    log: Log, ledger_home: tuple[Path, LogPublicKey], tmp_path: Path, change: dict, reason: str
) -> None:
    receipt = _write_receipt(log, grant_event(10), tmp_path / "r.json")
    key = _key_file(ledger_home[1], tmp_path)
    bundle = tmp_path / "bundle.json"
    _audit(["bundle", "--log-key", str(key), "-o", str(bundle), str(receipt)], 0)
    doc = {**json.loads(bundle.read_text(encoding="utf-8")), **change}
    bundle.write_text(json.dumps(doc), encoding="utf-8")
    output = _audit(["verify", "--log-key", str(key), str(bundle)], 1)
    assert "FAIL bundle format" in output and reason in output
