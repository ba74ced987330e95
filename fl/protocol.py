"""The training protocol both ends speak: the run plan, message types and record keys.

A training run is described by a **run plan**, a JSON document signed by the requester's
did:key (``consent.integrity``): which dataset, which features, which model, local training
and DP-SGD settings, how much privacy the scaling statistics and each round spend, a
validity window and an id. The ServerApp hands the signed plan to every node in each
message's ``config`` record; each node verifies it, takes the signer as the requester whose
grants must allow ``intent-model-training``, and binds the plan's id to the Flower run id on
first use, so a plan read off the SuperLink cannot start another run.

Phases, each one Flower message per node:

* ``query.moments``: the node's DP moments of the numeric features (``fl.features``);
* ``train``: local (DP-)SGD from the global weights; the reply's ``lineage`` record names the
  node and the hashes of the grants its customers' data was used under;
* ``evaluate`` (only for plans without DP): loss and ROC-AUC on the node's customers.

A node refuses by replying with an ``Error`` of code ``REFUSED`` whose reason is one sentence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from consent.grants import check_purpose
from consent.utctime import utc_text
from fl.features import FeatureSpec, Scaling, feature_spec_from_dict
from fl.models import ModelSpec
from fl.train import DPConfig, TrainConfig

PURPOSE = "intent-model-training"
PLAN_TYPE = "IntentTrainingPlan"
MOMENTS = "query.moments"
TRAIN = "train"
EVALUATE = "evaluate"
EMPTY = "query.empty"  # answered at once, touching nothing (bench/fl.py's baseline round)
#: Record keys: the strategy's own ("arrays", "config", "metrics") and ours.
PLAN_KEY = "plan"  # in "config": the signed plan, canonical JSON
SCALING_KEY = "scaling"  # in "config": {"mean": [...], "std": [...]} as JSON
LINEAGE = "lineage"  # reply ConfigRecord: node DID, grant hashes
EXAMPLES = "num-examples"  # the strategies' weighting key
#: Error code of a node's refusal (Flower's own codes are 0..8).
REFUSED = 100
MAX_PLAN_TTL = timedelta(hours=24)


class PlanError(ValueError):
    """The run plan is malformed or outside its window; the message says which field."""


@dataclass(frozen=True)
class RunPlan:
    id: str
    requester: str
    dataset: str
    features: FeatureSpec
    model: ModelSpec
    train: TrainConfig
    stats_epsilon: float
    not_before: datetime
    expires: datetime
    seed: int = 0

    @property
    def dp(self) -> DPConfig | None:
        return self.train.dp


def plan_document(plan_id: str, requester: str, dataset: str, features: FeatureSpec,
                  model: ModelSpec, train: TrainConfig, *, stats_epsilon: float,
                  ttl: timedelta = timedelta(hours=2), seed: int = 0,
                  now: datetime | None = None) -> dict[str, Any]:
    """The unsigned plan; sign it with ``consent.integrity.sign_document``."""
    now = now or datetime.now(UTC)
    dp = train.dp
    return {
        "type": PLAN_TYPE, "id": plan_id, "requester": requester, "purpose": PURPOSE,
        "dataset": dataset, "features": features.to_dict(), "model": model.to_dict(),
        "train": {"epochs": train.epochs, "lr": train.lr, "batch_size": train.batch_size,
                  "dp": None if dp is None else {"epsilon": dp.epsilon, "delta": dp.delta,
                                                 "max_grad_norm": dp.max_grad_norm}},
        "stats_epsilon": stats_epsilon, "seed": seed,
        "not_before": _iso(now), "expires": _iso(now + ttl),
    }


def parse_plan(document: Any, now: datetime | None = None) -> RunPlan:
    """The plan's fields, checked (not its signature: the node verifies that first)."""
    now = now or datetime.now(UTC)
    if not isinstance(document, dict) or document.get("type") != PLAN_TYPE:
        raise PlanError(f"the run plan must be a signed {PLAN_TYPE} document")
    try:
        if document["purpose"] != PURPOSE:
            raise PlanError(f"a training plan's purpose is {PURPOSE!r}")
        check_purpose(document["purpose"])
        raw = document["train"]
        dp = raw.get("dp")
        train = TrainConfig(epochs=int(raw["epochs"]), lr=float(raw["lr"]),
                            batch_size=int(raw["batch_size"]),
                            dp=None if dp is None else DPConfig(
                                float(dp["epsilon"]), float(dp["delta"]),
                                float(dp["max_grad_norm"])))
        plan = RunPlan(
            id=str(document["id"]), requester=str(document["requester"]),
            dataset=str(document["dataset"]),
            features=feature_spec_from_dict(document["features"]),
            model=ModelSpec(str(document["model"]["kind"]), int(document["model"]["hidden"])),
            train=train, stats_epsilon=float(document["stats_epsilon"]),
            not_before=_parse_time(document["not_before"]),
            expires=_parse_time(document["expires"]), seed=int(document.get("seed", 0)))
    except PlanError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PlanError(f"the run plan is malformed ({type(exc).__name__}: {exc})") from None
    if not plan.stats_epsilon > 0:
        raise PlanError("stats_epsilon must be positive")
    if plan.expires - plan.not_before > MAX_PLAN_TTL:
        raise PlanError("a run plan may be valid for at most 24 hours")
    if not plan.not_before - timedelta(minutes=5) <= now < plan.expires:
        raise PlanError("the run plan is outside its validity window; sign a new one")
    return plan


def encode_plan(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def decode_plan(text: Any) -> dict[str, Any]:
    try:
        found = json.loads(text)
    except (TypeError, ValueError):
        raise PlanError("the message carries no readable run plan") from None
    if not isinstance(found, dict):
        raise PlanError("the run plan must be a JSON object")
    return found


def encode_scaling(scaling: Scaling) -> str:
    return json.dumps({"mean": list(scaling.mean), "std": list(scaling.std)})


def decode_scaling(text: Any, spec: FeatureSpec) -> Scaling:
    try:
        raw = json.loads(text)
        scaling = Scaling(tuple(float(v) for v in raw["mean"]),
                          tuple(float(v) for v in raw["std"]))
    except (TypeError, ValueError, KeyError):
        raise PlanError("the message carries no readable scaling statistics") from None
    if len(scaling.mean) != len(spec.numeric) or len(scaling.std) != len(spec.numeric) \
            or any(s <= 0 for s in scaling.std):
        raise PlanError("the scaling statistics do not fit the plan's numeric features")
    return scaling


def _iso(moment: datetime) -> str:
    return utc_text(moment)


def _parse_time(value: Any) -> datetime:
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise PlanError("plan times must carry a time zone (Z)")
    return moment
