"""Every ``sov-audit`` / ``sov-ledger`` command line in docs/audit.md and the README names a
real subcommand and only options that subcommand has (the examples are not run here: the
end-to-end runs are in test_cli.py and test_audit_bad_input.py)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
import pytest

from ledger.audit_cli import main as audit_main
from ledger.cli import main as ledger_main

ROOT = Path(__file__).resolve().parents[2]
TOOLS: dict[str, click.Group] = {"sov-audit": audit_main, "sov-ledger": ledger_main}


def _blocks(text: str) -> list[str]:
    """Contents of the fenced code blocks, pairing each opening fence with its closing one."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def _command_lines(path: Path) -> list[str]:
    lines: list[str] = []
    for block in _blocks(path.read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.split(" ", 1)[0] in TOOLS:
                lines.append(line)
    return lines


DOC_LINES = _command_lines(ROOT / "docs/audit.md") + _command_lines(ROOT / "README.md")


def test_the_guides_show_each_audit_command() -> None:
    shown = {shlex.split(line.replace("<", "'<").replace(">", ">'"))[1] for line in DOC_LINES
             if line.startswith("sov-audit")}
    assert shown == {"verify", "consistency", "bundle", "report"}


@pytest.mark.parametrize("line", DOC_LINES)
def test_documented_command_uses_real_options(line: str) -> None:
    words = shlex.split(line.replace("<", "'<").replace(">", ">'"))
    group = TOOLS[words[0]]
    command = group.commands.get(words[1])
    assert command is not None, f"{words[0]} has no subcommand {words[1]!r}"
    rest = words[2:]
    while isinstance(command, click.Group):  # e.g. sov-ledger authors add
        command = command.commands.get(rest[0]) if rest else None
        assert command is not None, f"{line!r} names no subcommand of its group"
        rest = rest[1:]
    known = {opt for param in command.params for opt in getattr(param, "opts", [])}
    for word in rest:
        if word.startswith("-") and not word.lstrip("-").isdigit():
            assert word.split("=", 1)[0] in known, f"{words[0]} {words[1]} has no {word}"
