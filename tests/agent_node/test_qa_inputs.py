"""Bad command-line input found in QA: each is one sentence, exit 1, no traceback, and
nothing written (filter quoting, composite subject keys, listen addresses)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent_node.errors import ConfigError, InvalidRequest
from agent_node.home import check_listen, load_home
from agent_node.query import parse_filter_text
from agent_node.vault import Vault
from consent.identity import Identity
from protos.tls import create_ca
from tests.agent_node.conftest import BIN, PASSPHRASE, env, run_cli


@pytest.mark.parametrize("text", ["job = 'x'' OR 1=1 --", 'job = "open', "job in ('a, b)"])
def test_unbalanced_quote_in_a_filter_is_an_invalid_request(text: str) -> None:
    with pytest.raises(InvalidRequest, match="unbalanced quote"):
        parse_filter_text(text)


def test_quoted_filter_values_keep_spaces_and_hashes() -> None:
    assert parse_filter_text("job = 'blue collar #2'")["value"] == "blue collar #2"
    assert parse_filter_text('job in (admin., "self employed")')["value"] == [
        "admin.", "self employed"]


def test_sov_query_ask_with_an_unbalanced_quote_fails_in_one_sentence(tmp_path: Path) -> None:
    run_cli("sov-query", "init", "--home", str(tmp_path / "req"))
    ca = tmp_path / "ca.pem"  # a real certificate: the filter is refused before any dial
    ca.write_bytes(create_ca("unused-ca").cert_pem)
    result = run_cli("sov-query", "ask", "--home", str(tmp_path / "req"), "--node",
                     "127.0.0.1:1", "--ca", str(ca), "--dataset", "contacts", "--measure",
                     "count", "--filter", "job = 'x'' OR 1=1 --", "--purpose",
                     "marketing-analytics", check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: a filter value has an unbalanced quote")


@pytest.mark.parametrize("address", ["notaport", "127.0.0.1:99999", ":7443", "host:", "h:-1"])
def test_bad_listen_addresses_are_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        check_listen(address)


@pytest.mark.parametrize("address", ["127.0.0.1:0", "[::]:7443", "node.example:65535"])
def test_good_listen_addresses_pass(address: str) -> None:
    assert check_listen(address) == address


def test_init_with_a_bad_listen_address_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "node"
    result = run_cli("sov-node", "init", "--home", str(home), "--listen", "notaport",
                     check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "'listen'" in result.stderr
    assert not home.exists()  # a retry with a good address must not meet a half-made home
    run_cli("sov-node", "init", "--home", str(home), "--listen", "127.0.0.1:0")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_with_an_out_of_range_port_fails_in_one_sentence(tmp_path: Path,
                                                               workers: str) -> None:
    home = tmp_path / "node"
    run_cli("sov-node", "init", "--home", str(home))
    result = run_cli("sov-node", "serve", "--home", str(home), "--listen", "127.0.0.1:99999",
                     "--workers", workers, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "--listen" in result.stderr and "0-65535" in result.stderr


@pytest.mark.parametrize("key", ["[C-1042", '[{"a": 1}]', "[]", "[true]"])
def test_bind_refuses_a_malformed_composite_key_and_binds_nothing(tmp_path: Path,
                                                                  key: str) -> None:
    home = tmp_path / "node"
    run_cli("sov-node", "init", "--home", str(home))
    did = Identity.generate().did
    result = run_cli("sov-node", "subjects", "bind", "--home", str(home), key, did,
                     check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "JSON array of strings or numbers" in result.stderr
    assert key not in result.stderr  # the subject key is customer data
    run_cli("sov-node", "subjects", "bind", "--home", str(home), '["acme", 1042]', did)
    node = load_home(home, PASSPHRASE)
    with Vault(node.vault_path, node.keys).connection() as conn:
        # Only the good composite key was bound: the refused one left no row.
        rows = conn.execute("SELECT count(*) FROM bindings WHERE did = ?", (did,)).fetchone()
    assert rows[0] == 1


def test_init_refuses_a_short_passphrase_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "node"
    result = subprocess.run([str(BIN / "sov-node"), "init", "--home", str(home)],
                            capture_output=True, text=True, timeout=60,
                            env={**env(), "SOV_NODE_PASSPHRASE": "short"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "at least 12 characters" in result.stderr
    assert "short" not in result.stderr  # the passphrase is never echoed
    assert not home.exists()


def test_sync_with_an_empty_data_map_says_so(tmp_path: Path) -> None:
    # A fresh home's data map holds only comments: syncing it must not look like success.
    home = tmp_path / "node"
    run_cli("sov-node", "init", "--home", str(home))
    result = run_cli("sov-node", "sync", "--home", str(home), check=False)
    assert result.returncode == 1
    assert "maps no datasets" in result.stderr and "Traceback" not in result.stderr
