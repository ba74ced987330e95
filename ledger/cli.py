"""``sov-ledger``: run and operate the hash ledger (an RFC 9162 log with C2SP tree heads).

The log key's passphrase comes from ``--passphrase-file``, else ``SOV_LEDGER_PASSPHRASE``,
else a prompt. Options, errors and output follow the shared convention
(``consent.commandline``).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from consent.commandline import (
    SharedOption,
    ToolGroup,
    emit,
    fail,
    json_native,
    json_option,
    out_option,
)
from consent.errors import ConsentError
from consent.passphrase import read_passphrase, shared_passphrase_file
from ledger.errors import LedgerError

PASSPHRASE_ENV = "SOV_LEDGER_PASSPHRASE"
EMBEDDED_WARNING = (
    "note: anchoring to the embedded in-process EVM (eth-tester); it forgets its chain when "
    "this process exits, so these anchors are for tests and demos only. Pass --chain-rpc URL "
    "(e.g. anvil --state FILE) for anchors that last."
)

HOME = SharedOption("--home", required=True, type=click.Path(path_type=Path),
                    help="The ledger's home folder.")
PASSPHRASE_FILE = shared_passphrase_file(PASSPHRASE_ENV, "log key's passphrase")
home_option = HOME.command
passphrase_option = PASSPHRASE_FILE.command


def _passphrase(path: Path | None, *, confirm: bool = False) -> str:
    return read_passphrase(PASSPHRASE_ENV, file=path, what="log key passphrase", confirm=confirm)


@click.group(cls=ToolGroup, expected_errors=(LedgerError, ConsentError))
@HOME.group
@PASSPHRASE_FILE.group
def main() -> None:
    """Run the hash ledger: init, serve, append, receipts, consistency proofs, anchoring."""


@main.command()
@home_option
@click.option("--origin", default="sovereign-fabric.example/ledger", show_default=True,
              help="The log's name in its tree heads (a schema-less URL).")
@click.option("--profile", type=click.Choice(["intl", "gm"]), default="intl", show_default=True)
@click.option("--hash", "hash_algorithm", type=click.Choice(["sha256", "sm3"]),
              help="Tree hash (default: sha256 for intl, sm3 for gm).")
@click.option("--chain-rpc", help="JSON-RPC URL to anchor to (default: embedded EVM).")
@click.option("--anchor-key", "anchor_key",
              help="'generate' a new anchoring account, or FILE: a v3 keystore or hex key.")
@click.option("--anchor-chain-id", type=int, help="Chain id the anchor key may sign for.")
@passphrase_option
@json_option
def init(
    home: Path,
    origin: str,
    profile: str,
    hash_algorithm: str | None,
    chain_rpc: str | None,
    anchor_key: str | None,
    anchor_chain_id: int | None,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Create a ledger home: log key (encrypted), public key, database, TLS material."""
    from ledger.home import PUBLIC, init_home

    def run() -> None:
        passphrase = _passphrase(passphrase_file, confirm=True)
        public = init_home(
            home,
            origin=origin,
            passphrase=passphrase,
            profile=profile,
            hash_algorithm=hash_algorithm,
            chain_rpc=chain_rpc,
        )
        address = None
        if anchor_key is not None:
            address = _create_anchor_key(home, passphrase, anchor_key, anchor_chain_id, None)
        emit(as_json, {"home": str(home), "origin": public.origin,
                       "hash": public.hash_algorithm, "public_key": str(home / PUBLIC),
                       "anchor_account": address},
             f"ledger home created at {home}\nlog origin: {public.origin} "
             f"({public.hash_algorithm})\ngive auditors this public key file: {home / PUBLIC}"
             + (f"\n{_anchor_text(home, address)}" if address else ""))

    run()


def _create_anchor_key(
    home: Path, passphrase: str, source: str, chain_id: int | None, source_pass: Path | None
) -> str:
    from ledger.home import create_anchor_key

    path = None if source == "generate" else Path(source)
    source_passphrase = _passphrase(source_pass) if source_pass is not None else None
    return str(create_anchor_key(home, passphrase, source=path,
                                 source_passphrase=source_passphrase, chain_id=chain_id))


