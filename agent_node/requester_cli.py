"""``sov-query``: the requester's command line (init, ask).

Thin by design: it builds a query dict and calls ``agent_node.requester.Requester``. The
answer is verified (node signature) before it is printed as a table or ``--json``.
"""

from __future__ import annotations

# First: it sets GRPC_VERBOSITY before anything below imports grpc (consent.commandline).
import consent.commandline  # noqa: F401

# isort: split

import json
from pathlib import Path
from typing import Any

import click

from agent_node.client import NodeError
from agent_node.errors import AgentNodeError
from agent_node.query import parse_filter_text
from agent_node.requester import Answer, Requester
from consent.commandline import (
    SharedOption,
    ToolGroup,
    emit,
    fail,
    json_native,
    json_option,
    out_option,
    read_pem_certificate,
)
from consent.errors import ConsentError
from consent.identity import Identity
from consent.keystore import load_identity, save_identity
from consent.passphrase import read_passphrase, shared_passphrase_file

PASSPHRASE_ENV = "SOV_QUERY_PASSPHRASE"
HOME_ENV = "SOV_QUERY_HOME"


def _passphrase(file: Path | None, confirm: bool = False) -> str:
    return read_passphrase(PASSPHRASE_ENV, file=file, what="requester passphrase",
                           confirm=confirm)


HOME = SharedOption("--home", envvar=HOME_ENV, required=True, type=click.Path(),
                    help="requester home folder")
PASSPHRASE_FILE = shared_passphrase_file(PASSPHRASE_ENV, "requester passphrase")
home_option = HOME.command
pass_option = PASSPHRASE_FILE.command


@click.group(cls=ToolGroup, expected_errors=(NodeError, AgentNodeError, ConsentError))
@HOME.group
@PASSPHRASE_FILE.group
def main() -> None:
    """Ask consent-scoped aggregate questions of an agent node."""


@main.command()
@home_option
@pass_option
@click.option("--profile", type=click.Choice(["intl", "gm"]), default="intl", show_default=True,
              help="crypto profile: intl (Ed25519, NaCl box) or gm (SM2 + SM4 sessions beside "
                   "Ed25519); use the profile of the nodes you ask")
@json_option
def init(home: str, passphrase_file: Path | None, profile: str, as_json: bool) -> None:
    """Create the requester's did:key (and SM2 key in gm) in an encrypted keystore."""
    path = Path(home) / "requester.key"
    if path.exists():
        fail(f"{path} already exists; use another --home")
    identity = Identity.generate(profile)  # type: ignore[arg-type]
    save_identity(path, identity, _passphrase(passphrase_file, confirm=True))
    # The DID last, so scripts can take the last word.
    emit(as_json, {"did": identity.did, "profile": identity.profile},
         f"profile: {identity.profile}\nrequester DID: {identity.did}")


@main.command()
@home_option
@pass_option
@json_option
def whoami(home: str, passphrase_file: Path | None, as_json: bool) -> None:
    """Show this requester's DID (what customers name in their grants) and profile."""
    identity = load_identity(Path(home) / "requester.key", _passphrase(passphrase_file))
    emit(as_json, {"did": identity.did, "profile": identity.profile},
         f"profile: {identity.profile}\nrequester DID: {identity.did}")


