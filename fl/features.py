"""Feature declarations for intent models, and their encoding (pure: numpy and OpenDP only).

A dataset's data map declares which columns a model may use and how (``[datasets.X.features]``):

    [datasets.bank.features]
    target = { column = "y", positive = "yes" }
    categorical = { job = ["admin.", "blue-collar"], contact = ["cellular", "telephone"] }
    numeric = ["age", "campaign"]     # each needs bounds = [low, high] on its column

Categorical columns are one-hot encoded over the declared vocabulary plus one "other" slot, so
every node encodes alike without telling anyone which values it holds. Numeric columns are
clamped to their column's bounds and standardised with a mean and standard deviation that are
computed federatedly under differential privacy (``local_moments`` on each node, Laplace noise
from OpenDP; ``combine_moments`` at the coordinator): no node ever sends a raw statistic.

A customer is one training example (the first of their rows by the vault's row order), so a
customer's privacy is an example's privacy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import opendp.prelude as dp

dp.enable_features("contrib")

#: The smallest standard deviation used for scaling, as a share of the bounds' half-width, so
#: that a noisy variance cannot blow a feature up (a constant column stays finite too).
MIN_STD_SHARE = 0.05


class FeatureSpecError(ValueError):
    """The ``features`` table of a dataset is malformed; the message names the key."""


@dataclass(frozen=True)
class FeatureSpec:
    """What a model reads from one dataset's rows."""

    target: str
    positive: str
    categorical: tuple[tuple[str, tuple[str, ...]], ...]  # (column, vocabulary)
    numeric: tuple[tuple[str, float, float], ...]  # (column, low, high)

    @property
    def columns(self) -> list[str]:
        """Every column read, target included (what the consent scopes are computed from)."""
        return [self.target, *(c for c, _ in self.categorical), *(c for c, _, _ in self.numeric)]

    @property
    def width(self) -> int:
        """Number of model inputs."""
        return len(self.numeric) + sum(len(v) + 1 for _, v in self.categorical)

    def to_dict(self) -> dict[str, Any]:
        """As lists, not tables: the order of the features is the order of the model's inputs
        and must survive canonical JSON (which sorts object keys)."""
        return {"target": {"column": self.target, "positive": self.positive},
                "categorical": [[c, list(v)] for c, v in self.categorical],
                "numeric": [[c, lo, hi] for c, lo, hi in self.numeric]}


def _fail(key: str, problem: str) -> FeatureSpecError:
    return FeatureSpecError(f"data map key {key!r}: {problem}")


def parse_features(where: str, raw: Any, bounds: Mapping[str, tuple[float, float] | None]
                   ) -> FeatureSpec:
    """Validate a dataset's ``features`` table. ``bounds`` gives each known column's bounds
    (None when it has none); ``where`` is the table's key, for error messages."""
    if not isinstance(raw, dict):
        raise _fail(where, "must be a table with target, categorical and numeric")
    unknown = set(raw) - {"target", "categorical", "numeric"}
    if unknown:
        raise _fail(f"{where}.{sorted(unknown)[0]}", "is not a known features option")
    target = raw.get("target")
    if not (isinstance(target, dict) and isinstance(target.get("column"), str)
            and isinstance(target.get("positive"), str) and set(target) == {"column",
                                                                            "positive"}):
        raise _fail(f"{where}.target", 'must be { column = "y", positive = "yes" }')
    if target["column"] not in bounds:
        raise _fail(f"{where}.target", f"column {target['column']!r} is not in the dataset")
    categorical = raw.get("categorical", {})
    if not isinstance(categorical, dict):
        raise _fail(f"{where}.categorical", "must map columns to lists of values")
    cats = []
    for column, vocab in categorical.items():
        if column not in bounds:
            raise _fail(f"{where}.categorical.{column}", "is not a column of the dataset")
        if (not isinstance(vocab, list) or not vocab
                or not all(isinstance(v, str) for v in vocab) or len(set(vocab)) != len(vocab)):
            raise _fail(f"{where}.categorical.{column}", "must be a non-empty list of "
                        "distinct strings (the values to one-hot encode)")
        cats.append((column, tuple(vocab)))
    numeric = raw.get("numeric", [])
    if not isinstance(numeric, list) or not all(isinstance(c, str) for c in numeric):
        raise _fail(f"{where}.numeric", "must be a list of column names")
    nums = []
    for column in numeric:
        if column not in bounds:
            raise _fail(f"{where}.numeric", f"column {column!r} is not in the dataset")
        found = bounds[column]
        if found is None:
            raise _fail(f"{where}.numeric", f"column {column!r} needs bounds = [low, high] "
                        "in its column entry (scaling statistics are private sums)")
        nums.append((column, float(found[0]), float(found[1])))
    if not cats and not nums:
        raise _fail(where, "declares no feature: add categorical or numeric columns")
    if target["column"] in {c for c, _ in cats} | {c for c, _, _ in nums}:
        raise _fail(f"{where}.target", "the target cannot also be a feature")
    return FeatureSpec(target["column"], target["positive"], tuple(cats), tuple(nums))


