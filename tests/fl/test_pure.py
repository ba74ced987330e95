"""fl/ on its own: feature declarations and encoding, private scaling statistics, models,
local training with and without DP-SGD, ROC-AUC."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fl import models
from fl.features import (
    FeatureSpecError,
    Moments,
    combine_moments,
    encode,
    feature_spec_from_dict,
    local_moments,
    parse_features,
)
from fl.metrics import roc_auc
from fl.train import DPConfig, TrainConfig, TrainingError, evaluate, train

BOUNDS = {"y": None, "job": None, "age": (18.0, 98.0), "calls": (0.0, 50.0), "note": None}
RAW = {"target": {"column": "y", "positive": "yes"},
       "categorical": {"job": ["admin", "tech"]}, "numeric": ["age", "calls"]}


def spec():
    return parse_features("datasets.t.features", RAW, BOUNDS)


def synthetic(n: int, seed: int = 1) -> list[dict]:
    """Rows whose label depends on age and job, so a model has something to learn."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        age = float(rng.integers(18, 90))
        job = str(rng.choice(["admin", "tech", "chef"]))
        logit = (age - 50) / 8 + (1.5 if job == "tech" else -0.5)
        rows.append({"age": age, "calls": float(rng.integers(0, 10)), "job": job,
                     "y": "yes" if rng.random() < 1 / (1 + np.exp(-logit)) else "no"})
    return rows


def test_roc_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 8, 60) / 8  # many ties
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    expected = np.mean([1.0 if p > q else 0.5 if p == q else 0.0
                        for p, q in itertools.product(pos, neg)])
    assert roc_auc(labels, scores) == pytest.approx(expected)
    assert roc_auc(np.ones(3), np.arange(3)) is None


@pytest.mark.parametrize(("raw", "needle"), [
    ({**RAW, "numeric": ["note"]}, "needs bounds"),
    ({**RAW, "numeric": ["nope"]}, "not in the dataset"),
    ({**RAW, "categorical": {"job": []}}, "non-empty list"),
    ({**RAW, "categorical": {"y": ["a"]}}, "target cannot also be a feature"),
    ({**RAW, "target": {"column": "y"}}, "target"),
    ({**RAW, "extra": 1}, "datasets.t.features.extra"),
    ({"target": RAW["target"]}, "declares no feature"),
])
def test_bad_feature_declarations_name_the_key(raw: dict, needle: str) -> None:
    with pytest.raises(FeatureSpecError, match=needle):
        parse_features("datasets.t.features", raw, BOUNDS)


def test_spec_round_trips_through_canonical_json_keeping_input_order() -> None:
    import json

    reordered = parse_features("f", {**RAW, "numeric": ["calls", "age"]}, BOUNDS)
    for s in (spec(), reordered):  # plans travel as JSON with sorted keys
        assert feature_spec_from_dict(json.loads(json.dumps(s.to_dict(), sort_keys=True))) == s


