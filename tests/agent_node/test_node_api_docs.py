"""The node's Python API as docs/operator.md ("11. Python API") shows it: the block runs as
written against a real node home (a CSV source, the vault, an in-process TLS server), and does
what the matching sov-node commands do."""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import re
from pathlib import Path

import click
import pytest

from agent_node import cli
from agent_node.node import Node
from tests.agent_node.conftest import PASSPHRASE

DOC = Path(__file__).resolve().parents[2] / "docs" / "operator.md"
CLI = Path(__file__).resolve().parents[2] / "agent_node" / "cli.py"
DATAMAP = """
[sources.shop]
kind = "csv"
path = "orders.csv"

[datasets.orders]
source = "shop"
subject_key = ["customer_id"]
row_key = ["order_id"]

[datasets.orders.columns]
amount = { type = "real", scope = "transaction" }
"""


def documented_block() -> str:
    section = DOC.read_text(encoding="utf-8").split("## 11. Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]


def test_the_documented_python_api_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "node"
    Node.init(home, PASSPHRASE, name="doc-node", listen="127.0.0.1:0")
    (home / "orders.csv").write_text("customer_id,order_id,amount\nC-1042,1,10.5\n"
                                     "C-1042,2,4.0\nC-7,3,99\n")
    (home / "datamap.toml").write_text(DATAMAP)
    monkeypatch.setenv("SOV_NODE_PASSPHRASE", PASSPHRASE)
    code = documented_block().replace("/srv/sov-node", str(home))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(DOC), "exec"), {})  # the documented example, as written
    lines = printed.getvalue().splitlines()
    assert lines[0] == "orders 3 0 0 0"          # three rows added, none skipped
    assert lines[1] == "{}"                      # no dataset gone from the data map
    ref, datasets = lines[2].split(" ", 1)
    assert len(ref) > 20 and datasets == "['orders']"   # C-1042 is in the source
    assert lines[3] == "0"                       # no access yet: the genesis head
    assert re.fullmatch(r"serving on port [1-9]\d*", lines[4])
    node = Node.open(home, PASSPHRASE)
    assert [b["subject_ref"] for b in node.bindings()] == [ref]


def _commands(group: click.Group, prefix: str = "sov-node") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix} {name}")
        else:
            found.append((f"{prefix} {name}", command))
    return found


def test_every_sov_node_command_goes_through_the_node_api() -> None:
    """agent_node.cli imports of its own package only the Node API, its errors and two
    option helpers, and every command's body works through a Node (issue 16: commands no
    longer rebuild the vault, a backup or a server by hand)."""
    tree = ast.parse(CLI.read_text(encoding="utf-8"))
    reached = {(node.module, alias.name) for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("agent_node")
               for alias in node.names}
    assert reached <= {("agent_node.errors", "AgentNodeError"), ("agent_node.node", "Node"),
                       ("agent_node.home", "PASSPHRASE_ENV"),
                       ("agent_node.home", "check_listen")}, reached
    commands = _commands(cli.main)
    assert len(commands) > 15
    for name, command in commands:
        body = inspect.getsource(command.callback)  # type: ignore[arg-type]
        assert "_node(" in body or "Node." in body, f"{name} does not use the Node API"


def test_section_11_names_every_public_method_of_node() -> None:
    section = DOC.read_text(encoding="utf-8").split("## 11. Python API", 1)[1]
    public = [name for name, _ in inspect.getmembers(Node) if not name.startswith("_")
              and callable(getattr(Node, name))]
    missing = [name for name in public
               if f"node.{name}(" not in section and f"Node.{name}(" not in section]
    assert missing == [], f"docs/operator.md section 11 does not show {missing}"