@main.command()
@home_option
@pass_option
@click.option("--name", required=True, help="the name customers see, e.g. 'Acme CRM'")
@out_option("write the signed profile here (default: print it)")
@json_native
def profile(home: str, passphrase_file: Path | None, name: str, out: Path | None) -> None:
    """Sign this requester's profile (its display name, under its DID) for customers'
    wallets: 'consent-wallet requesters add FILE' shows the name beside the DID."""
    from consent.profile import issue_profile

    identity = load_identity(Path(home) / "requester.key", _passphrase(passphrase_file))
    text = json.dumps(issue_profile(identity, name), indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    out.write_text(text, encoding="utf-8")
    click.echo(f"wrote {out}: give it to customers with your DID", err=True)


def _table(answer: Answer) -> str:
    """The answer as a table; in dp mode each value with its 95 % interval (or, for a
    quantile, how many rows its rank may be off), then the mode and its parameters."""
    headers = [*answer.group_by, *answer.measures]
    rows = [[*map(str, g["key"]), *(_cell(g, m) for m in answer.measures)]
            for g in answer.groups]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if answer.note:
        lines.append(f"({answer.note})")
    if answer.dp:
        delta = answer.dp.get("delta") or 0
        lines.append(f"(differentially private per customer: epsilon {answer.dp['epsilon']:g}"
                     + (f", delta {delta:g}" if delta else "")
                     + f"; [a, b] = {answer.dp['confidence'] * 100:g} % interval; OpenDP: "
                     + ", ".join(answer.dp.get("mechanisms", [])) + ")")
    else:
        lines.append(f"(threshold mode: groups of at least k={answer.k} customers, exact "
                     "values, no differential privacy)")
    return "\n".join(lines)


def _cell(group: dict[str, Any], measure: str) -> str:
    value = _fmt(group["values"].get(measure))
    accuracy = group.get("accuracy", {}).get(measure)
    if not accuracy:
        return value
    if "ci95" in accuracy:
        low, high = accuracy["ci95"]
        return f"{value} [{_fmt(round(low, 2))}, {_fmt(round(high, 2))}]"
    return f"{value} (rank +/- {_fmt(accuracy.get('rank_error'))})"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return "-" if value is None else str(value)


@main.command()
@home_option
@pass_option
@click.option("--node", required=True, help="node address host:port")
@click.option("--ca", required=True, type=click.Path(dir_okay=False),
              help="the node's TLS CA certificate (PEM)")
@click.option("--dataset", required=True)
@click.option("--measure", "measures", multiple=True, required=True,
              help="count | count:COL | sum:COL | avg:COL | quantile:COL:Q | median:COL")
@click.option("--group-by", "group_by", multiple=True)
@click.option("--filter", "filters", multiple=True, help="e.g. \"age >= 30\"")
@click.option("--purpose", required=True)
@click.option("--grant", "grants", multiple=True, help="grant id(s) to use (default: all)")
@click.option("--epsilon", type=float, default=None,
              help="privacy cost of this answer to each customer it reads (dp mode; within "
                   "the node's bounds, default the node's default_epsilon)")
@click.option("--json", "as_json", is_flag=True, help="print the answer as JSON")
def ask(home: str, passphrase_file: Path | None, node: str, ca: str, dataset: str,
        measures: tuple[str, ...], group_by: tuple[str, ...], filters: tuple[str, ...],
        purpose: str, grants: tuple[str, ...], epsilon: float | None, as_json: bool) -> None:
    """Seal one aggregate query to a node and print its verified answer."""
    ca_pem = read_pem_certificate(ca)  # a usage error before the passphrase
    identity = load_identity(Path(home) / "requester.key", _passphrase(passphrase_file))
    query: dict[str, Any] = {
        "dataset": dataset, "purpose": purpose, "measures": list(measures),
        "group_by": list(group_by), "filters": [parse_filter_text(f) for f in filters],
        "grant_ids": list(grants)}
    if epsilon is not None:
        query["epsilon"] = epsilon
    answer = Requester(identity).ask(node, ca_pem, query)
    if as_json:
        click.echo(json.dumps(answer.document["body"]["answer"], indent=2, sort_keys=True))
    else:
        click.echo(_table(answer))


def _network_cell(group: dict[str, Any], measure: str) -> str:
    value = group["values"].get(measure)
    text = "-" if value is None else (f"{value:.4f}".rstrip("0").rstrip(".")
                                      if isinstance(value, float) else str(value))
    ci = group.get("accuracy", {}).get(measure, {}).get("ci95")
    if ci:
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    return text


def _network_table(combined: dict[str, Any]) -> str:
    """The combined answer as a table (nodes column: how many released the group), then
    every node's outcome and the notes."""
    names = {n["did"]: n["name"] for n in combined["nodes"]}
    headers = [*combined["group_by"], *combined["measures"], "nodes"]
    rows = [[*map(str, g["key"]), *(_network_cell(g, m) for m in combined["measures"]),
             f"{len(g['nodes'])}/{len(combined['answered'])}"
             + ("*" if g["withheld_at"] else "")] for g in combined["groups"]]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    for group in combined["groups"]:
        if group["withheld_at"]:
            lines.append(f"* {'/'.join(map(str, group['key'])) or 'all'}: withheld at "
                         + ", ".join(names[d] for d in group["withheld_at"]))
    for node in combined["nodes"]:
        detail = (f"{node['mode']} mode" + (f", epsilon {node['epsilon']:g}"
                                            if node.get("epsilon") else "")
                  if node["outcome"] == "answered" else node["message"])
        lines.append(f"{node['name']} ({node['region']}): {node['outcome']}; {detail}")
    lines += [f"({note})" for note in combined["notes"]]
    return "\n".join(lines)


@main.command("ask-network")
@home_option
@pass_option
@click.option("--coordinator", required=True, help="the coordinator's address host:port")
@click.option("--ca", required=True, type=click.Path(dir_okay=False),
              help="the coordinator's TLS CA certificate (PEM)")
@click.option("--node-did", "node_dids", multiple=True,
              help="ask only these nodes (default: every node offering the dataset)")
@click.option("--region", "regions", multiple=True,
              help="regions this requester may reach (nodes elsewhere are refused)")
@click.option("--dataset", required=True)
@click.option("--measure", "measures", multiple=True, required=True,
              help="count | count:COL | sum:COL | avg:COL (quantiles: per node only)")
@click.option("--group-by", "group_by", multiple=True)
@click.option("--filter", "filters", multiple=True, help="e.g. \"age >= 30\"")
@click.option("--purpose", required=True)
@click.option("--epsilon", type=float, default=None, help="privacy cost per node (dp mode)")
@click.option("--deadline-ms", type=click.IntRange(0, 600_000), default=0,
              help="how long each node may take (default: the coordinator's)")
@click.option("--json", "as_json", is_flag=True, help="print the combined answer as JSON")
def ask_network_command(home: str, passphrase_file: Path | None, coordinator: str, ca: str,
                        node_dids: tuple[str, ...], regions: tuple[str, ...], dataset: str,
                        measures: tuple[str, ...], group_by: tuple[str, ...],
                        filters: tuple[str, ...], purpose: str, epsilon: float | None,
                        deadline_ms: int, as_json: bool) -> None:
    """Ask every node of a coordinator's network (one sealed envelope each), verify every
    answer and print their combination."""
    from agent_node.network import CoordinatorClient
    from agent_node.requester import ask_network

    ca_pem = read_pem_certificate(ca)  # a usage error before the passphrase
    identity = load_identity(Path(home) / "requester.key", _passphrase(passphrase_file))
    query: dict[str, Any] = {
        "dataset": dataset, "purpose": purpose, "measures": list(measures),
        "group_by": list(group_by), "filters": [parse_filter_text(f) for f in filters]}
    if epsilon is not None:
        query["epsilon"] = epsilon
    with CoordinatorClient(coordinator, ca_pem) as client:
        result = ask_network(identity, client, query, nodes=list(node_dids) or None,
                             regions=list(regions) or None, deadline_ms=deadline_ms)
    if as_json:
        click.echo(json.dumps(result.combined, indent=2, sort_keys=True))
    else:
        click.echo(_network_table(result.combined))
