"""Scoring with a trained intent model, in numpy (pure: no PyTorch, no vault access).

A node scores its customers with a model artifact (``fl.artifact``) at query time; importing
PyTorch into the node's query service for a forward pass through at most two ``Linear``
layers would cost seconds of start-up and hundreds of MB, so the pass is done here from the
artifact's weights. ``fl.models.build`` lays both kinds out as ``nn.Sequential`` with
``Linear`` layers at even indices and a ``ReLU`` between them (the MLP), so the state names
are ``"0.weight"``, ``"0.bias"`` (, ``"2.weight"``, ``"2.bias"``); the tests check that
these scores equal ``fl.models.predict`` on the same weights.

The inputs are encoded exactly as in training (``fl.features.encode`` with the artifact's
scaling statistics); the target column is never read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fl.artifact import ArtifactError, digest, weights_of
from fl.features import FeatureSpec, FeatureSpecError, Scaling, encode, feature_spec_from_dict

#: The model kinds ``fl.models`` builds (not imported from there: that module loads PyTorch).
KINDS = ("logreg", "mlp")


@dataclass(frozen=True)
class Scorer:
    """What a node needs to score: the dataset the model was trained on, its features, the
    scaling statistics and the layers as (weight, bias) pairs."""

    digest: str
    dataset: str
    kind: str
    features: FeatureSpec
    scaling: Scaling
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    run_id: str
    requester: str

    @property
    def columns(self) -> list[str]:
        """The columns scoring reads: the features, not the target."""
        return [c for c in self.features.columns if c != self.features.target]

    def score(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Scores in [0, 1], one per row (one row per customer)."""
        if not rows:
            return np.zeros(0, dtype=np.float64)
        x, _ = encode(rows, self.features, self.scaling)
        h = x.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            for i, (weight, bias) in enumerate(self.layers):
                h = h @ weight.T + bias
                if i < len(self.layers) - 1:
                    h = np.maximum(h, 0.0)
        # Weights and scaling are finite (``scorer``), but a huge weight times a clamped
        # input can still overflow float64 (inf - inf is NaN). A score must stay in [0, 1]
        # for every customer whatever the model: +inf scores 1, -inf 0, NaN 0.5 (logit 0),
        # so no customer's value can make a question fail or release a non-number.
        logits = np.nan_to_num(h[:, 0], nan=0.0, posinf=np.inf, neginf=-np.inf)
        with np.errstate(over="ignore"):  # exp(inf) is inf: the score is 0, as it should be
            return 1.0 / (1.0 + np.exp(-logits))  # type: ignore[no-any-return]


def scorer(artifact: dict[str, Any]) -> Scorer:
    """The artifact's scorer; ``ArtifactError`` (one sentence) when its plan or weights do not
    describe a model this module can run."""
    plan = artifact.get("plan")
    if not isinstance(plan, dict):
        raise ArtifactError("the model file carries no run plan")
    try:
        features = feature_spec_from_dict(plan["features"])
        kind = str(plan["model"]["kind"])
        dataset = str(plan["dataset"])
        scaling = Scaling(tuple(float(v) for v in artifact["scaling"]["mean"]),
                          tuple(float(v) for v in artifact["scaling"]["std"]))
    except (KeyError, TypeError, ValueError, FeatureSpecError) as exc:
        raise ArtifactError(f"the model's plan is malformed ({exc})") from None
    if kind not in KINDS:
        raise ArtifactError(f"model kind {kind!r} is unknown: this node scores "
                            f"{', '.join(KINDS)}")
    if len(scaling.mean) != len(features.numeric) or len(scaling.std) != len(features.numeric) \
            or any(not s > 0 for s in scaling.std):
        raise ArtifactError("the model's scaling statistics do not fit its numeric features")
    if not all(math.isfinite(v) for v in (*scaling.mean, *scaling.std)):
        raise ArtifactError("the model's scaling statistics are not finite numbers")
    with np.errstate(over="ignore"):  # a value beyond float32's range becomes inf: refused
        weights = weights_of(artifact)
    if not all(np.isfinite(w).all() for w in weights.values()):
        raise ArtifactError("the model's weights are not finite float32 numbers (NaN, "
                            "infinity or beyond float32's range); it cannot score")
    try:
        found = digest(artifact)
    except ValueError as exc:  # NaN or infinity elsewhere: no canonical JSON, no digest
        raise ArtifactError(f"the model file is not canonical JSON ({exc})") from None
    names = ["0"] if kind == "logreg" else ["0", "2"]
    if set(weights) != {f"{n}.{p}" for n in names for p in ("weight", "bias")}:
        raise ArtifactError(f"the model's weights are not those of a {kind} model")
    layers = tuple((np.asarray(weights[f"{n}.weight"], dtype=np.float64),
                    np.asarray(weights[f"{n}.bias"], dtype=np.float64)) for n in names)
    width = features.width
    for weight, bias in layers:
        if weight.ndim != 2 or weight.shape[1] != width or bias.shape != (weight.shape[0],):
            raise ArtifactError("the model's weights do not fit its features (shapes differ)")
        width = weight.shape[0]
    if width != 1:
        raise ArtifactError("the model's last layer must give one logit")
    return Scorer(found, dataset, kind, features, scaling, layers,
                  str(artifact.get("run_id", "")), str(plan.get("requester", "")))
