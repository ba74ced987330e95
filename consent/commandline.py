"""The one command-line convention every Sovereign Fabric tool follows (``sov-node``,
``sov-query``, ``consent-wallet``, ``sov-ledger``, ``sov-audit``, ``sov-coordinator``).

- ``-h`` / ``--help`` on every command, ``--version`` on every tool;
- options go after the subcommand; the global ones (``--home``, ``--passphrase-file``) are
  accepted before it too (:class:`SharedOption`), the one written last wins;
- ``--json`` on every command that prints data (:func:`json_option`, :func:`emit`);
- output paths are ``--out`` (``-o`` for short) (:func:`out_option`);
- one error style: ``error: <one sentence>`` on stderr, no traceback; exit status 2 for a
  usage error (a bad or missing option, a bad value), 1 for a failure (:func:`fail`);
- gRPC's C core is told to log errors only, and no Python warning reaches the terminal.

Times (``--since`` / ``--until``) are :mod:`consent.timespec`'s; passphrases (where they come
from, how long a new one must be, a quiet prompt without a terminal) :mod:`consent.passphrase`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

# gRPC's C core reads GRPC_VERBOSITY once, when grpc is first imported: set here, at import,
# so that a tool importing this module before grpc prints errors only (as one sentence, ours).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

EXIT_FAILURE = 1
EXIT_USAGE = 2
DISTRIBUTION = "sovereign-fabric"
HELP_OPTIONS = ["-h", "--help"]
_META = "sovereign.global"

F = TypeVar("F", bound=Callable[..., Any])


class Failure(click.ClickException):
    """A command could not do its work: ``error: <message>``, exit status 1."""

    exit_code = EXIT_FAILURE


def fail(message: str) -> NoReturn:
    """Stop the command with a failure (exit 1) saying ``message``."""
    raise Failure(message)


def usage_error(message: str) -> NoReturn:
    """Stop the command with a usage error (exit 2) saying ``message``."""
    raise click.UsageError(message)


def sentence(text: object) -> str:
    """One line from an exception or a message: whitespace folded, no trailing period, and a
    plain capitalised first word in lower case (``No such option`` -> ``no such option``;
    names such as ``DID``, ``SM2`` or ``--ttl`` are kept as written)."""
    line = " ".join(str(text).split()) or "unknown error"
    first = line.split(" ", 1)[0]
    if first[:1].isupper() and first[1:].islower() and first.isalpha():
        line = line[0].lower() + line[1:]
    return line[:-1] if line.endswith(".") and not line.endswith("..") else line


def os_error_sentence(exc: OSError) -> str:
    """``cannot access FILE: REASON`` for an OSError from a file operation."""
    if exc.filename is not None and exc.strerror:
        return f"cannot access {exc.filename}: {exc.strerror.lower()}"
    return sentence(exc.strerror or exc)


class ToolGroup(click.Group):
    """The root group of a tool (and every group under it): ``-h``, ``--version``, the error
    style, and the translation of the tool's ``expected_errors`` into one sentence.

    Use as ``@click.group(cls=ToolGroup, expected_errors=(MyError,))``; subgroups made with
    ``@group.group()`` are ToolGroups too.
    """

    group_class = type

    def __init__(self, *args: Any, expected_errors: Sequence[type[BaseException]] = (),
                 **kwargs: Any) -> None:
        settings = kwargs.setdefault("context_settings", {})
        settings.setdefault("help_option_names", HELP_OPTIONS)
        super().__init__(*args, **kwargs)
        self.expected_errors = tuple(expected_errors)
        self._shared: list[click.Option] = [p for p in self.params
                                            if isinstance(p, GlobalOption) and p.copy]
        self._versioned = False

    # -- global options -----------------------------------------------------------------------

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        super().add_command(cmd, name)
        # Declared on every command, not only inherited from the group's context: click
        # caches a command's help option the first time it builds one, whatever its context.
        cmd.context_settings.setdefault("help_option_names", HELP_OPTIONS)
        _share(self._shared, cmd)

    # -- errors ---------------------------------------------------------------------------------

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except OSError as exc:
            raise Failure(os_error_sentence(exc)) from None
        except Exception as exc:
            if isinstance(exc, self.expected_errors):
                raise Failure(sentence(exc)) from None
            raise

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        quiet_internals()
        self._add_version(prog_name)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            _show(exc.format_message(), exc.ctx)
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            _show(exc.format_message())
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt, EOFError):
            click.echo("error: stopped before finishing; nothing more was done", err=True)
            sys.exit(EXIT_FAILURE)
        sys.exit(result if isinstance(result, int) else 0)

    def _add_version(self, prog_name: str | None) -> None:
        if self._versioned:
            return
        self._versioned = True
        if any("--version" in p.opts for p in self.params if isinstance(p, click.Option)):
            return
        self.params.append(click.Option(
            ["--version"], is_flag=True, expose_value=False, is_eager=True,
            help="Show the version and exit.",
            callback=lambda ctx, _p, value: _print_version(ctx, value)))


def _print_version(ctx: click.Context, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"{ctx.find_root().info_name} {version()}")
    ctx.exit(0)


def version() -> str:
    """The installed version of the sovereign-fabric distribution."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _show(message: str, ctx: click.Context | None = None) -> None:
    text = f"error: {sentence(message)}"
    if ctx is not None:
        text += f" (see '{ctx.command_path} --help')"
    click.echo(text, err=True)