def test_encode_one_hot_other_slot_scaling_and_clamping() -> None:
    s = spec()
    scaling = combine_moments([Moments(2.0, (0.0, 0.0), (2 * 10.0 ** 2, 2 * 5.0 ** 2))], s)
    assert scaling.mean == (58.0, 25.0) and scaling.std == (10.0, 5.0)
    x, y = encode([{"age": 68, "calls": 500, "job": "tech", "y": "yes"},
                   {"age": None, "calls": 25, "job": "chef", "y": "no"}], s, scaling)
    assert s.width == 2 + 3
    assert x.tolist() == [[1.0, 5.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]
    assert y.tolist() == [1.0, 0.0]


def test_private_moments_are_noisy_but_combine_close_to_the_truth() -> None:
    s = spec()
    rows = synthetic(3000)
    ages = np.array([r["age"] for r in rows])
    part = local_moments(rows, s, epsilon=1.0)
    # Nothing raw leaves: the count and the sums carry continuous Laplace noise.
    assert part.count != len(rows)
    assert part.sums[0] != pytest.approx(float((ages - 58.0).sum()), abs=1e-9)
    # Split over three nodes, combined: close to the union's statistics.
    parts = [local_moments(rows[i::3], s, epsilon=1.0) for i in range(3)]
    scaling = combine_moments(parts, s)
    assert scaling.mean[0] == pytest.approx(ages.mean(), abs=1.5)
    assert scaling.std[0] == pytest.approx(ages.std(), rel=0.1)
    with pytest.raises(ValueError):
        local_moments(rows, s, epsilon=0)


def _data(n: int, seed: int = 1):
    s = spec()
    rows = synthetic(n, seed)
    scaling = combine_moments([local_moments(rows, s, 50.0)], s)
    return encode(rows, s, scaling)


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_models_learn_without_dp(kind: str) -> None:
    x, y = _data(600)
    xt, yt = _data(400, seed=2)
    model = models.build(models.ModelSpec(kind, hidden=8), x.shape[1])
    before = evaluate(model, xt, yt)
    result = train(model, x, y, TrainConfig(epochs=5, lr=0.5, batch_size=32))
    after = evaluate(model, xt, yt)
    assert result.examples == 600 and result.epsilon == 0.0
    assert after.loss < before.loss
    assert after.auc is not None and after.auc > 0.8


def test_dp_sgd_spends_its_epsilon_and_still_learns() -> None:
    x, y = _data(800)
    xt, yt = _data(400, seed=2)
    model = models.build(models.ModelSpec("logreg"), x.shape[1])
    start = models.get_state(model)
    result = train(model, x, y, TrainConfig(epochs=3, lr=0.5, batch_size=64,
                                            dp=DPConfig(epsilon=4.0, delta=1e-4)))
    assert result.epsilon == 4.0
    assert any(not np.allclose(start[k], v) for k, v in models.get_state(model).items())
    assert evaluate(model, xt, yt).auc > 0.7
    with pytest.raises(TrainingError, match="delta"):
        train(model, x[:50], y[:50], TrainConfig(dp=DPConfig(epsilon=1.0, delta=0.05)))


def test_proximal_term_keeps_weights_near_the_global_model() -> None:
    x, y = _data(300)
    drift = {}
    for mu in (0.0, 5.0):
        model = models.build(models.ModelSpec("logreg"), x.shape[1], seed=3)
        start = models.get_state(model)
        train(model, x, y, TrainConfig(epochs=3, lr=0.2, proximal_mu=mu))
        drift[mu] = sum(float(np.abs(v - start[k]).sum())
                        for k, v in models.get_state(model).items())
    assert drift[5.0] < 0.7 * drift[0.0]


def test_state_round_trip_and_shape_mismatch() -> None:
    a = models.build(models.ModelSpec("mlp", hidden=4), 5, seed=1)
    b = models.build(models.ModelSpec("mlp", hidden=4), 5, seed=2)
    models.set_state(b, models.get_state(a))
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    assert np.allclose(models.predict(a, x), models.predict(b, x))
    with pytest.raises(models.ModelSpecError, match="do not fit"):
        models.set_state(models.build(models.ModelSpec("logreg"), 5), models.get_state(a))
    with pytest.raises(models.ModelSpecError):
        models.ModelSpec("forest")


def test_data_map_declares_features_and_names_a_bad_key(tmp_path) -> None:
    from agent_node.datamap import parse_datamap
    from agent_node.errors import DataMapError

    doc = {"sources": {"crm": {"kind": "csv", "path": "x.csv"}},
           "datasets": {"t": {"source": "crm", "subject_key": ["id"], "columns": {
               "age": {"type": "integer", "scope": "transaction", "bounds": [18, 98]},
               "calls": {"type": "integer", "scope": "transaction", "bounds": [0, 50]},
               "job": {"type": "text", "scope": "transaction"},
               "note": {"type": "text", "scope": "identity"},
               "y": {"type": "text", "scope": "transaction"}}, "features": RAW}}}
    assert parse_datamap(doc, tmp_path).datasets["t"].features == spec()
    doc["datasets"]["t"]["features"] = {**RAW, "numeric": ["note"]}
    with pytest.raises(DataMapError, match=r"datasets\.t\.features\.numeric.*needs bounds"):
        parse_datamap(doc, tmp_path)


def test_readme_features_example_is_a_valid_data_map_table() -> None:
    """The README's features snippet, added to the test data map, parses."""
    import re
    import tomllib
    from pathlib import Path

    from agent_node.datamap import parse_datamap
    from tests.agent_node.conftest import DATASET_TOML

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Federated intent models", 1)[1]
    snippet = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    snippet = "\n".join(line.strip() for line in snippet.splitlines())
    doc = tomllib.loads('[sources.crm]\nkind = "csv"\npath = "x"\n' + DATASET_TOML + snippet)
    features = parse_datamap(doc, Path(".")).datasets["contacts"].features
    assert features.target == "y" and [c for c, _, _ in features.numeric] == ["age"]