def _anchor_text(home: Path, address: str) -> str:
    from ledger.home import ANCHOR_KEY

    return (f"anchoring account {address} (key encrypted in {home / ANCHOR_KEY})\n"
            "fund this account on the anchoring chain; anchors are signed with it whenever "
            "a --chain-rpc is used")


@main.command("anchor-key")
@home_option
@click.argument("source")
@click.option("--chain-id", type=int, help="Pin the chain id the key may sign for.")
@click.option("--key-passphrase-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Passphrase of the keystore FILE (default: the ledger's passphrase).")
@passphrase_option
@json_option
def anchor_key(
    home: Path,
    source: str,
    chain_id: int | None,
    key_passphrase_file: Path | None,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Give the ledger its own anchoring account: SOURCE is 'generate' or a key FILE.

    The key is stored encrypted under the ledger's passphrase (v3 keystore, scrypt) and
    signs anchor transactions locally; the chain node never holds it.
    """

    def run() -> None:
        from ledger.home import load_config

        load_config(home)  # a clear error if HOME is not a ledger home
        passphrase = _passphrase(passphrase_file)
        address = _create_anchor_key(home, passphrase, source, chain_id, key_passphrase_file)
        emit(as_json, {"anchor_account": address}, _anchor_text(home, address))

    run()


def _open(home: Path, passphrase_file: Path | None) -> Any:
    from ledger.home import open_log

    return open_log(home, _passphrase(passphrase_file))


def _anchorer(home: Path, chain_rpc: str | None, origin: str, passphrase: str) -> Any:
    from ledger.anchor import anchorer_for_home

    anchorer, embedded = anchorer_for_home(home, chain_rpc, origin, passphrase)
    if embedded:
        click.echo(EMBEDDED_WARNING, err=True)
    return anchorer


@main.command()
@home_option
@click.option("--listen", default="127.0.0.1:50061", show_default=True, help="host:port to bind.")
@click.option("--chain-rpc", help="JSON-RPC URL to anchor to (overrides ledger.json).")
@click.option("--anchor-interval", type=float, help="Seconds between anchors (default: config).")
@passphrase_option
def serve(
    home: Path,
    listen: str,
    chain_rpc: str | None,
    anchor_interval: float | None,
    passphrase_file: Path | None,
) -> None:
    """Serve sovereign.v1.LedgerService over TLS, anchoring on a schedule."""
    from ledger.anchor import AnchorScheduler
    from ledger.home import load_config, open_authors
    from ledger.service import start_server

    def run() -> None:
        from ledger.home import open_log

        passphrase = _passphrase(passphrase_file)
        log = open_log(home, passphrase)
        authors = open_authors(home)
        config = load_config(home)
        anchorer = _anchorer(home, chain_rpc, log.origin, passphrase)
        interval = anchor_interval or config.anchor_interval_seconds
        scheduler = AnchorScheduler(anchorer, log.latest_note, interval)
        try:
            server = start_server(
                log,
                address=listen,
                cert_pem=(home / "tls" / "server.pem").read_bytes(),
                key_pem=(home / "tls" / "server.key").read_bytes(),
                authors=authors,
                anchors=anchorer.store,
            )
        except OSError as exc:
            raise LedgerError(str(exc)) from exc
        scheduler.start()
        host = listen.rsplit(":", 1)[0]
        click.echo(f"ledger {log.origin} serving on {host}:{server.port} (TLS CA: "
                   f"{home / 'tls' / 'ca.pem'}), {log.size} entries, anchoring every "
                   f"{interval:g} s", err=False)
        sys.stdout.flush()
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        signal.signal(signal.SIGINT, lambda *_: stopped.set())
        stopped.wait()
        scheduler.stop()
        server.stop(2)
        log.close()

    run()


@main.command()
@home_option
@click.argument("events_file", type=click.Path(path_type=Path, dir_okay=False))
@out_option("Write one receipt-<index>.json per event to this folder (default: print them).",
            folder=True)
@passphrase_option
@json_native
def append(
    home: Path, events_file: Path, out: Path | None, passphrase_file: Path | None
) -> None:
    """Append the signed events in EVENTS_FILE (a JSON object or a list of them) as one batch.

    The same rules as the service's Append: each event signed by a registered author (or a
    customer's entry endorsed by its node), none already in the log; else nothing is written.
    """
    from ledger.authority import authorize
    from ledger.home import open_authors

    def run() -> None:
        try:
            doc = json.loads(events_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LedgerError(f"cannot read {events_file} as JSON") from exc
        events = doc if isinstance(doc, list) else [doc]
        if not all(isinstance(e, dict) for e in events):
            raise LedgerError(f"{events_file} must hold a JSON object or a list of objects")
        with open_authors(home) as registry:
            entries = authorize(events, registry.current())
        with _open(home, passphrase_file) as log:
            receipts = log.append_new(entries)
        for receipt in receipts:
            _emit(receipt.dumps(), out, f"receipt-{receipt.index}.json")

    run()


@main.command()
@click.argument("events_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--ledger", "address", required=True, help="The ledger service (host:port).")
@click.option("--ca", "ca_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The ledger service's CA certificate.")
@click.option("--log-key", "log_key_path", type=click.Path(path_type=Path, dir_okay=False),
              help="The log's public key (log-public.json) to check the receipts against.")
@out_option("Write one receipt-<index>.json per event to this folder (default: print them).",
            folder=True)
@json_native
def submit(events_file: Path, address: str, ca_path: Path, log_key_path: Path | None,
           out: Path | None) -> None:
    """Send the signed events in EVENTS_FILE to a running ledger service as one batch.

    What a node or the coordinator does, from the command line: each event must be signed
    by a registered author (ledger.authority), else the service refuses the whole batch.
    """
    from ledger.client import LedgerClient
    from ledger.models import LogPublicKey

    def run() -> None:
        try:
            doc = json.loads(events_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LedgerError(f"cannot read {events_file} as JSON") from exc
        events = doc if isinstance(doc, list) else [doc]
        if not all(isinstance(e, dict) for e in events):
            raise LedgerError(f"{events_file} must hold a JSON object or a list of objects")
        log_key = LogPublicKey.load(log_key_path) if log_key_path else None
        with LedgerClient(address, ca_path.read_bytes(), log_key=log_key) as client:
            receipts = client.append_many(events)
        for receipt in receipts:
            _emit(receipt.dumps(), out, f"receipt-{receipt.index}.json")

    run()


def _emit(text: str, out_dir: Path | None, name: str) -> None:
    if out_dir is None:
        click.echo(text, nl=False)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / name).write_text(text, encoding="utf-8")
    click.echo(f"wrote {out_dir / name}")


@main.command()
@home_option
@click.argument("entry_hash")
@click.option("--with-anchors", is_flag=True, help="Attach anchors covering the entry.")
@out_option("Write it to this file (default: print it).")
@passphrase_option
@json_native
def receipt(
    home: Path, entry_hash: str, with_anchors: bool, out: Path | None, passphrase_file: Path | None
) -> None:
    """Export a receipt for ENTRY_HASH (hex leaf hash) against the latest tree head."""
    from ledger.anchor import AnchorStore
    from ledger.home import ANCHORS

    def run() -> None:
        try:
            bytes.fromhex(entry_hash)
        except ValueError as exc:
            raise LedgerError("ENTRY_HASH must be the entry's hex leaf hash") from exc
        anchors = AnchorStore(home / ANCHORS).anchors() if with_anchors else []
        with _open(home, passphrase_file) as log:
            text = log.receipt(entry_hash, anchors=anchors).dumps()
        _write(text, out)

    run()


def _write(text: str, out: Path | None) -> None:
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {out}")


@main.command()
@home_option
@click.argument("old_size", type=int)
@click.argument("new_size", type=int, required=False)
@out_option("Write it to this file (default: print it).")
@passphrase_option
@json_native
def consistency(
    home: Path, old_size: int, new_size: int | None, out: Path | None, passphrase_file: Path | None
) -> None:
    """Export a consistency proof from OLD_SIZE to NEW_SIZE (default: the latest)."""

    def run() -> None:
        with _open(home, passphrase_file) as log:
            proof = log.consistency(old_size, new_size)
        _write(json.dumps(proof.to_json(), indent=2) + "\n", out)

    run()


@main.command()
@home_option
@click.option("--chain-rpc", help="JSON-RPC URL to anchor to (overrides ledger.json).")
@passphrase_option
@json_option
def anchor(home: Path, chain_rpc: str | None, passphrase_file: Path | None,
           as_json: bool) -> None:
    """Anchor the latest tree head now, and retry anything queued."""

    def run() -> None:
        from ledger.home import open_log

        passphrase = _passphrase(passphrase_file)
        with open_log(home, passphrase) as log:
            anchorer = _anchorer(home, chain_rpc, log.origin, passphrase)
            anchorer.store.request(log.latest_note())
            written, errors = anchorer.run_once()
        for a in written if not as_json else []:
            click.echo(f"anchored tree size {a.size} on chain {a.chain_id}: tx {a.tx_hash} "
                       f"(block {a.block_number})")
        pending = anchorer.store.pending()
        if errors:
            fail(f"{errors[0]}; {len(pending)} anchor(s) stay queued for retry")
        if as_json:
            emit(True, {"anchored": [a.size for a in written], "pending": len(pending)}, "")
        elif not written:
            click.echo("nothing to anchor: the latest tree head is anchored already")

    run()


@main.group()
def authors() -> None:
    """The parties allowed to write entries: nodes and the coordinator (ledger.authors)."""


def _author_line(author: Any) -> str:
    state = f"removed {author.removed}" if author.removed else f"since {author.added}"
    return (f"{author.did}  {author.role:<11} {author.name!r}  may write: "
            f"{', '.join(sorted(author.kinds))}  ({state})")


@authors.command("add")
@home_option
@click.argument("did")
@click.option("--name", required=True, help="Who this is, e.g. 'distributor-eu node'.")
@click.option("--role", required=True, type=click.Choice(["node", "coordinator"]))
@click.option("--kind", "kinds", multiple=True,
              type=click.Choice(["grant", "revocation", "access_head", "model", "erasure",
                                 "relay"]),
              help="An entry kind it may write (repeatable). Default: a node its access heads "
                   "and erasure proofs, and it endorses grants and revocations; the "
                   "coordinator its models and relayed revocations.")
@click.option("--json", "as_json", is_flag=True, help="Print the registered author as JSON.")
def authors_add(home: Path, did: str, name: str, role: str, kinds: tuple[str, ...],
                as_json: bool) -> None:
    """Register DID (the party's Ed25519 did:key, e.g. from 'sov-node init') as an author."""
    from ledger.home import open_authors

    def run() -> None:
        with open_authors(home) as registry:
            author = registry.add(did, name, role, list(kinds) or None)
        line = f"registered {_author_line(author)}"
        click.echo(json.dumps(author.to_json()) if as_json else line)

    run()


@authors.command("list")
@home_option
@click.option("--all", "everyone", is_flag=True, help="Also authors removed since.")
@click.option("--json", "as_json", is_flag=True,
              help="Every author, removed ones too, as the file auditors pass to "
                   "'sov-audit verify --authors'.")
def authors_list(home: Path, everyone: bool, as_json: bool) -> None:
    """List the registered authors."""
    from ledger.home import open_authors

    def run() -> None:
        with open_authors(home) as registry:
            if as_json:
                click.echo(json.dumps(registry.to_json(), indent=2))
                return
            shown = [a for a in registry.all() if everyone or a.removed is None]
        for author in shown:
            click.echo(_author_line(author))
        if not shown:
            click.echo("no authors registered: 'sov-ledger authors add' registers one")

    run()


@authors.command("remove")
@home_option
@click.argument("did")
@click.option("--json", "as_json", is_flag=True, help="Print the removed author as JSON.")
def authors_remove(home: Path, did: str, as_json: bool) -> None:
    """Stop accepting entries by DID (its past entries stay in the log, and in the list)."""
    from ledger.home import open_authors

    def run() -> None:
        with open_authors(home) as registry:
            author = registry.remove(did)
        click.echo(json.dumps(author.to_json()) if as_json else f"removed {_author_line(author)}")

    run()
