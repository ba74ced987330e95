"""The privacy documentation's examples hold: the data map of docs/operator.md parses with
its contribution bounds, its node.toml table names real settings with their real defaults,
and the sov-query table it shows is what the CLI prints for those values."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from agent_node.datamap import TEMPLATE, parse_datamap
from agent_node.home import NodeConfig
from agent_node.requester import Answer
from agent_node.requester_cli import _table

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operator.md").read_text()


def _block(after: str, lang: str) -> str:
    start = DOC.index(f"```{lang}\n", DOC.index(after)) + len(lang) + 4
    return DOC[start:DOC.index("```", start)]


def test_the_documented_data_map_declares_its_bounds() -> None:
    datamap = parse_datamap(tomllib.loads(_block("## 2. Sources and the data map", "toml")),
                            Path("."))
    orders = datamap.datasets["orders"]
    assert orders.max_rows_per_subject == 5 and orders.columns["amount"].bounds == (0, 500)
    region = orders.columns["region"]
    assert region.public_keys == ("north", "south", "east", "west")
    assert region.groups_per_subject == 1 and orders.columns["channel"].group_bound == 2
    template = "\n".join(line[2:] for line in TEMPLATE.splitlines() if line.startswith("# "))
    assert parse_datamap(tomllib.loads(template[template.index("[sources"):]), Path("."))


def test_the_documented_settings_and_defaults_are_real() -> None:
    section = DOC[DOC.index("## 9. Privacy"):]
    rows = re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)? \| `([^`]+)`(?:, `([^`]+)`)? \|",
                      section, re.MULTILINE)
    defaults = NodeConfig()
    assert len(rows) == 6
    for first, second, value, other in rows:
        for key, documented in ((first, value), (second, other)):
            if key:
                default = getattr(defaults, key)
                assert (f'"{default}"' if isinstance(default, str) else float(default)) == (
                    documented if isinstance(default, str) else float(documented)), key


def test_the_documented_answer_is_what_sov_query_prints() -> None:
    shown = _block("From `make demo`", "text").rstrip("\n").splitlines()
    groups = []
    for line in shown[1:-1]:
        key, *cells = re.findall(r"(\S+ \[[^]]+\]|^\S+)", line)
        values, accuracy = {}, {}
        for label, cell in zip(("count", "sum:amount", "avg:amount"), cells, strict=True):
            value, low, high = re.match(r"(\S+) \[(\S+), (\S+)\]", cell).groups()  # type: ignore[union-attr]
            values[label] = int(value) if label == "count" else float(value)
            accuracy[label] = {"ci95": [float(low), float(high)]}
        groups.append({"key": [key], "values": values, "accuracy": accuracy})
    answer = Answer(node_did="", dataset="orders", measures=["count", "sum:amount", "avg:amount"],
                    group_by=["region"], groups=groups, mode="dp", k=None, note=None,
                    dp={"epsilon": 1.0, "delta": 0, "confidence": 0.95,
                        "mechanisms": ["discrete laplace (counts)", "laplace (sums)"]},
                    event_seq=1, document={})
    printed = [line.rstrip() for line in _table(answer).splitlines()]
    assert printed == [line.rstrip() for line in shown]
