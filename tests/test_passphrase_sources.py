"""Every command-line tool takes its passphrase the same way (consent.passphrase):
``--passphrase-file``, else the tool's environment variable, else a prompt.

Each case creates keys through the real CLI with a passphrase file while the environment
variable holds another passphrase, then opens them through the Python API: the file's
passphrase opens them (the file won), the variable's does not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from agent_node.cli import main as sov_node
from agent_node.errors import AgentNodeError
from agent_node.home import load_home
from agent_node.requester_cli import main as sov_query
from consent.errors import ConsentError
from consent.keystore import load_identity
from ledger.cli import main as sov_ledger
from ledger.home import open_log
from wallet.cli import cli as consent_wallet
from wallet.service import Wallet

FILE_PASSPHRASE = "the passphrase in the file"
ENV_PASSPHRASE = "the passphrase in the environment"


@dataclass(frozen=True)
class Tool:
    name: str
    command: click.Command
    env: str
    init: Callable[[Path, Path], list[str]]  # (home, passphrase file) -> arguments
    open: Callable[[Path, str], Any]  # open what init made, with this passphrase


TOOLS = [
    Tool("sov-node", sov_node, "SOV_NODE_PASSPHRASE",
         lambda home, f: ["init", "--home", str(home), "--passphrase-file", str(f)],
         lambda home, p: load_home(home, p)),
    Tool("sov-ledger", sov_ledger, "SOV_LEDGER_PASSPHRASE",
         lambda home, f: ["init", "--home", str(home), "--passphrase-file", str(f)],
         lambda home, p: open_log(home, p).close()),
    Tool("sov-query", sov_query, "SOV_QUERY_PASSPHRASE",
         lambda home, f: ["init", "--home", str(home), "--passphrase-file", str(f)],
         lambda home, p: load_identity(home / "requester.key", p)),
    Tool("consent-wallet", consent_wallet, "CONSENT_WALLET_PASSPHRASE",
         lambda home, f: ["--home", str(home), "--passphrase-file", str(f), "init"],
         lambda home, p: Wallet.open(home, p).close()),
]


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t.name)
def test_the_passphrase_file_comes_before_the_environment(
        tool: Tool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "passphrase.txt"
    secret.write_text(FILE_PASSPHRASE + "\n")  # the trailing newline is not part of it
    monkeypatch.setenv(tool.env, ENV_PASSPHRASE)
    home = tmp_path / "home"
    result = CliRunner().invoke(tool.command, tool.init(home, secret))
    assert result.exit_code == 0, result.output
    tool.open(home, FILE_PASSPHRASE)
    with pytest.raises((ConsentError, AgentNodeError), match="wrong passphrase"):
        tool.open(home, ENV_PASSPHRASE)


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t.name)
def test_an_unreadable_passphrase_file_is_a_clear_error(
        tool: Tool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tool.env, ENV_PASSPHRASE)
    home = tmp_path / "home"
    missing = tmp_path / "no-such-file"
    result = CliRunner().invoke(tool.command, tool.init(home, missing))
    assert result.exit_code != 0
    assert f"cannot read the passphrase file {missing}" in result.output
    assert "Traceback" not in result.output and not home.exists()
