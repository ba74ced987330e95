"""The documentation's command examples for every tool, not only the wallet's
(tests/test_docs_examples.py replays those):

1. every ``sov-node``, ``sov-query``, ``consent-wallet``, ``sov-ledger``, ``sov-audit`` and
   ``sov-coordinator`` line in a ``sh`` / ``console`` block of the README and docs/*.md parses
   against that tool's real click tree (the command exists, every option exists and takes the
   value written); ``[optional parts]`` and ``...`` elisions are left out;
2. the README's operator guide (short) runs command by command as real ``sov-node`` processes
   on a fresh home, with a data map written where it says ``$EDITOR`` and the placeholders
   (``/srv/sov-node``, ``0.0.0.0:7443``, ``C-1042``, ``did:key:z6Mk...``) made real.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tests.test_cli_convention import SCRIPTS, tool
from tests.test_docs_examples import _join_continuations, blocks

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
OPTIONAL = re.compile(r"\[[^\]]*\]")


def command_lines() -> list[tuple[str, str]]:
    """(document name, command line) of every tool invocation in the documents."""
    found = []
    for path in DOCS:
        for _lang, body in blocks(path, "sh", "console"):
            lines = [line[2:] if line.startswith("$ ") else line for line in body.splitlines()]
            for line in _join_continuations(lines):
                words = line.strip().split(" ", 1)
                if words[0] in SCRIPTS:
                    found.append((path.name, line.strip()))
    return found


PLACEHOLDER = re.compile(r"<[^>]*>")
FILE = re.compile(r"^[\w.-]+\.(pem|json|toml|csv|html|sfbk)$")


def argv(line: str) -> list[str]:
    """The words of a documented command: ``[optional]`` parts and ``...`` left out, a
    ``<placeholder>`` as one word, and only what comes before a pipe or a redirection."""
    text = PLACEHOLDER.sub("PLACEHOLDER", OPTIONAL.sub(" ", line))
    text = re.split(r"\s[|>]\s", text, maxsplit=1)[0]
    return [w for w in shlex.split(text, comments=True) if w != "..."]


def parse(name: str, args: list[str]) -> click.Command:
    """Resolve ``args`` through the tool's click tree as the CLI would, without running it."""
    root = tool(name)
    ctx = root.make_context(name, list(args))
    command = root
    while isinstance(command, click.Group):
        sub_name, sub, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert sub is not None and sub_name is not None
        ctx = sub.make_context(sub_name, rest, parent=ctx)
        command = sub
    return command


LINES = command_lines()


def test_every_tool_has_documented_examples() -> None:
    tools = {line.split(" ", 1)[0] for _doc, line in LINES}
    assert tools == set(SCRIPTS), tools
    assert len(LINES) > 60


@pytest.mark.parametrize(("doc", "line"), LINES, ids=[f"{d}: {ln[:60]}" for d, ln in LINES])
def test_documented_command_parses(doc: str, line: str, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    words = argv(line)
    # Files a command must find (--ca ca.pem, --plan plan.json) exist, as for the reader.
    monkeypatch.chdir(tmp_path)
    for word in words:
        if FILE.match(word):
            (tmp_path / word).write_text("{}")
    command = parse(words[0], words[1:])
    assert command.callback is not None, (doc, line)


# -- 2. the README's operator guide, replayed -----------------------------------------------------

DATAMAP = """
[sources.sales]
kind = "csv"
path = "orders.csv"

[datasets.orders]
source = "sales"
subject_key = ["customer_id"]
row_key = ["order_id"]

[datasets.orders.columns]
amount = { type = "real", scope = "transaction" }
"""
CUSTOMER_DID = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"


def operator_guide() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Operator's guide (short)", 1)[1].split("\n## ", 1)[0]
    body = re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]
    return [line.strip() for line in _join_continuations(body.splitlines()) if line.strip()]


def test_readme_operator_guide_runs(tmp_path: Path) -> None:
    home = tmp_path / "sov-node"
    env = {**os.environ}
    ran = []
    for line in operator_guide():
        line = line.replace("/srv/sov-node", str(home)).replace("0.0.0.0:7443", "127.0.0.1:0")
        line = line.replace("did:key:z6Mk...", CUSTOMER_DID)
        if line.startswith("export "):
            name, value = shlex.split(line[len("export "):])[0].split("=", 1)
            env[name] = value
            continue
        if line.startswith("$EDITOR"):  # the operator writes the data map and its source
            (home / "datamap.toml").write_text(DATAMAP)
            (home / "orders.csv").write_text("customer_id,order_id,amount\nC-1042,1,12.5\n")
            continue
        words = shlex.split(line, comments=True)
        if words[:2] == ["sov-node", "serve"]:
            ran.append(_serve_once(words, env))
            continue
        proc = subprocess.run([str(BIN / words[0]), *words[1:]], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        if words[:3] == ["sov-node", "log", "push"]:
            # No ledger in the short guide's node.toml: the one-sentence refusal the guide's
            # reader sees until ledger_address is set (docs/operator.md, section 6).
            assert proc.returncode == 1 and proc.stderr.startswith(
                "error: no ledger is configured"), proc.stderr
        else:
            assert proc.returncode == 0, (line, proc.stderr)
            assert proc.stderr == "" or proc.stderr.startswith("warning"), (line, proc.stderr)
        ran.append(proc.stdout)
    joined = "\n".join(ran)
    assert "DID: did:key:" in joined
    assert "orders: 1 added, 0 updated, 0 removed, 0 unchanged" in joined
    assert "bound subject " in joined and CUSTOMER_DID in joined
    assert "serving node" in joined or "serving acme-eu" in joined


def _serve_once(words: list[str], env: dict[str, str]) -> str:
    """Start the documented ``sov-node serve``, read its first line, stop it."""
    proc = subprocess.Popen([str(BIN / words[0]), *words[1:]], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert re.match(r"serving \S+ \(did:key:\S+\) on port [1-9]\d*", line), line
    return line
