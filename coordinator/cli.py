"""``sov-coordinator``: the network operator's command line (init, serve, nodes, status).

Thin by design: every command calls into coordinator modules. Options, errors and output
follow the shared convention (``consent.commandline``). ``nodes`` and ``status`` read the
registry directly (SQLite file or PostgreSQL DSN), so they work whether or not the server runs.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import click

from consent.commandline import (
    SharedOption,
    ToolGroup,
    emit,
    fail,
    json_logging,
    json_option,
)
from consent.commandline import progress as progress_display
from consent.errors import ConsentError
from consent.passphrase import read_passphrase, shared_passphrase_file
from coordinator.errors import CoordinatorError
from coordinator.home import PASSPHRASE_ENV, CoordinatorHome, init_home, open_home
from coordinator.registry import Registry
from ledger.errors import LedgerError

HOME_ENV = "SOV_COORDINATOR_HOME"


HOME = SharedOption("--home", envvar=HOME_ENV, required=True, type=click.Path(),
                    help="coordinator home folder")
PASSPHRASE_FILE = shared_passphrase_file(PASSPHRASE_ENV, "coordinator passphrase")
home_option = HOME.command
pass_option = PASSPHRASE_FILE.command


def _passphrase(file: Path | None, confirm: bool = False) -> str:
    return read_passphrase(PASSPHRASE_ENV, file=file, what="coordinator passphrase",
                           confirm=confirm)


@click.group(cls=ToolGroup, expected_errors=(CoordinatorError, ConsentError, LedgerError))
@HOME.group
@PASSPHRASE_FILE.group
def main() -> None:
    """Sovereign Fabric coordinator: registry, routing of sealed queries, revocation relay."""


@main.command()
@home_option
@pass_option
@click.option("--name", default="coordinator", show_default=True)
@click.option("--listen", default="127.0.0.1:7600", show_default=True)
@click.option("--registry-dsn", default="", help="postgresql://... to share the registry "
              "between coordinators (default: SQLite in the home)")
@click.option("--hostname", "hostnames", multiple=True, help="extra TLS hostnames")
@click.option("--host-ledger", is_flag=True,
              help="also host the hash ledger (HOME/ledger, served on the same port)")
@json_option
def init(home: str, passphrase_file: Path | None, name: str, listen: str, registry_dsn: str,
         hostnames: tuple[str, ...], host_ledger: bool, as_json: bool) -> None:
    """Create a coordinator home: did:key, TLS CA and certificate, coordinator.toml."""
    if registry_dsn.startswith(("postgresql://", "postgres://")):
        Registry(registry_dsn).close()  # reachable (tables made) before anything is written
    made, identity = init_home(Path(home), _passphrase(passphrase_file, confirm=True), name=name,
                               listen=listen, registry_dsn=registry_dsn,
                               hostnames=list(hostnames) or None, host_ledger=host_ledger)
    Registry(made.registry_target).close()  # creates (or checks) the registry tables now
    lines = [f"coordinator {name} created in {home}",
             f"give nodes and requesters {made.tls_dir / 'ca.pem'}"]
    if made.ledger_path is not None:
        lines.append(f"hosting the ledger in {made.ledger_path}: give auditors "
                     f"{made.ledger_path / 'log-public.json'}; register nodes as authors with "
                     f"'sov-ledger authors add --home {made.ledger_path} ...'")
    emit(as_json, {"name": name, "home": str(home), "did": identity.did,
                   "ca": str(made.tls_dir / "ca.pem"),
                   "ledger": str(made.ledger_path) if made.ledger_path else None},
         "\n".join([*lines, f"DID: {identity.did}"]))


@main.command()
@home_option
@pass_option
@click.option("--listen", default=None, help="override coordinator.toml's listen address")
@click.option("--port-file", type=click.Path(), default=None,
              help="write the bound port here once serving (useful with port 0)")
def serve(home: str, passphrase_file: Path | None, listen: str | None,
          port_file: str | None) -> None:
    """Serve sovereign.v1.Coordinator over TLS until interrupted."""
    from coordinator.server import start

    json_logging()  # JSON lines only, as the node's log
    opened = open_home(Path(home))
    passphrase = _passphrase(passphrase_file)
    running = start(opened, opened.identity(passphrase), passphrase, address=listen)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ledger = running.ledger
    click.echo(f"coordinator {opened.config.name} ({running.service.did}) serving on port "
               f"{running.port}, registry {running.service.registry.backend}"
               + (f", hosting ledger {ledger.log.origin}" if ledger is not None else ""))
    if port_file:
        tmp = Path(port_file).with_suffix(".tmp")
        tmp.write_text(str(running.port))
        tmp.replace(port_file)
    stop.wait()
    running.stop(grace=2.0)


def _registry(home: str) -> tuple[CoordinatorHome, Registry]:
    opened = open_home(Path(home))
    return opened, Registry(opened.registry_target)


@main.command()
@home_option
@click.option("--dataset", default="", help="only nodes offering this dataset")
@click.option("--region", "regions", multiple=True, help="only nodes in this region")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def nodes(home: str, dataset: str, regions: tuple[str, ...], as_json: bool) -> None:
    """Registered nodes with health, last contact and what they offer."""
    _, registry = _registry(home)
    try:
        records = registry.nodes(dataset=dataset, regions=regions)
    finally:
        registry.close()
    if as_json:
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
        return
    if not records:
        click.echo("no nodes registered" + (" that match" if dataset or regions else ""))
        return
    for r in records:
        offers = "; ".join(f"{name} ({', '.join(scopes)})"
                           for name, scopes in sorted(r.registration.datasets.items()))
        click.echo(f"{r.name}  {r.health}  region {r.registration.region}  "
                   f"{r.registration.endpoint}  last contact {r.last_contact or 'never'}")
        click.echo(f"    {r.did}")
        click.echo(f"    offers: {offers or 'nothing'}")
        if r.last_error:
            click.echo(f"    last error: {r.last_error}")


@main.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status(home: str, as_json: bool) -> None:
    """Nodes by health, pending revocation relays, limits and whether the server answers."""
    opened, registry = _registry(home)
    try:
        records = registry.nodes()
        pending = registry.pending_relays()
        backend = registry.backend
    finally:
        registry.close()
    health: dict[str, int] = {}
    for record in records:
        health[record.health] = health.get(record.health, 0) + 1
    config = opened.config
    document = {"name": config.name, "listen": config.listen, "serving": _serving(opened),
                "registry": backend, "nodes": len(records), "health": health,
                "pending_relays": len(pending),
                "pending_relay_nodes": sorted({p.node_did for p in pending}),
                "max_fanout": config.max_fanout,
                "default_deadline_ms": config.default_deadline_ms,
                "max_deadline_ms": config.max_deadline_ms,
                "hosted_ledger": str(opened.ledger_path) if opened.ledger_path else None}
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    click.echo(f"coordinator {config.name} on {config.listen}: "
               f"{'serving' if document['serving'] else 'not answering'}")
    click.echo(f"registry: {backend}; {len(records)} node(s) "
               + (", ".join(f"{n} {h}" for h, n in sorted(health.items())) or ""))
    click.echo(f"pending revocation relays: {len(pending)}")
    if opened.ledger_path is not None:
        click.echo(f"hosting the ledger in {opened.ledger_path}")
    click.echo(f"fan-out limit {config.max_fanout}; deadline {config.default_deadline_ms} ms "
               f"(max {config.max_deadline_ms} ms)")


def _serving(home: CoordinatorHome) -> bool:
    """Whether the server on the configured address answers its health check."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from protos.transport import secure_channel

    channel = secure_channel(home.config.listen, home.ca_pem())
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="sovereign.v1.Coordinator"), timeout=2)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False
    finally:
        channel.close()


