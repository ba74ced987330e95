"""The commands docs/training.md shows exist with the options it uses (click's own help)."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from agent_node.cli import main as node_cli
from coordinator.cli import main as coordinator_cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "training.md"
GROUPS = {("sov-node", "models")}  # commands whose first word names a subcommand


def documented_commands() -> list[tuple[str, str, list[str]]]:
    text = DOC.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        match = re.match(r"\s*(sov-node|sov-coordinator) (\S+)(.*)", line)
        if match:
            name, rest = match.group(2), match.group(3)
            sub = re.match(r" ([a-z]+)(.*)", rest)  # a group's subcommand: "models install"
            if sub and (match.group(1), name) in GROUPS:
                name, rest = f"{name} {sub.group(1)}", sub.group(2)
            options = re.findall(r"(--[a-z-]+)", rest.split("#")[0])
            found.append((match.group(1), name, options))
    return found


def test_every_documented_option_exists() -> None:
    commands = documented_commands()
    assert {(tool, name) for tool, name, _ in commands} >= {
        ("sov-node", "serve"), ("sov-coordinator", "train"), ("sov-coordinator", "models")}
    assert ("sov-node", "models install") in {(tool, name) for tool, name, _ in commands}
    runner = CliRunner()
    for tool, name, options in commands:
        cli = node_cli if tool == "sov-node" else coordinator_cli
        result = runner.invoke(cli, [*name.split(), "--help"])
        assert result.exit_code == 0, f"{tool} {name}: {result.output}"
        for option in options:
            assert option in result.output, f"{tool} {name} has no {option}"


def test_train_refuses_a_bad_plan_in_one_sentence(tmp_path: Path) -> None:
    """sov-coordinator train: a plan that is not a signed training plan is an error line, not
    a traceback, and nothing is started."""
    import os

    from coordinator.home import init_home

    home = tmp_path / "coord"
    init_home(home, "correct horse battery staple")
    plan = tmp_path / "plan.json"
    plan.write_text('{"type": "something else"}')
    result = CliRunner().invoke(coordinator_cli, [
        "train", "--home", str(home), "--plan", str(plan)],
        env={**os.environ, "SOV_COORDINATOR_PASSPHRASE": "correct horse battery staple"})
    assert result.exit_code == 1, result.output
    assert "the run plan is refused: the run plan must be a signed" in result.output
    assert "Traceback" not in result.output and not (home / "flower").exists()
