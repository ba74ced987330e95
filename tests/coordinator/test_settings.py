"""coordinator.toml is read by the helper node.toml uses too (consent.settingsfile): the same
refusals, each one sentence naming the coordinator's file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w

from coordinator.errors import ConfigError
from coordinator.home import load_config


@pytest.mark.parametrize("document, message", [
    ({"coordinator": {"max_fanout": "many"}}, "coordinator.toml key 'max_fanout' must be a int"),
    ({"coordinator": {"fanout": 3}}, "coordinator.toml key 'fanout' is unknown; see the README"),
    ({"max_fanout": 3}, "'max_fanout' is outside the [coordinator] table"),
    ({"coordinator": "x"}, "coordinator.toml key 'coordinator' must be a table"),
    ({"coordinator": {"max_fanout": 0}}, "'max_fanout': must be 1 to 1024"),
])
def test_bad_settings_are_refused(tmp_path: Path, document: dict[str, Any],
                                  message: str) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text(tomli_w.dumps(document))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert message in str(refused.value)


def test_settings_are_read(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text(tomli_w.dumps({"coordinator": {"max_fanout": 5,
                                                   "health_interval_seconds": 2}}))
    config = load_config(path)
    assert (config.max_fanout, config.health_interval_seconds) == (5, 2)
    missing = tmp_path / "none.toml"
    with pytest.raises(ConfigError, match="does not exist: run 'sov-coordinator init'"):
        load_config(missing)
