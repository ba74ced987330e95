"""Differential privacy for the node's answers: the mechanisms (all from OpenDP), the exact
budget arithmetic and the error bounds that travel with every noisy value.

The privacy unit is one customer: every row of every source customer id bound to them (the
engine merges customers who share a bound id into one unit). The engine bounds each unit's
contribution before anything here sees the data: at most ``max_rows_per_subject`` rows in
all groups together (``rows``), values clamped to the column's data-map bounds, and at most
``l0`` groups per unit. Given those bounds this module calibrates

- counts: the discrete Laplace mechanism (``make_laplace`` on integers), L1 sensitivity
  ``rows`` over the vector of groups (its noise drawn from OpenDP in batches, one draw per
  value: ``_NoisePool``);
- sums: the Laplace mechanism (discrete on integer columns), L1 sensitivity
  ``rows * max(|low|, |high|)``; an average is a noisy sum over a noisy count;
- quantiles: OpenDP's exponential-mechanism quantile (``make_private_quantile``) over
  candidates spread across the column's bounds, ``rows`` changed rows per group, ``l0``
  groups;
- group keys not declared public: the Laplace threshold mechanism (``make_laplace_threshold``)
  on the number of units per group, ``l0`` groups per unit; it is the one part that costs a
  ``delta`` (the node's ``dp_delta`` per answer).

An answer's epsilon is split evenly between its parts (selection, one per count, sum and
quantile, two per average). Each part's noise scale is checked against OpenDP's own privacy
map, and widened if the map says it would cost more than its share: summed in exact
fractions, an answer never costs more than the epsilon it debits. Budgets are integers of
micro-epsilon (``MICRO``), so the vault compares and adds them exactly.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from fractions import Fraction
from typing import Any

import opendp.prelude as dp

dp.enable_features("contrib")

MICRO = 1_000_000
CONFIDENCE = 0.95
MODES = ("dp", "threshold")
QUANTILE_CANDIDATES = 201
MAX_THRESHOLD = 1 << 20


class PrivacyError(ValueError):
    """A mechanism cannot be built for these parameters (a bug or a bad node setting)."""


@functools.lru_cache(maxsize=4096)
def to_micro(epsilon: float, *, up: bool) -> int:
    """``epsilon`` in whole micro-epsilon, read from its shortest decimal form (so 0.7 is
    700000, not 699999) and rounded up (a cost) or down (a budget)."""
    scaled = Decimal(repr(float(epsilon))) * MICRO
    return int(scaled.to_integral_value(ROUND_CEILING if up else ROUND_FLOOR))


def from_micro(micro: int) -> float:
    return micro / MICRO


@dataclass(frozen=True)
class Released:
    """One noisy value and its error bound: ``interval`` holds the true (bounded) value
    with probability at least ``CONFIDENCE``; ``rank_error`` for quantiles instead."""

    value: float | int
    interval: tuple[float, float] | None = None
    rank_error: float | None = None

    def accuracy(self) -> dict[str, Any]:
        if self.interval is not None:
            return {"ci95": [self.interval[0], self.interval[1]]}
        return {"rank_error": self.rank_error}


def _fits(measurement: Any, d_in: Any, budget: Fraction) -> bool:
    """OpenDP's privacy map of ``measurement`` at ``d_in`` is at most ``budget``, exactly."""
    loss = measurement.map(d_in)
    return Fraction(loss) <= budget


_MEASUREMENTS: dict[tuple[Any, ...], tuple[Any, float]] = {}
_MEASUREMENTS_LOCK = threading.Lock()
MEASUREMENT_CACHE_SIZE = 4096


