"""Reading a tool's TOML settings file into its settings dataclass (node.toml, coordinator.toml).

Every tool keeps its settings under one table (``[node]``, ``[coordinator]``) of a TOML v1.0
file, with a dataclass of defaults. The rules are the same everywhere, so they live here once:
a setting outside the table or an unknown key is refused (it would otherwise be ignored
silently: an operator would believe a ledger or a limit is configured that is not), and a
value must have its default's type (an integer is accepted where a float is expected). Each
problem is one sentence naming the file's key, raised as the caller's own error class.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["load_settings"]

T = TypeVar("T")


def load_settings(path: Path, table: str, settings: type[T], error: type[Exception], *,
                  missing: str, unknown: str) -> T:
    """``settings`` built from the ``[table]`` of the TOML file at ``path`` (not validated).

    ``error`` is raised with one sentence for every problem; ``missing`` says what to do when
    the file does not exist, ``unknown`` where the keys are documented.
    """
    assert is_dataclass(settings)
    name = Path(path).name
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path} does not exist: {missing}") from None
    except UnicodeDecodeError:
        raise error(f"{path} is not UTF-8 text; write it as TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path} is not valid TOML: {exc}") from None
    stray = sorted(set(raw) - {table})
    if stray:
        raise error(f"{name} key {stray[0]!r} is outside the [{table}] table; every setting "
                    f"belongs under [{table}]")
    values = raw.get(table, {})
    if not isinstance(values, dict):
        raise error(f"{name} key {table!r} must be a table")
    known = {f.name for f in fields(settings)}
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise error(f"{name} key {key!r} is unknown; {unknown}")
        default = getattr(settings, key)
        if type(value) is not type(default) and not (isinstance(default, float)
                                                     and type(value) is int):
            raise error(f"{name} key {key!r} must be a {type(default).__name__}")
        checked[key] = value
    return settings(**checked)
