"""Where every command-line tool gets the passphrase that unlocks its keys at rest.

One rule for ``sov-node``, ``sov-ledger``, ``sov-query`` and ``consent-wallet``, in this order:

1. ``--passphrase-file PATH``: the file's text without its trailing newline (what a service
   manager's credential file or a secret mount provides);
2. the tool's environment variable (``SOV_NODE_PASSPHRASE``, ``SOV_LEDGER_PASSPHRASE``,
   ``SOV_QUERY_PASSPHRASE``, ``CONSENT_WALLET_PASSPHRASE``), for scripts;
3. a hidden prompt (asked twice when a new key is being created).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def read_passphrase(env_var: str, *, file: Path | None = None, what: str = "passphrase",
                    confirm: bool = False) -> str:
    """The passphrase from ``file``, else ``$env_var``, else a hidden prompt for ``what``.

    An unreadable file is a ``click.ClickException`` naming the file and the reason.
    """
    if file is not None:
        try:
            return Path(file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            raise click.ClickException(f"cannot read the passphrase file {file}: {reason}"
                                       ) from None
    value = os.environ.get(env_var)
    if value:
        return value
    return str(click.prompt(what.capitalize(), hide_input=True, confirmation_prompt=confirm))


def passphrase_file_option(env_var: str, what: str = "passphrase") -> Callable[[F], F]:
    """The ``--passphrase-file`` option, documented with the tool's environment variable."""
    return click.option(
        "--passphrase-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
        help=f"file holding the {what} (else ${env_var}, else a prompt)")
