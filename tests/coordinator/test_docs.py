"""The README's coordinator and requester guides: every documented command line parses
against the real click command tree (the command and each option exist and take the value
given), so a renamed flag fails here until the guide is updated. The Python example runs
against real processes in test_network.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from agent_node.cli import main as sov_node
from agent_node.requester_cli import main as sov_query
from coordinator.cli import main as sov_coordinator

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
TOOLS = {"sov-coordinator": sov_coordinator, "sov-node": sov_node, "sov-query": sov_query}
SECTIONS = ("## Network operator's guide: the coordinator", "## Requester's guide")


def guide_text() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTIONS[0])
    return text[start:text.index("\n## ", text.index(SECTIONS[1]) + 1)]


def documented_lines() -> list[str]:
    lines = []
    for kind, body in FENCE.findall(guide_text()):
        if kind != "sh":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" # ", 1)[0].strip()
            if line.split(" ", 1)[0] in TOOLS:
                lines.append(line)
    return lines


def test_the_guides_document_every_coordinator_command() -> None:
    commands = {" ".join(shlex.split(line)[:2]) for line in documented_lines()}
    # The network operator's commands (training runs have their own section).
    assert {f"sov-coordinator {name}" for name in ("init", "serve", "nodes", "status")} \
        <= commands
    assert {"sov-node register", "sov-query ask-network"} <= commands


@pytest.mark.parametrize("line", documented_lines())
def test_documented_command_parses(line: str, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    tool, name, *args = shlex.split(line)
    monkeypatch.chdir(tmp_path)
    for arg in args:  # the example's files, so that options requiring them parse
        if arg.endswith(".pem"):
            (tmp_path / arg).write_text("example")
    command = TOOLS[tool].get_command(click.Context(TOOLS[tool]), name)
    assert command is not None, f"{tool} has no command {name}"
    command.make_context(name, list(args))  # raises on an unknown option or a bad value
