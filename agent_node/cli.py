"""``sov-node``: the operator's command line (init, sync, subjects bind, serve, log head / push /
receipts).

Thin by design: every command calls into agent_node modules. Errors print one sentence and
exit non-zero, never a traceback; nothing secret or customer-specific is printed.
"""

from __future__ import annotations

# First: it sets GRPC_VERBOSITY before anything below imports grpc (consent.commandline).
import consent.commandline  # noqa: F401

# isort: split

import json
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import click

from agent_node.errors import AgentNodeError
from agent_node.home import PASSPHRASE_ENV, check_listen
from agent_node.node import Node
from consent import grantstate, timespec
from consent.commandline import (
    SharedOption,
    ToolGroup,
    emit,
    fail,
    json_logging,
    json_native,
    json_option,
    out_option,
    progress,
    read_pem_certificate,
)
from consent.did import resolve
from consent.errors import ConsentError
from consent.passphrase import read_passphrase, shared_passphrase_file
from protos.transport import reserve_shared_port

HOME_ENV = "SOV_NODE_HOME"


def _passphrase(file: Path | None, confirm: bool = False) -> str:
    return read_passphrase(PASSPHRASE_ENV, file=file, what="node passphrase", confirm=confirm)


def _node(home: str, passphrase_file: Path | None) -> Node:
    """The node's Python API (agent_node.node.Node) on the unlocked home: every command
    works through it."""
    return Node.open(home, _passphrase(passphrase_file))


HOME = SharedOption("--home", envvar=HOME_ENV, required=True, type=click.Path(),
                    help="node home folder")
PASSPHRASE_FILE = shared_passphrase_file(PASSPHRASE_ENV, "node passphrase")
home_option = HOME.command
pass_option = PASSPHRASE_FILE.command


@click.group(cls=ToolGroup, expected_errors=(AgentNodeError, ConsentError))
@HOME.group
@PASSPHRASE_FILE.group
def main() -> None:
    """Sovereign Fabric agent node."""


@main.command()
@home_option
@pass_option
@click.option("--name", default="node", help="node name shown to wallets")
@click.option("--region", default="unspecified", help="where the data lives, e.g. eu-west")
@click.option("--profile", type=click.Choice(["intl", "gm"]), default="intl")
@click.option("--listen", default="127.0.0.1:7443", show_default=True)
@click.option("--hostname", "hostnames", multiple=True, help="extra TLS hostnames")
@json_option
def init(home: str, passphrase_file: Path | None, name: str, region: str, profile: str, listen: str,
         hostnames: tuple[str, ...], as_json: bool) -> None:
    """Create a node home: keys, TLS certificates, node.toml, encrypted master key."""
    made = Node.init(home, _passphrase(passphrase_file, confirm=True), name=name,
                     region=region, profile=profile, listen=listen,
                     hostnames=list(hostnames) or None).home
    emit(as_json, {"name": name, "home": str(home), "did": made.identity.did,
                   "datamap": str(made.datamap_path), "ca": str(made.tls_dir / "ca.pem")},
         f"node {name} created in {home}\nDID: {made.identity.did}\n"
         f"next: edit {made.datamap_path}, then 'sov-node sync' and 'sov-node serve'")


@main.command(name="identity")
@home_option
@pass_option
@json_native
def identity_command(home: str, passphrase_file: Path | None) -> None:
    """Print the node's signed identity document (JSON) for wallets to pin its DID ahead."""
    click.echo(json.dumps(_node(home, passphrase_file).identity_document(), indent=2))


@main.command(name="rotate-key")
@home_option
@pass_option
@click.option("--json", "as_json", is_flag=True, help="print the rotation statement as JSON")
def rotate_key(home: str, passphrase_file: Path | None, as_json: bool) -> None:
    """Give the node a new did:key, signed over by the old one (wallets follow it)."""
    statement = _node(home, passphrase_file).rotate_key()
    if as_json:
        click.echo(json.dumps(statement, indent=2))
        return
    click.echo(f"rotated {statement['previous']} -> {statement['did']}")
    click.echo("restart 'sov-node serve'; wallets that pinned the old DID follow the signed "
               "rotation in the node's info. If a ledger lists this node as an author, ask its "
               "operator to add the new DID (sov-ledger authors add)")


