"""Every documented ``consent-wallet`` example runs, and prints what the documentation shows.

In the spirit of datasette's documentation tests, the examples are parsed out of the fenced
blocks of ``docs/wallet.md`` and ``README.md`` rather than copied here, so a changed flag or
output format fails a test until the documentation is updated too:

1. every ``consent-wallet ...`` line in a ``sh`` / ``console`` block parses against the real
   click command tree (the command exists, every option exists and takes the value given);
2. the ``console`` blocks of ``docs/wallet.md`` are replayed in order as real processes against
   a real agent node and a real ledger (both ``sov-node`` / ``sov-ledger`` processes over TLS),
   the placeholders (``node.distributor.example:7443``, ``distributor-ca.pem``, the example
   DIDs and grant ids, ...) replaced by the real ones, and each command's output must match the
   documented output: DIDs, grant ids, times, numbers and ``...`` stand for any value, the rest
   must appear as written;
3. the Python API block of ``docs/wallet.md`` runs as written against the same node and ledger;
4. the README's wallet walkthrough runs command by command with a fresh wallet.

The few things a page cannot show by itself (a node going down, the CRM asking a question,
the operator anchoring its log) happen in ``HOOKS`` just before the documented command that
depends on them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
import tomli_w
from click.testing import CliRunner

from agent_node.client import NodeError
from agent_node.requester import Requester
from consent.identity import Identity
from protos.tls import create_ca
from tests.wallet.conftest import NODE_PASSPHRASE, LedgerProcess, NodeProcess
from wallet.cli import cli

REPO = Path(__file__).resolve().parent.parent
WALLET_DOC = REPO / "docs" / "wallet.md"
README = REPO / "README.md"
BIN = Path(sys.executable).parent
PASSPHRASE = "documented passphrase"
RESIDENCY = "Customer data stays in Frankfurt, DE; only aggregates leave."
PROMPTS = ("Wallet passphrase:", "Repeat for confirmation:")
QUERY = {"dataset": "orders", "purpose": "quote-generation", "measures": ["count"],
         "group_by": []}

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


# -- reading the documentation ------------------------------------------------------------------


@dataclass
class Example:
    """One ``$ command`` of a console block, with the output printed below it."""

    command: str
    expected: list[str] = field(default_factory=list)


def blocks(path: Path, *languages: str) -> list[tuple[str, str]]:
    return [(lang, body) for lang, body in FENCE.findall(path.read_text(encoding="utf-8"))
            if lang in languages]


def _join_continuations(lines: list[str]) -> Iterator[str]:
    pending = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield pending + line
        pending = ""


def console_examples(body: str) -> list[Example]:
    examples: list[Example] = []
    lines = body.splitlines()
    joined: list[str] = []
    i = 0
    while i < len(lines):  # a continued command line swallows its continuation lines only
        line = lines[i]
        if line.startswith("$ "):
            command = line
            while command.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command.rstrip()[:-1].rstrip() + " " + lines[i].strip()
            joined.append(command)
        else:
            joined.append(line)
        i += 1
    for line in joined:
        if line.startswith("$ "):
            examples.append(Example(line[2:].strip()))
        elif examples:
            examples[-1].expected.append(line)
    return examples


def wallet_command_lines(path: Path) -> list[str]:
    """Every ``consent-wallet`` invocation in the sh / console blocks of ``path``."""
    found = []
    for _lang, body in blocks(path, "sh", "console"):
        lines = [line[2:] if line.startswith("$ ") else line for line in body.splitlines()]
        for line in _join_continuations(lines):
            if line.strip().startswith("consent-wallet"):
                found.append(line.strip())
    return found


def argv(command: str) -> list[str]:
    """Shell words of a documented command, without its comment and ``...`` elisions."""
    words = shlex.split(command, comments=True)
    assert words[0] == "consent-wallet", command
    return [w for w in words[1:] if w != "..."]


def parse(args: list[str]) -> tuple[click.Command, dict[str, object]]:
    """Resolve ``args`` through the click tree exactly as the CLI would, without running it."""
    ctx = cli.make_context("consent-wallet", list(args))
    command: click.Command = cli
    while isinstance(command, click.Group):
        name, sub, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        assert sub is not None and name is not None
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return command, ctx.params


# -- matching documented output ------------------------------------------------------------------

_TOKENS = re.compile(r"""
    (?P<did>did:key:z[1-9A-HJ-NP-Za-km-z]+(?:\.\.\.)?)
  | (?P<uuid>urn:uuid:[0-9a-f-]*(?:\.\.\.)?)
  | (?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d+)?)?Z)
  | (?P<fpr>SHA256:[0-9a-f:]+(?:\.\.\.)?)
  | (?P<url>http://127\.0\.0\.1:\d+/)
  | (?P<elided>\.\.\.)
  | (?P<space>\s+)
  | (?P<number>\d+(?:\.\d+)?)
""", re.VERBOSE)

_PATTERNS = {
    "did": r"did:key:z[1-9A-HJ-NP-Za-km-z]+", "uuid": r"urn:uuid:[0-9a-f-]+",
    "time": r"\d{4}-\d\d-\d\dT[0-9:.]+Z", "fpr": r"SHA256:[0-9a-f:]+",
    "url": r"http://127\.0\.0\.1:\d+/", "elided": r".*?", "space": r"\s+",
    "number": r"\d+(?:\.\d+)?",
}


def output_pattern(expected: str) -> re.Pattern[str]:
    """The documented output as a regex: variable values are wildcards, the words are not."""
    parts, pos = [], 0
    for match in _TOKENS.finditer(expected):
        parts.append(re.escape(expected[pos:match.start()]))
        parts.append(_PATTERNS[match.lastgroup or ""])
        pos = match.end()
    parts.append(re.escape(expected[pos:]))
    return re.compile(r"(?m)^" + "".join(parts), re.DOTALL)


def test_output_pattern_wildcards_values_only() -> None:
    pattern = output_pattern("Grant urn:uuid:0b8c...\n  until 2025-03-02T09:00:00.000000Z "
                             "(23h 12m left)")
    good = "Grant urn:uuid:1234-ab\n  until 2026-01-01T00:00:00.000001Z (1h 2m left)"
    assert pattern.search(good)
    assert not pattern.search(good.replace("until", "from"))
    assert not pattern.search(good.replace(" (1h 2m left)", ""))


# -- 1. every documented command line parses --------------------------------------------------


def _documented_lines() -> list[str]:
    return [*wallet_command_lines(WALLET_DOC), *wallet_command_lines(README)]


def test_the_documents_have_wallet_examples() -> None:
    assert len(wallet_command_lines(WALLET_DOC)) >= 18
    assert len(wallet_command_lines(README)) >= 10


@pytest.mark.parametrize("line", _documented_lines())
def test_documented_command_parses(line: str) -> None:
    command, params = parse(argv(line))
    assert command.callback is not None, line
    # Every documented option is a real one of that command, and was read as given.
    for word in argv(line):
        if word.startswith("--") and word != "--help":
            names = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
            names |= {"--home"}
            assert word.split("=", 1)[0] in names, (line, word)
    assert isinstance(params, dict)


def test_every_command_has_help_and_json() -> None:
    """The issue: every command has --help, and --json for scripts (groups only group)."""
    def walk(group: click.Group, prefix: list[str]) -> Iterator[tuple[list[str], click.Command]]:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from walk(command, [*prefix, name])
            else:
                yield [*prefix, name], command

    leaves = list(walk(cli, []))
    assert len(leaves) >= 14
    for path, command in leaves:
        options = {opt for p in command.params for opt in p.opts}
        assert "--json" in options, path
        assert command.get_short_help_str(), path
        result = CliRunner().invoke(cli, [*path, "--help"], prog_name="consent-wallet")
        assert result.exit_code == 0 and "Usage: consent-wallet" in result.output, path


def test_every_command_is_documented() -> None:
    documented = {tuple(w for w in argv(line) if not w.startswith("-"))[:2]
                  for line in wallet_command_lines(WALLET_DOC)}
    first_words = {d[0] for d in documented if d}
    for name, command in cli.commands.items():
        assert name in first_words, f"`consent-wallet {name}` has no example in docs/wallet.md"
        if isinstance(command, click.Group):
            for sub in command.commands:
                assert any(d[:2] == (name, sub) for d in documented), f"{name} {sub}"


# -- 2-4. the examples run --------------------------------------------------------------------


class Session:
    """A wallet home used through the installed ``consent-wallet``, with the real node and
    ledger, and the map from the documentation's placeholders to the real values."""

    def __init__(self, home: Path, node: NodeProcess, ledger: LedgerProcess, crm: Identity,
                 subs: dict[str, str]) -> None:
        self.home, self.node, self.ledger, self.crm = home, node, ledger, crm
        self.subs = subs
        self.env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home.parent),
                    "CONSENT_WALLET_HOME": str(home), "CONSENT_WALLET_PASSPHRASE": PASSPHRASE,
                    "PYTHONUNBUFFERED": "1"}

    def substitute(self, text: str, *, output: bool = False) -> str:
        """Placeholders -> real values; in printed output only the addresses and the home
        (a file name in a printed hint, like log-public.json, stays as written)."""
        for placeholder in sorted(self.subs, key=len, reverse=True):
            if output and placeholder not in OUTPUT_PLACEHOLDERS:
                continue
            text = text.replace(placeholder, self.subs[placeholder])
        return text

    def run(self, command: str, *, literal: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a documented command (placeholders replaced), or a ``literal`` one as is."""
        words = argv(command if literal else self.substitute(command))
        return subprocess.run([str(BIN / "consent-wallet"), *words], env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=120, check=False, cwd=self.home.parent)

    def ask(self, grant_id: str) -> str:
        """The CRM asks one question under ``grant_id``; "answered" or "refused"."""
        try:
            Requester(self.crm).ask(self.node.address, self.node.ca_pem,
                                    {**QUERY, "grant_ids": [grant_id]})
        except NodeError:
            return "refused"
        return "answered"

    def did(self) -> str:
        proc = self.run("consent-wallet whoami --json", literal=True)
        assert proc.returncode == 0, proc.stdout
        return str(json.loads(proc.stdout)["did"])


def sov(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"SOV_NODE_PASSPHRASE": NODE_PASSPHRASE, "PATH": f"{BIN}:/usr/bin:/bin"}
    return subprocess.run([str(BIN / tool), *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def node_config(node: NodeProcess, **settings: object) -> None:
    """Change [node] settings in node.toml (the operator's way) and restart the node."""
    node.stop()
    path = node.home / "node.toml"
    config = tomllib.loads(path.read_text())
    config["node"].update(settings)
    path.write_text(tomli_w.dumps(config))
    node.start()


def dashboard_example(session: Session, command: str, expected: str) -> None:
    """``dashboard`` serves until Ctrl-C: read its line, fetch the page, then stop it."""
    proc = subprocess.Popen([str(BIN / "consent-wallet"), *argv(session.substitute(command))],
                            env=session.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert output_pattern(expected).search(line), (expected, line)
        url = line.split(" at ", 1)[1].split(" ", 1)[0]
        with urllib.request.urlopen(url + "api/state", timeout=10) as response:
            state = json.load(response)
        assert state["did"] == session.did() and state["grants"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class State:
    grants: dict[str, str] = field(default_factory=dict)  # documented id -> real id


Hook = Callable[[Session, State], None]


def _stop(s: Session, _: State) -> None:
    s.node.stop()


def _start(s: Session, _: State) -> None:
    s.node.start()


def _bind(s: Session, _: State) -> None:
    s.node.bind(s.did())


def _crm_asks(s: Session, state: State) -> None:
    assert s.ask(state.grants[DOC_GRANT]) == "answered"


def _node_anchors_then_crm_asks(s: Session, state: State) -> None:
    """The operator points the node at the ledger and anchors its log; the customer sets the
    ledger; then the CRM asks again under the revoked grant (refused, not yet anchored)."""
    node_config(s.node, ledger_address=s.ledger.address, ledger_ca=str(s.ledger.ca_path),
                ledger_log_key=str(s.ledger.home / "log-public.json"), ledger_push_seconds=3600)
    assert s.run(f"consent-wallet ledger set {s.ledger.address} --ca {s.ledger.ca_path} "
                 f"--log-key {s.ledger.home / 'log-public.json'}", literal=True).returncode == 0
    pushed = sov("sov-node", "log", "push", "--home", str(s.node.home))
    assert pushed.returncode == 0, pushed.stderr
    assert s.ask(state.grants[DOC_GRANT]) == "refused"


OUTPUT_PLACEHOLDERS = {"node.distributor.example:7443", "node.acme.example:7443",
                       "ledger.example:7444", "/home/ana/my-wallet"}
DOC_GRANT = "urn:uuid:0b8c3c0e-6a53-4f43-9e3f-2b1d7b0f4a11"
DOC_PENDING = "urn:uuid:5d1f..."

# (documented command as written, occurrence) -> what happens just before it
HOOKS: dict[tuple[str, int], Hook] = {
    ("consent-wallet grant --node node.distributor.example:7443 --requester "
     "did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH --purpose quote-generation "
     '--purpose-text "quote for the spring order" --scope transaction --ttl 24h '
     "--max-queries 20 --dp-epsilon 1.0", 0): _bind,
    ("consent-wallet grant --node node.distributor.example:7443 ... --ttl 24h", 0): _stop,
    ("consent-wallet sync", 0): _start,
    ("consent-wallet grants", 0): _crm_asks,
    ("consent-wallet access-log", 0): _node_anchors_then_crm_asks,
    ("consent-wallet access-log", 1): _stop,
    ("consent-wallet export --node node.distributor.example:7443 --out my-data.json", 0): _start,
}
# The elided arguments of the "node unreachable" example.
ELIDED_GRANT = ("--requester did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH "
                "--purpose renewal-warning --scope transaction")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[NodeProcess, LedgerProcess]]:
    node = NodeProcess(tmp_path)
    path = node.home / "node.toml"
    config = tomllib.loads(path.read_text())
    config["node"]["residency"] = RESIDENCY
    path.write_text(tomli_w.dumps(config))
    node.start()
    ledger = LedgerProcess(tmp_path)
    ledger.register(node.did)
    try:
        yield node, ledger
    finally:
        ledger.stop()
        node.stop()


def _session(tmp_path: Path, name: str, node: NodeProcess, ledger: LedgerProcess,
             crm: Identity, extra: dict[str, str]) -> Session:
    root = tmp_path / name
    root.mkdir()
    home = root / "my-wallet"
    other_ca = root / "some-other-ca.pem"
    other_ca.write_bytes(create_ca("not the node's CA").cert_pem)
    subs = {
        "/home/ana/my-wallet": str(home), "~/my-wallet": str(home),
        "log-public.json": str(ledger.home / "log-public.json"),
        "ledger-ca.pem": str(ledger.ca_path), "ledger.example:7444": ledger.address,
        "some-other-ca.pem": str(other_ca), **extra,
    }
    return Session(home, node, ledger, crm, subs)


def test_wallet_walkthrough_runs_as_documented(
    world: tuple[NodeProcess, LedgerProcess], tmp_path: Path
) -> None:
    node, ledger = world
    crm = Identity.generate()
    session = _session(tmp_path, "doc", node, ledger, crm, {
        "node.distributor.example:7443": node.address, "distributor-ca.pem": str(node.ca_path),
        "did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH": crm.did,
    })
    state = State()
    seen: dict[str, int] = {}
    examples = [e for lang, body in blocks(WALLET_DOC, "console") for e in console_examples(body)]
    assert len(examples) >= 18
    for example in examples:
        occurrence = seen.get(example.command, 0)
        seen[example.command] = occurrence + 1
        hook = HOOKS.get((example.command, occurrence))
        if hook is not None:
            hook(session, state)
        expected = "\n".join(line for line in example.expected
                             if line.strip() not in PROMPTS)
        expected = session.substitute(expected, output=True)
        if example.command.split()[:2] == ["consent-wallet", "dashboard"]:
            dashboard_example(session, example.command, expected)
            continue
        command = example.command.replace(" ... ", f" {ELIDED_GRANT} ")
        proc = session.run(command)
        failing = any(line.startswith("error:") for line in example.expected)
        assert (proc.returncode != 0) == failing, (example.command, proc.stdout)
        assert "Traceback" not in proc.stdout
        if expected.strip():
            assert output_pattern(expected.strip()).search(proc.stdout), (
                f"`{example.command}` printed:\n{proc.stdout}\nthe docs show:\n{expected}")
        # The first grant id the docs show stands for the real one from then on.
        documented = re.match(r"Grant (urn:uuid:\S+)", "\n".join(example.expected))
        real = re.search(r"^Grant (urn:uuid:[0-9a-f-]+)", proc.stdout, re.MULTILINE)
        if documented and real:
            state.grants[documented.group(1)] = real.group(1)
            session.subs[documented.group(1)] = real.group(1)
    assert set(state.grants) == {DOC_GRANT, DOC_PENDING}

    # The Python API block, as written, against the same node and ledger.
    [code] = [body for lang, body in blocks(WALLET_DOC, "python")]
    assert "Wallet.open" in code
    printed: list[str] = []
    namespace = {"passphrase": PASSPHRASE, "crm_did": crm.did,
                 "print": lambda *a: printed.append(" ".join(map(str, a)))}
    cwd = Path.cwd()
    os.chdir(session.home.parent)
    try:
        exec(compile(session.substitute(code), str(WALLET_DOC), "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert any(line.startswith("SHA256:") for line in printed)
    assert any(line.endswith(" active 20") for line in printed)
    # Commands and the Python block run in the wallet's parent folder: my-data.json is there.
    exported = json.loads((session.home.parent / "my-data.json").read_text())
    assert exported["format"] == "sovereign-fabric-export" and exported["subject"] == session.did()


def test_readme_wallet_walkthrough_runs(
    world: tuple[NodeProcess, LedgerProcess], tmp_path: Path
) -> None:
    node, ledger = world
    crm = Identity.generate()
    session = _session(tmp_path, "readme", node, ledger, crm, {
        "node.acme.example:7443": node.address, "acme-ca.pem": str(node.ca_path),
        "did:key:z6Mk...": crm.did,
    })
    lines = [line for lang, body in blocks(README, "sh") for line in
             _join_continuations(body.splitlines()) if line.startswith("consent-wallet")]
    assert [argv(line)[0] for line in lines][:3] == ["init", "whoami", "nodes"]
    for line in lines:
        if argv(line)[0] == "dashboard":
            dashboard_example(session, line, "Dashboard at http://127.0.0.1:1/ (Ctrl-C to stop)")
            continue
        proc = session.run(line)
        assert proc.returncode == 0, (line, proc.stdout)
        if argv(line)[0] == "whoami":
            session.node.bind(session.did())
        granted = re.search(r"^Grant (urn:uuid:[0-9a-f-]+)", proc.stdout, re.MULTILINE)
        if granted:
            session.subs["urn:uuid:..."] = granted.group(1)
            assert session.ask(granted.group(1)) == "answered"
        if argv(line)[0] == "access-log":
            assert "answered" in proc.stdout and "[verified" in proc.stdout
    # The walkthrough's revoke reached the node: the node itself reports the grant revoked.
    listed = json.loads(session.run("consent-wallet grants --json", literal=True).stdout)
    assert [(g["id"], g["status"], g["status_fresh"]) for g in listed] == [
        (session.subs["urn:uuid:..."], "revoked", True)]
    assert (session.home.parent / "my-data.json").exists()
