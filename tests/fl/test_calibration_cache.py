"""DP-SGD noise calibration is remembered across processes (fl.train.CALIBRATION_CACHE): each
ClientApp message is a fresh process, and the RDP search takes seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fl import train as fl_train


def test_a_calibration_is_computed_once_and_read_back(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "noise-calibration.json"
    monkeypatch.setattr(fl_train, "CALIBRATION_CACHE", cache)
    fl_train.noise_multiplier.cache_clear()
    first = fl_train.noise_multiplier(1.0, 1e-3, 0.4, 1)
    stored = json.loads(cache.read_text())
    assert list(stored.values()) == [first]
    # A new process (no in-memory cache) reads it instead of searching again: prove it by
    # making the search impossible.
    fl_train.noise_multiplier.cache_clear()
    monkeypatch.setattr(fl_train, "_calibrate", lambda *a: pytest.fail("searched again"))
    assert fl_train.noise_multiplier(1.0, 1e-3, 0.4, 1) == first
    fl_train.noise_multiplier.cache_clear()