@main.command(name="sync")
@home_option
@pass_option
@click.option("--dataset", "datasets", multiple=True, help="sync only these datasets")
@click.option("--drop-removed", is_flag=True,
              help="delete the vault rows of datasets no longer in the data map")
@json_option
def sync_command(home: str, passphrase_file: Path | None, datasets: tuple[str, ...],
                 drop_removed: bool, as_json: bool) -> None:
    """Copy mapped source data into the vault (incremental); say which datasets left the
    data map (--drop-removed deletes their rows) and which source rows were malformed."""
    node = _node(home, passphrase_file)
    with progress(as_json) as shown:
        report = node.sync(list(datasets), drop_removed=drop_removed,
                           on_rows=lambda name, n: shown.advance(f"sync {name}", n))
    emit(as_json, report.to_json(),
         lambda: _sync_report(report.datasets, report.removed, report.dropped))


def _sync_report(done: list[Any], removed: dict[str, int], dropped: bool) -> None:
    for stats in done:
        click.echo(f"{stats.dataset}: {stats.inserted} added, {stats.updated} updated, "
                   f"{stats.deleted} removed, {stats.unchanged} unchanged"
                   + (f", {stats.skipped} malformed row(s) left out" if stats.skipped else ""))
        for problem in stats.problems:
            click.echo(f"warning: {stats.dataset}: left out {problem}", err=True)
        if stats.skipped > len(stats.problems):
            click.echo(f"warning: {stats.dataset}: and {stats.skipped - len(stats.problems)} "
                       "more malformed row(s)", err=True)
    for name, rows in sorted(removed.items()):
        if dropped:
            click.echo(f"{name}: no longer in the data map; its {rows} row(s) were deleted")
        else:
            click.echo(f"warning: dataset {name!r} is no longer in the data map but its {rows} "
                       "row(s) stay in the vault (not answered); 'sov-node sync "
                       "--drop-removed' deletes them", err=True)


@main.group()
def subjects() -> None:
    """Bind customers (subject keys) to wallet DIDs."""


@subjects.command()
@home_option
@pass_option
@click.argument("subject_key")
@click.argument("did")
@json_option
def bind(home: str, passphrase_file: Path | None, subject_key: str, did: str,
         as_json: bool) -> None:
    """Bind SUBJECT_KEY (a JSON array for composite keys) to the wallet DID."""
    resolve(did)  # a bad DID is refused before the passphrase is asked
    values = _subject_key(subject_key)
    binding = _node(home, passphrase_file).bind(values, did)
    emit(as_json, binding.to_json(), f"bound subject {binding.subject_ref} to {did}")
    if not binding.in_datasets:
        # The id itself is customer data: never echoed.
        click.echo("warning: no synced dataset has a row of this customer id: check it (a "
                   "typo binds nobody), or run 'sov-node sync' first; 'sov-node subjects "
                   "unbind' undoes the binding", err=True)


@subjects.command()
@home_option
@pass_option
@click.argument("subject_key")
@click.argument("did")
@json_option
def unbind(home: str, passphrase_file: Path | None, subject_key: str, did: str,
           as_json: bool) -> None:
    """Remove the binding of SUBJECT_KEY to the wallet DID (its grants stop covering this
    customer before the node's next answer)."""
    values = _subject_key(subject_key)
    binding = _node(home, passphrase_file).unbind(values, did)
    emit(as_json, binding.to_json(), f"unbound subject {binding.subject_ref} from {did}")


@subjects.command(name="list")
@home_option
@pass_option
@click.option("--json", "as_json", is_flag=True, help="print the bindings as JSON")
def list_command(home: str, passphrase_file: Path | None, as_json: bool) -> None:
    """List the bindings: subject reference, wallet DID, since when (no customer keys)."""
    bindings = _node(home, passphrase_file).bindings()
    if as_json:
        click.echo(json.dumps(bindings, indent=2))
        return
    if not bindings:
        click.echo("no customer is bound to a wallet yet ('sov-node subjects bind')")
    for b in bindings:
        click.echo(f"{b['subject_ref']}  {b['did']}  since {b['bound_at']}")


