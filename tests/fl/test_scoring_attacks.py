"""Attacks on local scoring (H9): a model whose numbers are not finite, or whose finite weights
overflow on a customer's clamped input, must neither be installed nor make a scored question
fail or release a non-number for some customers (a data-dependent failure is an oracle: the
question fails exactly when some eligible customer has a given value).

The coordinator is trusted to publish models, but a diverged run or a faulty coordinator can
register one: the node checks what it runs.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent_node import accesslog, scoring
from consent.identity import Identity
from consent.integrity import sign_document
from coordinator.models import model_event
from fl import artifact as artifacts
from fl import models
from fl.features import feature_spec_from_dict
from fl.protocol import parse_plan, plan_document
from fl.scoring import scorer
from fl.train import TrainConfig
from ledger.authority import sign_entry
from ledger.home import init_home as init_ledger
from ledger.home import open_log
from tests.agent_node.conftest import PASSPHRASE, THRESHOLD, in_process_node
from tests.fl import test_scoring as scoring_tests
from tests.fl.conftest import signed_plan
from tests.fl.test_scoring import PURPOSE, first_rows, grant, install

# The published model and its coordinator, the fixtures test_scoring.py makes (by name).
published = scoring_tests.published
coordinator = scoring_tests.coordinator

ROWS: list[dict[str, Any]] = [{"age": 30, "job": "admin."}, {"age": 50, "job": "no-such-job"},
        {"age": 99, "job": None}, {"age": None, "job": "services"}]


def _artifact(kind: str = "logreg") -> dict[str, Any]:
    plan = signed_plan(Identity.generate(), dp=None, kind=kind)
    spec = parse_plan(plan).features
    width, numeric = spec.width, len(spec.numeric)
    state = ({"0.weight": np.zeros((1, width)), "0.bias": np.zeros(1)} if kind == "logreg"
             else {"0.weight": np.zeros((2, width)), "0.bias": np.zeros(2),
                   "2.weight": np.zeros((1, 2)), "2.bias": np.zeros(1)})
    return artifacts.make_artifact(plan, 1, state, {"mean": [50.0] * numeric,
                                                    "std": [10.0] * numeric})


def test_a_weight_beyond_float32_is_refused_not_scored_as_nan() -> None:
    """1e39 is valid canonical JSON (the digest verifies) but inf as float32: 0 * inf on every
    customer without the weighted category gave NaN and failed the question, 1.0 for those
    with it."""
    artifact = _artifact()
    artifact["weights"]["0.weight"]["values"][-1] = 1e39
    artifacts.digest(artifact)  # the attack's precondition: it could be signed and ledgered
    with pytest.raises(artifacts.ArtifactError, match="not finite float32"):
        scorer(artifact)


def test_nan_or_infinity_in_a_model_file_is_one_refusal_at_install(tmp_path: Any) -> None:
    for field, text in (("weights", "NaN"), ("scaling", "Infinity")):
        artifact = _artifact()
        raw = json.dumps(artifact)
        if field == "weights":
            artifact["weights"]["0.bias"]["values"][0] = 12345.5
            raw = json.dumps(artifact).replace("12345.5", text)
        else:
            artifact["scaling"]["mean"][0] = 12345.5
            raw = json.dumps(artifact).replace("12345.5", text)
        with pytest.raises(artifacts.ArtifactError, match="not finite"):
            scorer(json.loads(raw))
        # Through the node's check (the model is judged before the receipt is even read):
        # ModelRefused, a one-sentence error, not a ValueError traceback from hashing.
        with pytest.raises(scoring.ModelRefused, match="not finite"):
            scoring.verify(json.loads(raw), "{}", None, "did:key:x", None)  # type: ignore[arg-type]


def test_finite_weights_that_overflow_on_a_clamped_input_still_score_in_0_1() -> None:
    """A tiny (positive, finite) scaling std and float32-max weights make inf - inf in the
    second layer for a customer at the top of the age range: the score must still be a
    number in [0, 1] for every customer (no NaN, so no failed question)."""
    artifact = _artifact("mlp")
    artifact["scaling"]["std"] = [1e-300]
    first = artifact["weights"]["0.weight"]["values"]
    width = len(first) // 2
    first[0] = first[width] = 3.0e38  # both hidden units read age only
    artifact["weights"]["2.weight"]["values"] = [1.0, -1.0]  # inf - inf
    scores = scorer(artifact).score(ROWS)
    assert np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all(), scores
    bands = [min(int(s * 10), 9) for s in scores]  # what agent_node.scoring stores
    assert all(0 <= b <= 9 for b in bands)


# -- differencing with scored questions (threshold mode: exact answers) ----------------------

def test_threshold_mode_withholds_a_scored_answer_that_differs_by_one_customer(
        tmp_path: Any, bank_rows: list[dict[str, Any]], published: dict[str, Any],
        coordinator: Identity, requester: Identity) -> None:
    """The requester asks the exact sum of scores of every consenting customer, then the same
    with a filter leaving out the one customer whose (first-row) age is unique: the
    difference would be that customer's score. The overlap control must withhold the second
    answer, as for any other column (a scored member is its first row's fingerprint)."""
    parts = in_process_node(tmp_path, bank_rows, "differencing", THRESHOLD)
    install(parts, published, coordinator.did)
    grant(parts, parts.wallets, requester)
    ages = [r["age"] for r in first_rows(parts, parts.wallets)]
    unique = next(a for a in ages if ages.count(a) == 1)
    query = {"dataset": "contacts", "purpose": PURPOSE, "model": published["digest"],
             "measures": ["count", "sum:score"]}
    whole = parts.engine.run(query, requester.did)
    [group] = whole["groups"]
    assert group["values"]["count"] == len(ages)
    less = parts.engine.run({**query, "filters": [
        {"column": "age", "op": "not_in", "value": [unique]}]}, requester.did)
    released = [g for g in less["groups"] if g.get("values")]
    assert released == [], less  # withheld: it differs from the first by one customer
    assert "nearly covered already" in less["note"]
    # The control: leaving out k or more customers is not differencing; that is released.
    young = sorted(ages)[:5]
    fewer = parts.engine.run({**query, "filters": [
        {"column": "age", "op": "not_in", "value": young}]}, requester.did)
    [kept] = fewer["groups"]
    assert kept["values"]["count"] == len(ages) - sum(a in young for a in ages)


# -- a scored question inside a report -------------------------------------------------------

EDUCATION = {"target": {"column": "y", "positive": "yes"},
             "categorical": [["education", ["basic.4y", "high.school"]]],
             "numeric": [["age", 17.0, 100.0]]}


def _published_model(tmp: Path, requester: Identity, coordinator: Identity,
                     features: dict[str, Any] = EDUCATION) -> tuple[str, Path, Path, Any]:
    """A published model with these features (by default reading ``education``, scope
    identity, SM4-encrypted, and age); its weights do not matter here, only what it reads."""
    spec = feature_spec_from_dict(features)
    plan = sign_document(plan_document(f"urn:uuid:{uuid.uuid4()}", requester.did, "contacts",
                                       spec, models.ModelSpec("logreg", 8), TrainConfig(),
                                       stats_epsilon=1.0), requester)
    state = {"0.weight": np.full((1, spec.width), 0.1), "0.bias": np.zeros(1)}
    numeric = len(spec.numeric)
    artifact = artifacts.make_artifact(plan, 11, state, {"mean": [50.0] * numeric,
                                                         "std": [10.0] * numeric})
    digest = artifacts.save(artifact, tmp / "edu.json")
    log_key = init_ledger(tmp / "ledger", origin="ledger.test/edu", passphrase=PASSPHRASE)
    log = open_log(tmp / "ledger", PASSPHRASE)
    try:
        [receipt] = log.append([sign_entry(model_event(digest, "11", [], {
            Identity.generate().did: []}), coordinator)])
    finally:
        log.close()
    (tmp / "edu.receipt.json").write_text(receipt.dumps())
    return digest, tmp / "edu.json", tmp / "edu.receipt.json", log_key


def test_a_scored_question_in_a_report_keeps_the_models_scopes(
        tmp_path: Path, bank_rows: list[dict[str, Any]], requester: Identity,
        coordinator: Identity) -> None:
    """A report shares one snapshot and memoises the consent filter between its questions:
    a plain question on 'transaction' first must not lend its wider set of customers to the
    scored question after it, whose model also reads an 'identity' column."""
    parts = in_process_node(tmp_path, bank_rows, "report-scoring")
    digest, model_file, receipt_file, log_key = _published_model(tmp_path, requester,
                                                                  coordinator)
    scoring.install(parts.vault, parts.home.datamap(), model_file, receipt_file, log_key,
                    coordinator.did)
    both = parts.wallets[:10]
    grant(parts, both, requester, ("transaction", "identity"))
    grant(parts, parts.wallets[10:30], requester)  # transaction only: never scored
    plain = {"dataset": "contacts", "purpose": PURPOSE, "measures": ["count"],
             "epsilon": 0.5}
    scored = {**plain, "model": digest, "measures": ["avg:score"]}
    answers = parts.engine.run_report([plain, scored, plain, scored], requester.did)
    assert all(isinstance(a, dict) for a in answers), answers
    with parts.vault.connection() as conn:
        wanted = {s for w in both for s in parts.vault.sids_for_did(conn, w.did)}
        events = accesslog.operator_view(conn)
    assert parts.engine.models.touched == wanted
    counts = [e["subject_count"] for e in events[-4:]]
    assert counts == [30, 10, 30, 10], counts


def test_a_numeric_feature_on_a_text_column_is_refused_at_install(
        tmp_path: Path, bank_rows: list[dict[str, Any]], requester: Identity,
        coordinator: Identity) -> None:
    """A model (from a run whose nodes typed a column differently) reading the text column
    ``job`` as a number: every scored question would fail on float('admin.'), so it is
    refused at install, in one sentence, nothing installed."""
    parts = in_process_node(tmp_path, bank_rows, "typed-features")
    features = {**EDUCATION, "categorical": [], "numeric": [["job", 0.0, 1.0]]}
    digest, model_file, receipt_file, log_key = _published_model(tmp_path, requester,
                                                                  coordinator, features)
    assert digest
    with pytest.raises(scoring.ModelRefused, match="reads column 'job' as a number"):
        scoring.install(parts.vault, parts.home.datamap(), model_file, receipt_file, log_key,
                        coordinator.did)
    assert scoring.installed(parts.vault) == []
