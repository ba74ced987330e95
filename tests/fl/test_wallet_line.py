"""The wallet names a training access event, and a scored question, for what it was
(wallet.cli._outcome)."""

from __future__ import annotations

from wallet.cli import _outcome


def test_a_training_event_reads_used_for_training_run() -> None:
    event = {"outcome": "answered", "purpose": "intent-model-training",
             "training_run": "urn:uuid:run-1", "phase": "train", "round": 2, "epsilon": 1.0}
    assert _outcome(event) == "used for training run urn:uuid:run-1 (train, round 2) " \
                              "(epsilon 1 debited)"
    moments = {**event, "phase": "moments", "round": 0, "epsilon": 0.5}
    assert _outcome(moments) == "used for training run urn:uuid:run-1 (moments) " \
                                "(epsilon 0.5 debited)"
    assert _outcome({"outcome": "answered", "epsilon": 0.2}) == "answered (epsilon 0.2 debited)"


def test_a_scored_question_names_the_model() -> None:
    event = {"outcome": "answered", "released": True, "epsilon": 0.5, "model": "ab" * 32}
    assert _outcome(event) == ("answered (epsilon 0.5 debited) (scored with intent model "
                               "abababababababab)")