def _subject_key(text: str) -> list[str]:
    """A plain key, or a composite key written as a JSON array of strings and numbers."""
    if not text.startswith("["):
        return [text]
    try:
        values = json.loads(text)
    except json.JSONDecodeError:
        values = None
    if (not isinstance(values, list) or not values
            or not all(isinstance(v, str | int | float) and not isinstance(v, bool)
                           for v in values)):
        # The key itself is customer data: say what shape is wanted, never echo it.
        raise AgentNodeError("SUBJECT_KEY starting with '[' must be a JSON array of "
                               "strings or numbers, e.g. '[\"acme\", \"1042\"]'")
    return [str(v) for v in values]


@main.command()
@home_option
@pass_option
@click.argument("request_file", type=click.Path(dir_okay=False, path_type=Path))
@out_option("write the signed erasure proof here (JSON, 0600) for the customer")
@json_option
def erase(home: str, passphrase_file: Path | None, request_file: Path, out: Path | None,
          as_json: bool) -> None:
    """Carry out a customer's signed erasure request (ErasureRequest JSON, e.g. sent by
    email): everything this node holds about them is destroyed, and the signed proof kept."""
    from consent.keystore import write_private_file

    try:
        request = json.loads(request_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(f"{request_file} is not a readable JSON erasure request ({exc.__class__.__name__})")
    outcome = _node(home, passphrase_file).erase(request)
    proof = outcome.proof
    if out is not None:
        write_private_file(out, json.dumps(outcome.to_json(), indent=2).encode())
    if as_json:
        emit(True, outcome.to_json(), "")
        return
    rows = sum(int(loc["rows"]) for loc in proof["locations"])
    hits = sum(int(f["hits"]) for f in proof["scan"]["files"])
    click.echo(f"erased {proof['customer']}: {rows} row(s), {len(proof['destroyed_keys'])} "
               f"data key(s) destroyed; scan of {len(proof['scan']['files'])} file(s): "
               f"{hits} hit(s); ledger: {outcome.ledger}")
    sweep = outcome.sweep
    if sweep is not None and "hits" in sweep:
        click.echo(f"sweep of every file whole ({sweep['bytes']} bytes, {sweep['swept_at']}): "
                   f"{sweep['hits']} hit(s)"
                   + "".join(f"; {f['hits']} in {f['path']}" for f in sweep["found_in"]))


@main.command(name="backup")
@home_option
@pass_option
@out_option("the backup file to write (encrypted, 0600), e.g. backups/2026-12-04.sfbk",
            required=True)
@json_option
def backup_command(home: str, passphrase_file: Path | None, out: Path, as_json: bool) -> None:
    """Write an encrypted, authenticated backup of the vault; every customer's rows are
    sealed under a key only this node's keyring holds (an erasure destroys it)."""
    node = _node(home, passphrase_file)
    with progress(as_json) as shown:
        info = node.backup(out, progress=shown.advance)
    emit(as_json, vars(info), f"wrote {info.path} ({info.bytes} bytes): {info.customers} "
         f"customer(s) and {info.wallets} wallet(s) sealed under their backup keys")


@main.command(name="restore")
@home_option
@pass_option
@click.argument("backup_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="do not ask for confirmation (for scripts)")
@json_option
def restore_command(home: str, passphrase_file: Path | None, backup_file: Path, yes: bool,
                    as_json: bool) -> None:
    """Replace the vault's content with a backup this node made (stop 'sov-node serve'
    first). Customers erased since the backup stay erased: their rows are dropped."""
    header = Node.backup_header(backup_file)
    if not yes:
        click.confirm(f"Replace this node's vault with the backup of {header.get('created')}? "
                      "Changes since then are lost", abort=True)
    node = _node(home, passphrase_file)
    with progress(as_json) as shown:
        report = node.restore(backup_file, progress=shown.advance)
    emit(as_json, report.to_json(), lambda: _restore_report(report))


def _restore_report(report: Any) -> None:
    click.echo(f"restored the backup of {report.created}: {report.customers} customer(s) and "
               f"{report.wallets} wallet(s) back")
    if report.erased_subjects or report.erased_wallets:
        click.echo(f"dropped {report.erased_subjects} customer(s) and {report.erased_wallets} "
                   "wallet(s) erased since this backup was taken: their keys are gone, they "
                   "do not come back")
    if report.keyless:
        click.echo(f"warning: {report.keyless} sealed part(s) have no key in the keyring "
                   "(keyring.sqlite) and were left out; a sync brings their rows back from the "
                   "source", err=True)
    click.echo(f"erasure list: {report.erasure_list} erased subject(s), kept across the restore")


@main.group()
def grants() -> None:
    """The consent grants this node holds."""


@grants.command(name="list")
@home_option
@pass_option
@click.option("--status", "only", type=click.Choice(grantstate.AT_NODE),
              default=None, help="only grants in this state")
@click.option("--json", "as_json", is_flag=True, help="print the grants as JSON")
def grants_list(home: str, passphrase_file: Path | None, only: str | None,
                as_json: bool) -> None:
    """List every grant: who granted whom what, for which purpose, its use and its state."""
    listed = _node(home, passphrase_file).grants(only)
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    if not listed:
        click.echo("no grants" + (f" in state {only}" if only else "") + " at this node")
    for g in listed:
        used = f"{g['queries_used']}/{g['max_queries']}" if g["max_queries"] else \
            str(g["queries_used"])
        click.echo(f"{g['grant_id']}  {g['status'].upper()}  {g['subject']} -> "
                   f"{g['requester']}  {g['purpose']} [{','.join(g['scopes'])}]  "
                   f"{used} queries  until {g['expires']}"
                   + (f"  epsilon {g['epsilon_left']:g}/{g['epsilon_budget']:g} left"
                      if g.get("epsilon_budget") is not None else ""))


@main.group()
def models() -> None:
    """Intent models installed for scored questions (verified against the ledger)."""


def _model_line(model: Any) -> str:
    return (f"{model.digest}  dataset {model.dataset}  run {model.run_id}  ledger entry "
            f"{model.ledger_index}  by {model.author}  installed {model.installed_at}")


@models.command(name="install")
@home_option
@pass_option
@click.argument("model_file", type=click.Path(dir_okay=False))
@click.option("--receipt", "receipt_file", required=True, type=click.Path(dir_okay=False),
              help="the ledger receipt of the model's 'model' entry (DIGEST.receipt.json)")
@click.option("--author", required=True,
              help="the DID expected to have signed the model entry (the coordinator's)")
@click.option("--log-key", "log_key", type=click.Path(dir_okay=False), default=None,
              help="the ledger's log-public.json (default: node.toml ledger_log_key, else "
                   "the key pinned on first contact with the ledger)")
@json_option
def models_install(home: str, passphrase_file: Path | None, model_file: str,
                   receipt_file: str, author: str, log_key: str | None, as_json: bool) -> None:
    """Install a model artifact for scored questions once its ledger receipt verifies: the
    log's signature and inclusion proof, a 'model' entry naming this file's digest, signed by
    --author. A changed file or an unknown model is refused; nothing is installed."""
    try:
        resolve(author)
    except ConsentError:
        raise click.BadParameter("must be a did:key, e.g. the coordinator's DID",
                                 param_hint="--author") from None
    model, new = _node(home, passphrase_file).install_model(
        Path(model_file), Path(receipt_file), author, Path(log_key) if log_key else None)
    emit(as_json, {**model.to_json(), "new": new},
         ("installed " if new else "already installed: ") + _model_line(model))


@models.command(name="list")
@home_option
@pass_option
@json_option
def models_list(home: str, passphrase_file: Path | None, as_json: bool) -> None:
    """The installed models: digest, dataset, training run, ledger entry and author."""
    found = _node(home, passphrase_file).models()
    if as_json:
        click.echo(json.dumps([m.to_json() for m in found], indent=2))
        return
    if not found:
        click.echo("no model installed; see 'sov-node models install --help'")
    for model in found:
        click.echo(_model_line(model))


@models.command(name="remove")
@home_option
@pass_option
@click.argument("digest")
@json_option
def models_remove(home: str, passphrase_file: Path | None, digest: str, as_json: bool) -> None:
    """Uninstall a model: questions naming it are refused from now on."""
    model = _node(home, passphrase_file).remove_model(digest)
    emit(as_json, {**model.to_json(), "removed": True}, f"removed {model.digest}")


@main.group(name="log")
def log_group() -> None:
    """The hash-chained access log."""


@log_group.command()
@home_option
@pass_option
@json_native
def head(home: str, passphrase_file: Path | None) -> None:
    """Print the node-signed access-log chain head (JSON, for the ledger)."""
    click.echo(json.dumps(_node(home, passphrase_file).head(), indent=2))


@log_group.command()
@home_option
@pass_option
@timespec.since_option()
@timespec.until_option()
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="the latest N events")
@click.option("--json", "as_json", is_flag=True, help="print the events as JSON")
def events(home: str, passphrase_file: Path | None, since: timespec.TimeBound | None,
           until: timespec.TimeBound | None, limit: int, as_json: bool) -> None:
    """List access events with the grants and customers they used, each checked against the
    event's Merkle roots and the hash chain."""
    timespec.check_range(since, until)  # a usage error before the passphrase is asked
    listed = _node(home, passphrase_file).events(since, until, limit)
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    selection = timespec.describe_range(since, until)
    if selection:
        click.echo(f"events {selection}:")
    for e in listed:
        sets = {True: "sets ok", False: "SETS DO NOT MATCH", None: "v1 event"}[e["sets_match"]]
        chain = "chain ok" if e["chain_ok"] else "CHAIN BROKEN"
        click.echo(f"{e['seq']}  {e.get('time')}  {e.get('requester')}  {e.get('purpose')}  "
                   f"{e.get('outcome')}/{e.get('reason')}  {len(e['grant_ids'])} grant(s), "
                   f"{len(e['subject_refs'])} customer(s)  [{sets}, {chain}]")
    if any(e["sets_match"] is False or not e["chain_ok"] for e in listed):
        fail("some events do not match their sets or the chain: the vault was altered")


@log_group.command()
@home_option
@pass_option
@json_option
def push(home: str, passphrase_file: Path | None, as_json: bool) -> None:
    """Anchor the current access-log head (and every queued one) in the ledger now."""
    result = _node(home, passphrase_file).push()
    if result.error is not None:
        fail(f"the ledger did not take the heads ({result.error}); {result.pending} head(s) "
              "stay queued and are retried by 'sov-node serve' or the next 'sov-node log push'")
    emit(as_json, {"anchored": list(result.anchored), "pending": result.pending},
         f"anchored {len(result.anchored)} head(s), up to sequence {result.anchored[-1]}; "
         "nothing pending" if result.anchored
         else "nothing to anchor: every head is already in the ledger")


@log_group.command()
@home_option
@pass_option
@out_option("folder to write receipt-<sequence>.json files to (for sov-audit verify)",
            required=True, folder=True)
@json_option
def receipts(home: str, passphrase_file: Path | None, out: Path, as_json: bool) -> None:
    """Write the ledger receipts of the anchored access-log heads, one file per head."""
    written, pending = _node(home, passphrase_file).receipts(out)
    emit(as_json, {"out": str(out), "written": written, "pending": pending},
         f"wrote {len(written)} receipt(s) to {out}; {pending} head(s) pending")


@main.command()
@home_option
@pass_option
@click.option("--coordinator", required=True, help="the coordinator's address host:port")
@click.option("--coordinator-ca", required=True, type=click.Path(dir_okay=False),
              help="the coordinator's TLS CA certificate (PEM)")
@click.option("--endpoint", default=None,
              help="where the coordinator reaches this node (default: coordinator_listen)")
@json_option
def register(home: str, passphrase_file: Path | None, coordinator: str, coordinator_ca: str,
             endpoint: str | None, as_json: bool) -> None:
    """Sign a NodeRegistration and register this node with a coordinator (with its key
    rotations, so a name registered under an older key moves to this one)."""
    ca_pem = read_pem_certificate(coordinator_ca, "--coordinator-ca")
    reply = _node(home, passphrase_file).register(coordinator, ca_pem, endpoint=endpoint)
    emit(as_json, {"name": reply.name, "did": reply.did, "coordinator": coordinator,
                   "rotated": bool(reply.rotated)},
         f"registered {reply.name} ({reply.did}) at {coordinator}"
         + (" (key rotated)" if reply.rotated else ""))


@main.command()
@home_option
@pass_option
@click.option("--listen", default=None, help="override node.toml's listen address")
@click.option("--port-file", type=click.Path(), default=None,
              help="write the bound port here once serving (useful with port 0)")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="server processes sharing the port (SO_REUSEPORT) and the vault")
