"""``sov-audit consistency OLD NEW --ledger HOST:PORT --ca FILE``: the proof fetched over TLS
from a served ledger; a forked history and another log's service are rejected."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from click.testing import CliRunner

from ledger.audit_cli import main as audit
from ledger.home import init_home, open_authors, open_log
from ledger.log import Log
from ledger.service import start_server

from .conftest import ORIGIN, PASSPHRASE, grant_event


def _audit(args: list[object], code: int) -> str:
    result = CliRunner().invoke(audit, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


@contextmanager
def _served(home: Path) -> Iterator[tuple[str, Log]]:
    log = open_log(home, PASSPHRASE)
    tls = home / "tls"
    authors = open_authors(home)
    running = start_server(log, address="127.0.0.1:0", cert_pem=(tls / "server.pem").read_bytes(),
                           key_pem=(tls / "server.key").read_bytes(), authors=authors)
    try:
        yield f"127.0.0.1:{running.port}", log
    finally:
        running.stop(None)
        log.close()
        authors.close()


def _save(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _two_heads(
    home: Path, tmp_path: Path, first: range, then: range, tag: str
) -> tuple[Path, Path]:
    """Append ``first`` then ``then``; save the receipt of the last entry after each."""
    with open_log(home, PASSPHRASE) as log:
        old = log.append([grant_event(i) for i in first])[-1]
        new = log.append([grant_event(i) for i in then])[-1]
    return (_save(tmp_path / f"{tag}-old.json", old.dumps()),
            _save(tmp_path / f"{tag}-new.json", new.dumps()))


def test_consistency_fetched_from_a_served_ledger(ledger_home, tmp_path: Path) -> None:
    home, _ = ledger_home
    old, new = _two_heads(home, tmp_path, range(3), range(3, 8), "main")
    key, ca = home / "log-public.json", home / "tls" / "ca.pem"
    with _served(home) as (address, _):
        output = _audit(["consistency", old, new, "--log-key", key, "--ledger", address,
                         "--ca", ca], code=0)
        assert "PASS consistency: tree size 3 is a prefix of tree size 8" in output
        # Without --ca: a usage error naming what is missing, not a traceback.
        output = _audit(["consistency", old, new, "--log-key", key, "--ledger", address], code=1)
        assert "--ledger needs --ca" in output


def test_forked_history_is_rejected(ledger_home, tmp_path: Path) -> None:
    home, _ = ledger_home
    # Same log key, same origin, a different first batch: a fork the operator could serve.
    fork = tmp_path / "fork"
    shutil.copytree(home, fork)
    old, new = _two_heads(home, tmp_path, range(3), range(3, 8), "main")
    fork_old, fork_new = _two_heads(fork, tmp_path, range(100, 103), range(3, 8), "fork")
    key, ca = home / "log-public.json", home / "tls" / "ca.pem"
    with _served(home) as (address, _):
        # The honest service's proof does not reach the fork's head ...
        output = _audit(["consistency", old, fork_new, "--log-key", key, "--ledger", address,
                         "--ca", ca], code=1)
        assert "FAIL consistency:" in output and "other tree heads than the two files" in output
    with _served(fork) as (address, _):
        # ... and the fork's service cannot prove the fork extends the head we kept.
        output = _audit(["consistency", old, fork_new, "--log-key", key, "--ledger", address,
                         "--ca", ca], code=1)
        assert "FAIL consistency:" in output and "other tree heads than the two files" in output
        sane = _audit(["consistency", fork_old, fork_new, "--log-key", key, "--ledger", address,
                       "--ca", ca], code=0)
        assert "tree size 3 is a prefix of tree size 8" in sane
    assert new.read_text() != fork_new.read_text()


def test_service_of_another_log_is_rejected(ledger_home, tmp_path: Path) -> None:
    home, _ = ledger_home
    old, new = _two_heads(home, tmp_path, range(3), range(3, 8), "main")
    other = tmp_path / "other"
    init_home(other, origin="other.test.example/log", passphrase=PASSPHRASE)
    _two_heads(other, tmp_path, range(3), range(3, 8), "other")
    key = home / "log-public.json"
    with _served(other) as (address, _):
        output = _audit(["consistency", old, new, "--log-key", key, "--ledger", address,
                         "--ca", other / "tls" / "ca.pem"], code=1)
    assert "FAIL log identity:" in output and "belongs to a different log" in output
    assert ORIGIN in key.read_text()
