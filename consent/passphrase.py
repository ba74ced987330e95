"""Where every command-line tool gets the passphrase that unlocks its keys at rest.

One rule for ``sov-node``, ``sov-ledger``, ``sov-query`` and ``consent-wallet``, in this order:

1. ``--passphrase-file PATH``: the file's text without its trailing newline (what a service
   manager's credential file or a secret mount provides);
2. the tool's environment variable (``SOV_NODE_PASSPHRASE``, ``SOV_LEDGER_PASSPHRASE``,
   ``SOV_QUERY_PASSPHRASE``, ``CONSENT_WALLET_PASSPHRASE``), for scripts;
3. a hidden prompt (asked twice when a new key is being created); without a terminal the
   lines are read from standard input quietly (no GetPassWarning, nothing echoed).

A new key's passphrase (``new=True``) must be at least :data:`MIN_LENGTH` characters, for every
tool alike: it alone protects the keys at rest.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from consent.commandline import SharedOption
from consent.errors import ConsentError

F = TypeVar("F", bound=Callable[..., Any])
MIN_LENGTH = 12


class PassphraseError(ConsentError):
    """A passphrase is missing, unreadable or too short for a new key."""


def check_new(passphrase: str, env_var: str) -> str:
    """``passphrase`` if it may protect a new key (at least :data:`MIN_LENGTH` characters)."""
    if len(passphrase) < MIN_LENGTH:
        raise PassphraseError(
            f"the passphrase must be at least {MIN_LENGTH} characters (it alone protects the "
            f"keys at rest): give a longer one with --passphrase-file, ${env_var} or the prompt")
    return passphrase


def read_passphrase(env_var: str, *, file: Path | None = None, what: str = "passphrase",
                    confirm: bool = False, new: bool | None = None) -> str:
    """The passphrase from ``file``, else ``$env_var``, else a hidden prompt for ``what``.

    ``new`` (default: ``confirm``) checks it may protect a new key. An unreadable file or a
    short new passphrase is a :class:`PassphraseError` naming what to do.
    """
    value = _source(env_var, file, what, confirm)
    return check_new(value, env_var) if (confirm if new is None else new) else value


def _source(env_var: str, file: Path | None, what: str, confirm: bool) -> str:
    if file is not None:
        try:
            return Path(file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            raise PassphraseError(f"cannot read the passphrase file {file}: {reason}"
                                  ) from None
    value = os.environ.get(env_var)
    if value:
        return value
    if sys.stdin is sys.__stdin__ and sys.stdin is not None and not sys.stdin.isatty():
        return _read_piped(what, env_var, confirm)
    return str(click.prompt(what.capitalize(), hide_input=True, confirmation_prompt=confirm))


def _read_piped(what: str, env_var: str, confirm: bool) -> str:
    """The passphrase from standard input that is not a terminal (a pipe, a file): the
    prompts on stderr, nothing echoed, and no GetPassWarning (getpass would warn that it
    cannot hide what is typed, while nothing is typed)."""
    answers = []
    for prompt in (what.capitalize(), "Repeat for confirmation")[: 2 if confirm else 1]:
        click.echo(f"{prompt}: ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line:
            click.echo(err=True)
            raise PassphraseError(f"no {what} given: standard input ended; use "
                                  f"--passphrase-file or ${env_var}")
        answers.append(line.rstrip("\r\n"))
    click.echo(err=True)
    if confirm and answers[0] != answers[1]:
        raise PassphraseError("the two passphrases differ; nothing was created")
    return answers[0]


def passphrase_file_option(env_var: str, what: str = "passphrase") -> Callable[[F], F]:
    """The ``--passphrase-file`` option, documented with the tool's environment variable."""
    return click.option(
        "--passphrase-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
        help=f"file holding the {what} (else ${env_var}, else a prompt)")


def shared_passphrase_file(env_var: str, what: str = "passphrase") -> Any:
    """``--passphrase-file`` as a global option (:class:`consent.commandline.SharedOption`):
    accepted before and after the subcommand."""
    return SharedOption("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False),
                        help=f"file holding the {what} (else ${env_var}, else a prompt)")