@main.command()
@home_option
@pass_option
@click.option("--plan", "plan_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="the run plan, signed by the requester (fl.protocol)")
@click.option("--fleet-listen", default="127.0.0.1:7640", show_default=True,
              help="where the nodes' SuperNodes connect (the fleet gateway)")
@click.option("--strategy", type=click.Choice(["fedavg", "fedprox"]), default="fedavg",
              show_default=True)
@click.option("--rounds", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option("--min-nodes", type=click.IntRange(1, 1000), default=2, show_default=True)
@click.option("--round-timeout", type=float, default=120.0, show_default=True,
              help="seconds a phase waits for the nodes; the silent ones are dropped")
@click.option("--node-wait", type=float, default=60.0, show_default=True)
@click.option("--ledger", "ledger_address", default=None,
              help="ledger service for the model entry (default: this coordinator's own, "
                   "when it hosts the ledger and serves)")
@click.option("--ledger-ca", type=click.Path(exists=True, dir_okay=False), default=None,
              help="the ledger's TLS CA (default: this coordinator's CA)")
@click.option("--secagg", is_flag=True,
              help="SecAgg+: the coordinator sees only the sum of the updates (3+ nodes)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def train(home: str, passphrase_file: Path | None, plan_file: str, fleet_listen: str,
          strategy: str, rounds: int, min_nodes: int, round_timeout: float, node_wait: float,
          ledger_address: str | None, ledger_ca: str | None, secagg: bool,
          as_json: bool) -> None:
    """Train an intent model across the registered nodes (Flower deployment engine) and
    register it, with a signed ledger entry."""
    from coordinator.trainjob import train as run_job
    from ledger.client import LedgerClient

    opened = open_home(Path(home))
    identity = opened.identity(_passphrase(passphrase_file))
    try:
        plan = json.loads(Path(plan_file).read_text())
    except ValueError:
        fail(f"{plan_file} is not JSON; pass the signed plan the requester wrote")
    options = {"strategy": strategy, "rounds": rounds, "min-nodes": min_nodes,
               "round-timeout": round_timeout, "node-wait": node_wait, "secagg": secagg}
    address = ledger_address or (opened.config.listen if opened.ledger_path else None)
    ca = Path(ledger_ca).read_bytes() if ledger_ca else opened.ca_pem()
    ledger = LedgerClient(address, ca) if address else None
    from fl.protocol import PlanError

    display = progress_display(as_json)  # on a terminal only, never under --json

    def progress(entry: dict[str, Any]) -> None:
        if "round" in entry:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in entry.items()
                              if k not in ("round", "nodes") and isinstance(v, float))
            display.advance("training", 1, total=rounds,
                            note=f"round {entry['round']}: {entry['nodes']} nodes"
                            + (f", {shown}" if shown else ""))

    try:
        with display:
            model = run_job(opened, identity, plan, options, fleet_listen=fleet_listen,
                            progress=progress, ledger=ledger)
    except PlanError as exc:
        fail(f"the run plan is refused: {exc}")
    finally:
        if ledger is not None:
            ledger.close()
    if as_json:
        click.echo(json.dumps({"model": model.digest, "run_id": str(model.run_id),
                               "rounds": model.rounds, "nodes": sorted(model.nodes),
                               "artifact": str(model.artifact), "curve": str(model.curve),
                               "receipt": model.receipt}, indent=1))
        return
    click.echo(f"model {model.digest} from run {model.run_id}: {len(model.nodes)} nodes, "
               f"{len(model.rounds)} rounds; curve {model.curve}")
    for entry in model.rounds:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in entry.items()
                          if k not in ("round", "nodes", "examples", "seconds"))
        click.echo(f"  round {entry['round']}: {entry['nodes']} nodes, about "
                   f"{entry.get('examples', 0)} customers (noisy count), "
                   f"{entry.get('seconds', 0):.1f} s" + (f"; {shown}" if shown else ""))
    if model.receipt:
        entry = model.receipt["entry"]
        click.echo(f"ledger: entry {model.receipt['index']} ({model.receipt['entry_hash']}), "
                   f"'model' signed by {entry['author']}, naming "
                   f"{len(entry.get('grant_digests', []))} grant digest(s)")
    else:
        click.echo("ledger: no ledger entry (no ledger address)")


@main.command()
@home_option
@click.option("--grant", "grants", multiple=True,
              help="only models trained on data used under this grant digest")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def models(home: str, grants: tuple[str, ...], as_json: bool) -> None:
    """The model registry: each model, its run, rounds, nodes and ledger entry."""
    from coordinator.models import ModelRegistry

    opened = open_home(Path(home))
    registry = ModelRegistry(opened.path / "models.sqlite")
    found = registry.models()
    if grants:
        keep = set(registry.contributed(grants))
        found = [m for m in found if m["digest"] in keep]
    if as_json:
        click.echo(json.dumps(found, indent=1))
        return
    for m in found:
        click.echo(f"{m['digest'][:16]}  run {m['run_id']}  {len(m['rounds'])} rounds  "
                   f"{len(m['nodes'])} nodes  "
                   + ("ledger entry " + str(m["receipt"]["index"]) if m["receipt"]
                      else "not in the ledger"))
