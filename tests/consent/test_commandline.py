"""consent.commandline's pieces that the convention test does not reach through a command:
the one-sentence rule, the JSON-lines log formatter and the quiet progress display."""

from __future__ import annotations

import io
import json
import logging

import pytest

from consent.commandline import JsonLines, Progress, json_logging, progress, sentence


@pytest.mark.parametrize(("text", "said"), [
    ("No such option: --x.", "no such option: --x"),
    ("DID did:key:z6Mk... is unknown", "DID did:key:z6Mk... is unknown"),
    ("--ttl must be at most 72h", "--ttl must be at most 72h"),
    ("the node\nrefused  it", "the node refused it"),
    ("SM2 key missing", "SM2 key missing"),
    ("", "unknown error"),
])
def test_sentence(text: str, said: str) -> None:
    assert sentence(text) == said


def _log_to(stream: io.StringIO, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines())
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_every_log_line_is_one_json_object() -> None:
    """The node's log mixed its JSON events with libraries' plain text."""
    stream = io.StringIO()
    logger = _log_to(stream, "test.jsonlines")
    logger.info(json.dumps({"event": "query", "outcome": "answered"}))
    logger.warning("Connection to %s failed\n  retrying", "ledger")
    try:
        raise ConnectionError("secret detail")
    except ConnectionError:
        logger.exception("push failed")
    logger.info("{not json")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0] == {"event": "query", "outcome": "answered"}  # kept as written
    assert lines[1] == {"event": "log", "level": "warning", "logger": "test.jsonlines",
                        "message": "Connection to ledger failed retrying"}
    assert lines[2]["error"] == "ConnectionError" and "Traceback" not in stream.getvalue()
    assert lines[3]["message"] == "{not json"


def test_json_logging_takes_over_the_root_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    try:
        json_logging()
        logging.getLogger("some.library").info("plain text from a library")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert json.loads(stream.getvalue()) == {
        "event": "log", "level": "info", "logger": "some.library",
        "message": "plain text from a library"}


def test_progress_is_quiet_without_a_terminal_or_under_json() -> None:
    # pytest's captured stderr is no terminal; --json is never drawn on either.
    assert progress(as_json=False)._rich is None
    assert progress(as_json=True)._rich is None
    with Progress(False) as shown:
        shown.advance("sync orders", 1000)  # a no-op, not an error


def test_progress_draws_counts_and_the_last_note(capsys: pytest.CaptureFixture[str]) -> None:
    """Drawn (forced here; on a terminal in use): the task, its count of the total and the
    latest note, e.g. a training round's metrics."""
    with Progress(True) as shown:
        shown.advance("training", 1, total=3, note="round 1: 3 nodes, auc 0.81")
        shown.advance("training", 1, total=3, note="round 2: 3 nodes, auc 0.83")
    drawn = capsys.readouterr().err
    assert "training: round 2: 3 nodes, auc 0.83" in drawn and "2/3" in drawn