@click.option("--fl", "fl_superlink", default=None, metavar="FLEET_ADDRESS",
              help="also run a Flower SuperNode for federated training, connected to the "
                   "coordinator's fleet address (TLS with node.toml coordinator_ca)")
@click.option("--fl-min-customers", type=click.IntRange(1, 10**9), default=None,
              help="refuse to train on fewer consenting customers (default 20)")
def serve(home: str, passphrase_file: Path | None, listen: str | None, port_file: str | None,
          workers: int, fl_superlink: str | None, fl_min_customers: int | None) -> None:
    """Serve the AgentNode gRPC API over TLS until interrupted (with --fl, a SuperNode too)."""
    json_logging()  # the node's log is JSON lines only, whatever logs (libraries too)
    node = _node(home, passphrase_file)
    supernode = _supernode(node, fl_superlink, passphrase_file, fl_min_customers)
    address = check_listen(listen, "--listen") if listen else node.config.listen
    children: list[int] = []
    reservation = None
    if workers > 1:
        # Fixed before forking (port 0 resolved), so every worker binds the same port; the
        # forks happen before any gRPC or SQLite object exists in this process.
        reservation, address = _reserve(address)
        children = [_fork_worker(node, address) for _ in range(workers - 1)]
    running = node.serve(address, reuse_port=workers > 1)
    if reservation is not None:
        reservation.close()
    stop = _stop_on_signals()
    click.echo(f"serving {node.config.name} ({node.did}) on port {running.port}"
               + (f" with {workers} workers" if workers > 1 else ""))
    if port_file:
        tmp = Path(port_file).with_suffix(".tmp")
        tmp.write_text(str(running.port))
        tmp.replace(port_file)
    if supernode is not None:
        supernode.supervise()  # restarted until the coordinator admits its key
        click.echo(f"SuperNode for federated training connecting to {fl_superlink}")
    stop.wait()
    if supernode is not None:
        # Killed after 5 s: it holds nothing to save (the SuperLink notices it is gone), and
        # serve stops within 10 s of SIGTERM (as docker stop expects, and the tests check).
        supernode.stop(timeout=5.0)
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    running.stop(grace=2.0)
    for pid in children:
        os.waitpid(pid, 0)


