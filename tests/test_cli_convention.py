"""The command-line convention (README, "Command-line conventions"; consent.commandline),
checked on every command of every ``[project.scripts]`` entry, found by walking click's
command tree, so a command added later is checked too:

- ``-h`` and ``--help`` on every command and group, ``--version`` on every tool;
- ``--json`` on every command that prints data (the few without it are listed with why);
- a bad option: exit 2 and one line ``error: ... (see 'TOOL CMD --help')``, no traceback;
- output paths are ``--out`` / ``-o`` everywhere (no ``--out-dir``, no other spelling);
- the global options (``--home``, ``--passphrase-file``) work before and after the subcommand;
- as real processes: the same error style, and no Python warning on a piped prompt.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
# Commands that print no data, each with why (anything else must take --json).
PASS = "a passphrase long enough"
NO_JSON = {
    "sov-node serve": "runs until stopped; logs JSON lines on stderr",
    "sov-ledger serve": "runs until stopped",
    "sov-coordinator serve": "runs until stopped",
}


def tool(name: str) -> click.Command:
    module, attr = SCRIPTS[name].split(":")
    found = getattr(importlib.import_module(module), attr)
    return found if isinstance(found, click.Command) else importlib.import_module(module).cli


def walk(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path under ``command`` (groups included, the root as ``()``)."""
    found = [path]
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            found += walk(sub, (*path, name))
    return found


def command_at(root: click.Command, path: tuple[str, ...]) -> click.Command:
    for name in path:
        assert isinstance(root, click.Group)
        root = root.commands[name]
    return root


EVERY = [(name, path) for name in SCRIPTS for path in walk(tool(name))]
LEAVES = [(name, path) for name, path in EVERY
          if not isinstance(command_at(tool(name), path), click.Group)]


def run(name: str, *args: str, **kwargs: object) -> click.testing.Result:
    return CliRunner().invoke(tool(name), list(args), prog_name=name, **kwargs)  # type: ignore


def test_every_tool_is_walked() -> None:
    assert set(SCRIPTS) == {"sov-node", "sov-query", "consent-wallet", "sov-ledger",
                            "sov-audit", "sov-coordinator"}
    assert len(LEAVES) > 40, LEAVES


@pytest.mark.parametrize(("name", "path"), EVERY, ids=[" ".join((n, *p)) for n, p in EVERY])
def test_help_on_every_command(name: str, path: tuple[str, ...]) -> None:
    for flag in ("-h", "--help"):
        result = run(name, *path, flag)
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"Usage: {' '.join((name, *path))}"), result.output


@pytest.mark.parametrize("name", SCRIPTS)
def test_version_on_every_tool(name: str) -> None:
    result = run(name, "--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"{name} 0.1.0"


@pytest.mark.parametrize(("name", "path"), LEAVES, ids=[" ".join((n, *p)) for n, p in LEAVES])
def test_json_on_every_command_that_prints_data(name: str, path: tuple[str, ...]) -> None:
    command = command_at(tool(name), path)
    options = {opt for p in command.params for opt in p.opts}
    label = " ".join((name, *path))
    if label in NO_JSON:
        assert "--json" not in options, f"{label} takes --json now: drop it from NO_JSON"
        return
    assert "--json" in options, f"{label} prints data but takes no --json"


@pytest.mark.parametrize(("name", "path"), EVERY, ids=[" ".join((n, *p)) for n, p in EVERY])
def test_one_error_style_on_a_bad_option(name: str, path: tuple[str, ...]) -> None:
    result = run(name, *path, "--no-such-option")
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines == [f"error: no such option '--no-such-option' (see "
                     f"'{' '.join((name, *path))} --help')"], result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("name", "path"), LEAVES, ids=[" ".join((n, *p)) for n, p in LEAVES])
def test_output_paths_are_named_out(name: str, path: tuple[str, ...]) -> None:
    command = command_at(tool(name), path)
    for param in command.params:
        if any(o.startswith("--out") for o in param.opts):
            assert sorted(param.opts) == ["--out", "-o"], (name, path, param.opts)


def test_a_missing_value_is_a_usage_error_with_the_hint(tmp_path: Path) -> None:
    result = run("sov-node", "sync")
    assert result.exit_code == 2
    assert result.stderr == ("error: missing option '--home' (see 'sov-node sync --help')\n")


def test_a_failure_is_one_sentence_and_exit_1(tmp_path: Path) -> None:
    result = run("sov-node", "sync", "--home", str(tmp_path / "none"),
                 env={"SOV_NODE_PASSPHRASE": PASS})
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / 'none'} is not a node home: run 'sov-node init --home "
        f"{tmp_path / 'none'}'"]




