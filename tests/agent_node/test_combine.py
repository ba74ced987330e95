"""agent_node.combine on answers in the nodes' dp format (pure functions: no node needed)."""

from __future__ import annotations

import math

import pytest

from agent_node.combine import NodeAnswer, combine, expand_measures


def dp_node(did: str, groups: list[dict]) -> NodeAnswer:
    return NodeAnswer(did, did, "eu", "answered", mode="dp", groups=groups,
                      dp={"epsilon": 1.0})


def test_avg_asks_for_its_sum_and_count() -> None:
    assert expand_measures(["avg:age", "count"]) == ["avg:age", "count", "sum:age", "count:age"]


def test_noisy_values_add_and_intervals_widen_in_quadrature() -> None:
    a = dp_node("a", [{"key": ["x"], "values": {"count": 10, "sum:age": 400, "count:age": 10},
                       "accuracy": {"count": {"ci95": [7, 13]},
                                    "sum:age": {"ci95": [360, 440]},
                                    "count:age": {"ci95": [7, 13]}}}])
    b = dp_node("b", [{"key": ["x"], "values": {"count": 20, "sum:age": 600, "count:age": 20},
                       "accuracy": {"count": {"ci95": [16, 24]},
                                    "sum:age": {"ci95": [570, 630]},
                                    "count:age": {"ci95": [16, 24]}}},
                      {"key": ["y"], "values": {"count": 8, "sum:age": 300, "count:age": 8},
                       "accuracy": {}}])
    down = NodeAnswer("c", "c", "eu", "unreachable", message="gone")
    combined = combine(["count", "avg:age"], ["job"], [a, b, down])
    x, y = combined["groups"]
    assert x["values"]["count"] == 30
    assert x["accuracy"]["count"]["ci95"] == pytest.approx([30 - 5, 30 + 5])  # sqrt(3²+4²)
    assert x["values"]["avg:age"] == pytest.approx(1000 / 30)  # sums over counts
    low, high = x["accuracy"]["avg:age"]["ci95"]
    assert low < 1000 / 30 < high and math.isfinite(low)
    assert y["nodes"] == ["b"] and y["withheld_at"] == ["a"]  # a answered, released no y
    assert combined["answered"] == ["a", "b"]
    assert [n["outcome"] for n in combined["nodes"]] == ["answered", "answered", "unreachable"]


def test_quantiles_are_reported_per_node_only() -> None:
    a = dp_node("a", [{"key": [], "values": {"median:age": 40}}])
    combined = combine(["median:age"], [], [a])
    assert combined["groups"][0]["values"]["median:age"] is None
    assert any("do not combine" in note for note in combined["notes"])