def _supernode(node: Node, superlink: str | None, passphrase_file: Path | None,
               min_customers: int | None) -> Any:
    """The SuperNode beside the service (Node.supernode), or None without --fl."""
    if not superlink:
        return None
    if node.config.coordinator_ca and passphrase_file is None \
            and not os.environ.get(PASSPHRASE_ENV):
        # Each ClientApp is a fresh process that opens the vault itself.
        raise click.ClickException(f"--fl needs --passphrase-file or {PASSPHRASE_ENV}: the "
                                   "training processes open the vault themselves")
    return node.supernode(superlink, passphrase_file=passphrase_file,
                          min_customers=min_customers)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def _reserve(address: str) -> tuple[socket.socket, str]:
    try:
        return reserve_shared_port(address)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot listen on {address}: {exc}") from None


def _fork_worker(node: Node, address: str) -> int:
    """A worker process serving ``address`` beside this one until SIGTERM."""
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        running = node.serve(address, primary=False, reuse_port=True)
        _stop_on_signals().wait()
        running.stop(grace=2.0)
    except BaseException as exc:  # a worker must not return into the parent's code
        logging.getLogger("agent_node.cli").error(
            json.dumps({"event": "worker-failed", "error": type(exc).__name__}))
        code = 1
    os._exit(code)