def test_global_options_before_and_after_the_subcommand(tmp_path: Path) -> None:
    """The wallet's --home worked only before the subcommand and the node's only after it."""
    secret = tmp_path / "pass"
    secret.write_text(PASS + "\n")
    wallet = tmp_path / "wallet"
    assert run("consent-wallet", "init", "--home", str(wallet), "--passphrase-file",
               str(secret)).exit_code == 0
    for args in (("--home", str(wallet), "whoami", "--json"),
                 ("whoami", "--home", str(wallet), "--json"),
                 ("--home", str(tmp_path / "other"), "whoami", "--home", str(wallet))):
        result = run("consent-wallet", *args)
        assert result.exit_code == 0 and "did:key:" in result.stdout, (args, result.output)
    assert run("consent-wallet", "nodes", "list", "--home", str(wallet)).exit_code == 0
    result = run("consent-wallet", "grants", "--home", str(tmp_path / "nowhere"))
    assert result.exit_code == 1 and "no wallet in" in result.stderr

    node = tmp_path / "node"
    assert run("sov-node", "--home", str(node), "--passphrase-file", str(secret),
               "init").exit_code == 0
    for args in (("--home", str(node), "subjects", "list", "--json"),
                 ("subjects", "list", "--home", str(node), "--json"),
                 ("--home", str(tmp_path / "none"), "subjects", "list", "--home", str(node),
                  "--json")):
        result = run("sov-node", *args, env={"SOV_NODE_PASSPHRASE": PASS})
        assert result.exit_code == 0 and result.stdout.strip() == "[]", (args, result.output)


def test_one_passphrase_policy_for_new_keys(tmp_path: Path) -> None:
    short = {"SOV_NODE_PASSPHRASE": "short", "CONSENT_WALLET_PASSPHRASE": "short",
             "SOV_QUERY_PASSPHRASE": "short", "SOV_LEDGER_PASSPHRASE": "short",
             "SOV_COORDINATOR_PASSPHRASE": "short"}
    for name in ("sov-node", "consent-wallet", "sov-query", "sov-ledger", "sov-coordinator"):
        home = tmp_path / name
        result = run(name, "init", "--home", str(home), env=short)
        assert result.exit_code == 1, (name, result.output)
        assert result.stderr.startswith("error: the passphrase must be at least 12 "
                                        "characters"), (name, result.stderr)
        assert not any(home.glob("*.key")) and not (home / "keystore.json").exists()


@pytest.mark.parametrize("name", SCRIPTS)
def test_real_process_bad_option(name: str) -> None:
    proc = subprocess.run([str(BIN / name), "--no-such-option"], capture_output=True,
                          text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: no such option '--no-such-option' (see '{name} --help')\n")


def test_real_process_piped_prompt_is_quiet(tmp_path: Path) -> None:
    """A passphrase piped on stdin: no GetPassWarning, no echo, prompts on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_PASSPHRASE")}
    proc = subprocess.run(
        [str(BIN / "sov-query"), "init", "--home", str(tmp_path / "q")],
        input=f"{PASS}\n{PASS}\n", capture_output=True, text=True, timeout=60, check=False,
        env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and PASS not in proc.stderr + proc.stdout
    assert "Requester passphrase: " in proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("requester DID: did:key:")
    again = subprocess.run(
        [str(BIN / "sov-query"), "whoami", "--home", str(tmp_path / "q")], input="wrong\n",
        capture_output=True, text=True, timeout=60, check=False, env=env)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert again.stderr.splitlines()[-1].startswith("error: "), again.stderr


def test_a_ca_that_is_no_certificate_is_named_before_any_dialling(tmp_path: Path) -> None:
    """`sov-query ask --ca not-a-pem-file` printed four C-core lines, then 'unreachable'."""
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    proc = subprocess.run(
        [str(BIN / "sov-query"), "ask", "--home", str(tmp_path / "q"), "--node",
         "127.0.0.1:1", "--ca", str(bad), "--dataset", "d", "--measure", "count",
         "--purpose", "p"], capture_output=True, text=True, timeout=60, check=False,
        stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: invalid value for '--ca': {bad} holds no PEM certificate: "
                           "give the CA certificate the operator published (its home's "
                           "tls/ca.pem) (see 'sov-query ask --help')\n")


def test_serving_on_a_busy_port_is_one_sentence(tmp_path: Path) -> None:
    """`sov-node serve` on a busy port leaked a C-core line before its own."""
    import socket

    home = tmp_path / "node"
    env = {**os.environ, "SOV_NODE_PASSPHRASE": PASS}
    subprocess.run([str(BIN / "sov-node"), "init", "--home", str(home)], env=env,
                   capture_output=True, check=True, timeout=120)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        proc = subprocess.run([str(BIN / "sov-node"), "serve", "--home", str(home),
                               "--listen", address], env=env, capture_output=True, text=True,
                              timeout=120, check=False)
    assert proc.returncode == 1
    assert proc.stderr == (f"error: cannot listen on {address}: address already in use; "
                           "choose another address or port, or stop what uses it\n")