def _calibrated(build: Any, d_in: Any, sensitivity: float, budget: Fraction,
                kind: str = "") -> tuple[Any, float]:
    """The measurement ``build(scale)`` with the smallest scale tried (sensitivity / epsilon,
    widened by 1e-12 steps) whose privacy map at ``d_in`` stays within ``budget``. With a
    ``kind``, kept for the next answer with the same parameters (building and checking one
    costs about a millisecond; a measurement holds no data and no random state)."""
    key = (kind, d_in, sensitivity, budget)
    if kind:
        found = _MEASUREMENTS.get(key)
        if found is not None:
            return found
    if budget <= 0:
        raise PrivacyError("a mechanism needs a positive epsilon")
    scale = sensitivity / float(budget)
    for _ in range(64):
        measurement = build(scale)
        if _fits(measurement, d_in, budget):
            if kind:
                with _MEASUREMENTS_LOCK:
                    if len(_MEASUREMENTS) >= MEASUREMENT_CACHE_SIZE:
                        _MEASUREMENTS.clear()
                    _MEASUREMENTS[key] = (measurement, scale)
            return measurement, scale
        scale *= 1 + 1e-12
    raise PrivacyError("no noise scale fits this epsilon")  # pragma: no cover


def _int_space() -> tuple[Any, Any]:
    return dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int)


def _float_space() -> tuple[Any, Any]:
    return dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float)


NOISE_BATCH = 64  # discrete Laplace draws per OpenDP call (see _NoisePool)
NOISE_POOLS = 256  # noise scales kept at once


class _NoisePool:
    """Discrete Laplace noise drawn from OpenDP ahead of use, per noise scale.

    An OpenDP invocation costs about 60 us whatever its length, then about 7 us per value
    (the exact sampler); a report of 16 small queries made 16 calls. The integer mechanism's
    release is ``x + Z`` with ``Z`` drawn independently per value, so drawing ``Z`` in batches
    from the same calibrated measurement (applied to zeros: its output is the noise alone)
    and adding it to the data with exact integer arithmetic releases the same distribution.
    Each draw is used once, so every value's noise is independent of every other value's,
    across answers as within one; the privacy map and the budgets are the measurement's, as
    before. Only the integer mechanism is pooled: float Laplace noise must be added by
    OpenDP itself (its rounding is part of the guarantee), so float sums still invoke the
    measurement on the data. A forked worker starts with no pool (no shared draws)."""

    def __init__(self) -> None:
        self._pools: dict[float, list[int]] = {}
        self._lock = threading.Lock()

    def take(self, measurement: Any, scale: float, n: int) -> list[int]:
        with self._lock:
            pool = self._pools.get(scale)
            if pool is None:
                if len(self._pools) >= NOISE_POOLS:
                    self._pools.clear()
                pool = self._pools[scale] = []
            if len(pool) < n:
                pool.extend(int(z) for z in measurement([0] * max(NOISE_BATCH, n - len(pool))))
            taken = pool[len(pool) - n:]
            del pool[len(pool) - n:]
        return taken

    def forget(self) -> None:
        """In a forked child: no draws, and a new lock (another thread of the parent may have
        held the old one at the fork, and that thread does not exist in the child: taking
        the old lock would wait forever)."""
        self._pools, self._lock = {}, threading.Lock()


_NOISE = _NoisePool()


def _after_fork_in_child() -> None:
    global _MEASUREMENTS_LOCK
    _NOISE.forget()
    _MEASUREMENTS_LOCK = threading.Lock()  # as the pool's: its holder may not exist here


os.register_at_fork(after_in_child=_after_fork_in_child)


def _discrete_laplace(values: list[int], measurement: Any, scale: float) -> list[int]:
    """``measurement``'s release of ``values``: each plus its own draw of discrete Laplace
    noise at ``scale`` from OpenDP (drawn in batches, see _NoisePool)."""
    return [int(v) + z for v, z in zip(values, _NOISE.take(measurement, scale, len(values)),
                                       strict=True)]