def feature_spec_from_dict(raw: dict[str, Any]) -> FeatureSpec:
    """The spec back from ``FeatureSpec.to_dict`` (as it travels in a run's config)."""
    try:
        categorical = {str(c): v for c, v in raw.get("categorical", [])}
        numeric = [(str(c), float(lo), float(hi)) for c, lo, hi in raw.get("numeric", [])]
        target = raw["target"]["column"]
    except (TypeError, ValueError, KeyError):
        raise FeatureSpecError("the features must be given as FeatureSpec.to_dict writes "
                               "them") from None
    bounds: dict[str, tuple[float, float] | None] = {target: None}
    bounds.update({c: None for c in categorical})
    bounds.update({c: (lo, hi) for c, lo, hi in numeric})
    return parse_features("features", {**raw, "categorical": categorical,
                                       "numeric": [c for c, _, _ in numeric]}, bounds)


# -- scaling statistics, federated and private ---------------------------------------------------

@dataclass(frozen=True)
class Moments:
    """One node's noisy count, and per numeric column noisy sums of centred values and of
    their squares (values clamped to the column's bounds, centred on its midpoint)."""

    count: float
    sums: tuple[float, ...]
    squares: tuple[float, ...]


@dataclass(frozen=True)
class Scaling:
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _laplace(value: float, scale: float) -> float:
    measurement = dp.m.make_laplace(dp.atom_domain(T=float, nan=False),
                                    dp.absolute_distance(T=float), scale=scale)
    return float(measurement(float(value)))


def local_moments(rows: Sequence[Mapping[str, Any]], spec: FeatureSpec,
                  epsilon: float) -> Moments:
    """The node's private moments, epsilon-DP for one example per customer (add/remove).

    The budget is split evenly over the count and two sums per numeric column; each value is
    clamped to its bounds and centred, so one customer moves a sum by at most the half-width
    ``r`` and a sum of squares by at most ``r**2``."""
    if epsilon <= 0:
        raise ValueError("epsilon must be positive")
    parts = 1 + 2 * len(spec.numeric)
    eps = epsilon / parts
    count = _laplace(len(rows), 1.0 / eps)
    sums, squares = [], []
    for column, low, high in spec.numeric:
        mid, half = (low + high) / 2, (high - low) / 2
        centred = np.array([_clamp(row.get(column), low, high, mid) - mid for row in rows],
                           dtype=float)
        sums.append(_laplace(float(centred.sum()), half / eps))
        squares.append(_laplace(float((centred ** 2).sum()), half * half / eps))
    return Moments(count, tuple(sums), tuple(squares))


def combine_moments(parts: Sequence[Moments], spec: FeatureSpec) -> Scaling:
    """Mean and standard deviation per numeric column from every node's noisy moments
    (post-processing: no further privacy cost). Noise can make a variance negative or a mean
    leave the bounds; both are clamped."""
    count = max(sum(p.count for p in parts), 1.0)
    mean, std = [], []
    for i, (_, low, high) in enumerate(spec.numeric):
        mid, half = (low + high) / 2, (high - low) / 2
        m = min(max(sum(p.sums[i] for p in parts) / count, -half), half)
        var = sum(p.squares[i] for p in parts) / count - m * m
        mean.append(mid + m)
        # Noise can swamp a variance that is small next to the bounds: then fall back to a
        # uniform spread over the bounds, and never scale by less than a share of the range.
        std.append(max(math.sqrt(var) if var > 0 else half / math.sqrt(3), MIN_STD_SHARE * half))
    return Scaling(tuple(mean), tuple(std))


def _clamp(value: Any, low: float, high: float, default: float) -> float:
    if value is None or value == "":
        return default
    return min(max(float(value), low), high)


# -- encoding -------------------------------------------------------------------------------------

def encode(rows: Sequence[Mapping[str, Any]], spec: FeatureSpec, scaling: Scaling
           ) -> tuple[np.ndarray, np.ndarray]:
    """(inputs float32 [n, width], labels float32 [n]) for one example per row. Missing
    numeric values become the mean; unlisted or missing categories the "other" slot."""
    x = np.zeros((len(rows), spec.width), dtype=np.float32)
    y = np.zeros(len(rows), dtype=np.float32)
    for r, row in enumerate(rows):
        y[r] = 1.0 if str(row.get(spec.target)) == spec.positive else 0.0
        at = 0
        for i, (column, low, high) in enumerate(spec.numeric):
            number = _clamp(row.get(column), low, high, scaling.mean[i])
            x[r, at] = (number - scaling.mean[i]) / scaling.std[i]
            at += 1
        for column, vocab in spec.categorical:
            raw = row.get(column)
            category = None if raw is None else str(raw)
            slot = vocab.index(category) if category in vocab else len(vocab)
            x[r, at + slot] = 1.0
            at += len(vocab) + 1
    return x, y