def quiet_internals() -> None:
    """No C-core log lines (the tools say what went wrong in one sentence) and no Python
    warnings from libraries on the terminal."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if not sys.warnoptions:
        warnings.simplefilter("ignore")


# -- global options (accepted before and after the subcommand) ----------------------------------


class GlobalOption(click.Option):
    """An option of a tool's root group, stored where every command of the tool finds it
    (:func:`global_value`). With ``copy`` every command accepts it too."""

    def __init__(self, *args: Any, copy: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("expose_value", False)
        kwargs["callback"] = _store
        super().__init__(*args, **kwargs)
        self.copy = copy


def _store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    found = ctx.meta.setdefault(_META, {})
    if value is not None or param.name not in found:
        found[param.name] = value
    return value


def _share(options: Iterable[click.Option], cmd: click.Command) -> None:
    """Give ``cmd`` (and, if it is a group, its commands) a copy of each option."""
    options = list(options)
    if not options:
        return
    names = {p.name for p in cmd.params}
    for option in options:
        if option.name in names:
            continue
        cmd.params.append(GlobalOption(
            [*option.opts, *option.secondary_opts], type=option.type, help=option.help,
            default=None, metavar=option.metavar))
    if isinstance(cmd, ToolGroup):
        cmd._shared = [*cmd._shared, *(o for o in options if o not in cmd._shared)]
        for sub in cmd.commands.values():
            _share(options, sub)


def global_value(name: str, default: Any = None) -> Any:
    """The value of the global option ``name``, from wherever it was written."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return default
    value = ctx.meta.get(_META, {}).get(name)
    return default if value is None else value


class SharedOption:
    """An option both a tool's root group and its commands declare, e.g. ``--home``.

    ``@HOME.group`` goes on the root group (reading ``envvar``), ``@HOME.command`` on each
    command that uses it (the value is passed to the command as usual). Written after the
    subcommand it wins; written before, it is the command's default.
    """

    def __init__(self, name: str, *, envvar: str | None = None, help: str,
                 type: Any = None, required: bool = False, default: Any = None) -> None:
        self.name = name
        self.envvar = envvar
        self.help = help + (f" (or ${envvar})" if envvar else "")
        self.type = type
        self.required = required
        self.default = default
        self.key = name.lstrip("-").replace("-", "_")

    def group(self, f: F) -> F:
        return click.option(self.name, self.key, cls=GlobalOption, envvar=self.envvar,
                            type=self.type, help=self.help, default=self.default)(f)

    def command(self, f: F) -> F:
        return click.option(self.name, self.key, type=self.type, help=self.help,
                            default=None, callback=self._resolve)(f)

    def _resolve(self, ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        """The value written after the subcommand, else before it (or from the variable)."""
        if value is None:
            value = global_value(self.key)
        if value is None and self.required and not ctx.resilient_parsing:
            raise click.MissingParameter(ctx=ctx, param=param)
        return value


# -- files a command reads ------------------------------------------------------------------------


def read_pem_certificate(path: str | Path, option: str = "--ca") -> bytes:
    """The PEM certificates in a ``--ca`` file, checked before anything dials with them
    (gRPC's C core would print its own lines and the call would fail as 'unreachable'); a
    usage error naming ``option`` otherwise."""
    from cryptography import x509

    try:
        pem = Path(path).read_bytes()
        x509.load_pem_x509_certificates(pem)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {(exc.strerror or '').lower()}",
                                 ctx=click.get_current_context(silent=True),
                                 param_hint=f"'{option}'") from None
    except ValueError:
        raise click.BadParameter(f"{path} holds no PEM certificate: give the CA certificate "
                                 "the operator published (its home's tls/ca.pem)",
                                 ctx=click.get_current_context(silent=True),
                                 param_hint=f"'{option}'") from None
    return pem