def noisy_counts(counts: list[int], l1: int, budget: Fraction) -> tuple[list[Released], float]:
    """The discrete Laplace mechanism on a vector of counts whose L1 sensitivity is ``l1``;
    each released count is floored at 0 (post-processing), its interval too. Returns the
    counts and the noise scale."""
    if not counts:
        return [], 0.0
    measurement, scale = _calibrated(lambda s: dp.m.make_laplace(*_int_space(), scale=s), l1,
                                     float(l1), budget, "int-laplace")
    noisy = _discrete_laplace(counts, measurement, scale)
    half = half_width(scale, True, 1 - CONFIDENCE)
    # Counts are whole numbers: the interval is rounded outwards to whole numbers too (ints,
    # which canonical JSON writes as is; an integral float needs rewriting, see
    # consent.canonical).
    return [Released(max(0, int(v)), (max(0, math.floor(v - half)), max(0, math.ceil(v + half))))
            for v in noisy], scale


def noisy_sums(sums: list[float], l1: float, budget: Fraction, integer: bool
               ) -> tuple[list[Released], float]:
    """The Laplace mechanism (discrete for integer columns) on a vector of sums whose L1
    sensitivity is ``l1``; returns the released sums and the noise scale."""
    if not sums:
        return [], 0.0
    noisy: list[int] | list[float]
    if integer:
        d_in: Any = max(1, math.ceil(l1))
        measurement, scale = _calibrated(lambda s: dp.m.make_laplace(*_int_space(), scale=s),
                                         d_in, float(d_in), budget, "int-laplace")
        noisy = _discrete_laplace([round(s) for s in sums], measurement, scale)
        half = half_width(scale, True, 1 - CONFIDENCE)
    else:
        measurement, scale = _calibrated(lambda s: dp.m.make_laplace(*_float_space(), scale=s),
                                         float(l1), float(l1), budget, "float-laplace")
        noisy = [float(v) for v in measurement([float(s) for s in sums])]
        half = half_width(scale, False, 1 - CONFIDENCE)
    return [Released(v, (v - half, v + half)) for v in noisy], scale


@functools.lru_cache(maxsize=1024)  # a pure function, ~0.3 ms through OpenDP per call
def half_width(scale: float, integer: bool, alpha: float) -> float:
    """The noise's absolute value exceeds this with probability at most ``alpha`` (OpenDP's
    accuracy of the (discrete) Laplace mechanism at that scale)."""
    if integer:
        return float(dp.discrete_laplacian_scale_to_accuracy(scale, alpha))
    return float(dp.laplacian_scale_to_accuracy(scale, alpha))


def ratio(total: Released, count: Released, sum_half: float, count_half: float,
          low: float, high: float) -> Released:
    """An average as noisy sum / noisy count, clamped to the column's bounds. Its interval
    takes the extreme ratios of the sum's and the count's intervals, each at 97.5 % (the
    caller's half-widths), so both hold together with at least 95 %; it is the data map's
    whole range when the count's interval reaches 0."""
    n = max(1.0, float(count.value))
    value = min(max(float(total.value) / n, low), high)
    n_low, n_high = n - count_half, n + count_half
    if n_low <= 0:
        return Released(value, (low, high))
    candidates = [(float(total.value) + d) / m for d in (-sum_half, sum_half)
                  for m in (n_low, n_high)]
    return Released(value, (max(low, min(candidates)), min(high, max(candidates))))


class _ThresholdCache:
    """The smallest integer threshold whose delta fits, per (scale, l0, delta): the search
    builds a few dozen measurements, so it runs once per parameter set."""

    def __init__(self) -> None:
        self._found: dict[tuple[float, int, float], int] = {}
        self._lock = threading.Lock()

    def get(self, scale: float, l0: int, delta: float, budget: Fraction) -> Any:
        key = (scale, l0, delta)
        space = (dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T=int)),
                 dp.l01inf_distance(dp.absolute_distance(T=int)))
        d_in = (l0, l0, 1)

        def build(threshold: int) -> Any:
            return dp.m.make_laplace_threshold(*space, scale=scale, threshold=threshold)

        with self._lock:
            threshold = self._found.get(key)
        if threshold is None:
            low, high = 1, MAX_THRESHOLD
            while low < high:
                mid = (low + high) // 2
                eps, found_delta = build(mid).map(d_in)
                if found_delta <= delta:
                    high = mid
                else:
                    low = mid + 1
            threshold = low
            with self._lock:
                self._found[key] = threshold
        measurement = build(threshold)
        eps, found_delta = measurement.map(d_in)
        if Fraction(eps) > budget or found_delta > delta:
            raise PrivacyError("the partition selection does not fit its epsilon and delta")
        return measurement, threshold


