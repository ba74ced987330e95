"""Every setting a node or a coordinator reads is documented: the keys of the ``node.toml``
table in docs/operator.md ("Every `node.toml` key") are exactly NodeConfig's fields, and the
``coordinator.toml`` table in the README exactly CoordinatorConfig's (``residency`` and
several node keys were undocumented)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from agent_node.home import NodeConfig
from coordinator.home import CoordinatorConfig

REPO = Path(__file__).resolve().parent.parent


def table_keys(text: str, heading: str) -> set[str]:
    """The backticked names in the first column of the first table after ``heading``."""
    section = text[text.index(heading):]
    keys: set[str] = set()
    started = False
    for line in section.splitlines()[1:]:
        if line.startswith("|"):
            started = True
            first = line.split("|")[1]
            keys.update(re.findall(r"`([a-z_0-9]+)`", first))
        elif started:
            break
    return keys


def test_every_node_toml_key_is_documented() -> None:
    documented = table_keys((REPO / "docs" / "operator.md").read_text(encoding="utf-8"),
                            "### Every `node.toml` key")
    assert documented == {f.name for f in fields(NodeConfig)}


def test_every_coordinator_toml_key_is_documented() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    documented = table_keys(readme, "refused. Settings (`coordinator.toml`")
    assert documented == {f.name for f in fields(CoordinatorConfig)}