# -- output -------------------------------------------------------------------------------------


def json_option(f: F) -> F:
    """``--json``: print the command's data as JSON (and nothing else on stdout)."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the result as JSON (for scripts).")(f)


def json_native(f: F) -> F:
    """``--json`` on a command whose output is JSON already: accepted, so ``--json`` works
    on every command that prints data."""
    return click.option("--json", is_flag=True, expose_value=False,
                        help="Accepted for scripts: this command prints JSON already.")(f)


def emit(as_json: bool, data: Any, human: Callable[[], object] | str) -> None:
    """Print ``data`` as indented JSON with ``--json``, else the human form (a callable or a
    text)."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    elif callable(human):
        human()
    else:
        click.echo(human)


def out_option(help: str, *, required: bool = False, folder: bool = False) -> Callable[[F], F]:
    """``--out`` / ``-o``: where a command writes its file (or, with ``folder``, its files)."""
    kind = click.Path(path_type=Path, file_okay=not folder, dir_okay=folder)
    return click.option("-o", "--out", "out", type=kind, required=required, help=help)


# -- logs of long-running services ---------------------------------------------------------------


class JsonLines(logging.Formatter):
    """Every log record as one JSON object on one line: a message that is a JSON object
    already (the services' own events) is kept as written; anything else, such as a
    library's plain text, becomes ``{"event": "log", "level", "logger", "message"}`` (with
    ``"error"`` naming an exception's type, never its traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if message.startswith("{"):
            try:
                if isinstance(json.loads(message), dict):
                    return message
            except ValueError:
                pass
        line: dict[str, Any] = {"event": "log", "level": record.levelname.lower(),
                                "logger": record.name, "message": " ".join(message.split())}
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__
        return json.dumps(line, sort_keys=True)


def json_logging(level: int = logging.INFO) -> None:
    """Send every log record of this process to stderr as JSON lines (:class:`JsonLines`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)


# -- progress -----------------------------------------------------------------------------------


def interactive(as_json: bool = False) -> bool:
    """Whether progress may be drawn: stderr is a terminal and the output is not JSON."""
    return not as_json and sys.stderr.isatty()


class Progress:
    """Progress of long work on stderr (rich), one line per task: a bar when the total is
    known, else a count and the rate. Drawn only when :func:`interactive`; otherwise every
    call does nothing, so scripts, logs and ``--json`` output see none of it."""

    def __init__(self, enabled: bool) -> None:
        self._rich: Any = None
        self._tasks: dict[str, Any] = {}
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TaskProgressColumn(), TimeElapsedColumn(),
                console=Console(stderr=True), transient=False)

    def advance(self, label: str, n: int = 1, total: int | None = None,
                note: str = "") -> None:
        """Count ``n`` more units of the task ``label`` (created on first use); ``note``
        (e.g. the last round's metrics) is shown after the label."""
        if self._rich is None:
            return
        if label not in self._tasks:
            self._tasks[label] = self._rich.add_task(label, total=total)
        description = f"{label}: {note}" if note else label
        self._rich.update(self._tasks[label], advance=n, description=description)

    def __enter__(self) -> Progress:
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()


def progress(as_json: bool = False) -> Progress:
    """A :class:`Progress` display, quiet under ``--json`` or without a terminal."""
    return Progress(interactive(as_json))


__all__ = [
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "HELP_OPTIONS",
    "Failure",
    "GlobalOption",
    "JsonLines",
    "Progress",
    "SharedOption",
    "ToolGroup",
    "emit",
    "fail",
    "global_value",
    "interactive",
    "json_logging",
    "json_native",
    "json_option",
    "os_error_sentence",
    "out_option",
    "progress",
    "quiet_internals",
    "read_pem_certificate",
    "sentence",
    "usage_error",
    "version",
]