_THRESHOLDS = _ThresholdCache()


def _selector(l0: int, budget: Fraction, delta: float) -> tuple[Any, int]:
    """The Laplace threshold measurement (and its threshold) for ``l0`` groups per customer
    within ``budget`` and ``delta``: scale l0 / epsilon, widened until OpenDP's map fits."""
    scale = l0 / float(budget)
    for _ in range(64):
        try:
            return _THRESHOLDS.get(scale, l0, delta, budget)  # type: ignore[no-any-return]
        except PrivacyError:
            scale *= 1 + 1e-12
    raise PrivacyError("no partition selection fits this epsilon")  # pragma: no cover


def select_groups(unit_counts: dict[str, int], l0: int, budget: Fraction, delta: float
                  ) -> set[str]:
    """The Laplace threshold mechanism on customers per group: the keys it releases. A key
    present in the data is released only if its noisy count of customers clears a threshold
    chosen so that releasing it costs at most ``delta``; absent keys are never released."""
    if not unit_counts:
        return set()
    measurement, _ = _selector(l0, budget, delta)
    return set(measurement(dict(unit_counts)))


def selection_threshold(l0: int, budget: Fraction, delta: float) -> int:
    """The threshold ``select_groups`` uses (a group with that many customers is released
    about half the time), for the docs and tests."""
    return _selector(l0, budget, delta)[1]


def quantile_candidates(low: float, high: float, integer: bool) -> list[float]:
    """Candidates spread over the column's bounds: every integer when there are few, else
    QUANTILE_CANDIDATES evenly spaced values."""
    if integer and high - low + 1 <= QUANTILE_CANDIDATES:
        return [float(v) for v in range(math.ceil(low), math.floor(high) + 1)]
    step = (high - low) / (QUANTILE_CANDIDATES - 1)
    return [low + i * step for i in range(QUANTILE_CANDIDATES)]


def noisy_quantile(values: list[float], candidates: list[float], alpha: float, rows: int,
                   budget: Fraction) -> Released:
    """OpenDP's exponential-mechanism quantile over ``candidates``; ``rows`` is how many of
    ``values`` one customer may change. ``rank_error``: with probability 0.95 the released
    candidate is within that many rows (in rank) of the true ``alpha``-quantile."""
    space = (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance())

    def build(scale: float) -> Any:
        return dp.m.make_private_quantile(*space, dp.max_divergence(), candidates=candidates,
                                          alpha=alpha, scale=scale)

    reference = build(1.0).map(rows)  # the loss at scale 1: loss scales as 1 / scale
    measurement, _ = _calibrated(build, rows, float(reference), budget)
    value = float(measurement([float(v) for v in values]))
    # The exponential mechanism's bound: with probability 1 - beta the chosen candidate's
    # score is within 2 * sensitivity * ln(C / beta) / epsilon of the best, and a customer's
    # rows move the true quantile's rank by at most ``rows``.
    rank_error = 2 * rows * math.log(len(candidates) / (1 - CONFIDENCE)) / float(budget)
    return Released(value, None, round(rank_error, 1))


def split(epsilon_micro: int, parts: int) -> Fraction:
    """Each part's share of an answer's epsilon (exact)."""
    return Fraction(epsilon_micro, MICRO * parts)
