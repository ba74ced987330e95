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
    sentence,
    usage_error,
)
from consent.errors import ConsentError
from consent.identity import Identity
from consent.keystore import load_identity, save_identity
from consent.passphrase import read_passphrase, shared_passphrase_file
from protos.transport import node_address

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


def _questions(report: Path | None, dataset: str | None, purpose: str | None,
               measure_sets: list[list[str]], base: dict[str, Any]) -> list[dict[str, Any]]:
    """The questions of one command: a report file's (a JSON list of queries), or one per
    measure set over the shared options; usage errors (exit 2) otherwise."""
    if report is not None:
        if dataset or purpose or measure_sets:
            usage_error("give either --report or --dataset/--purpose/--measure, not both")
        try:
            queries = json.loads(report.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            usage_error(f"cannot read the report file {report}: {sentence(exc)}")
        if isinstance(queries, dict):
            queries = queries.get("queries")
        if not isinstance(queries, list) or not queries \
                or not all(isinstance(q, dict) for q in queries):
            usage_error(f"the report file {report} must hold a non-empty JSON list of queries "
                        "(objects with dataset, purpose, measures, ...)")
        return queries
    missing = [o for o, v in (("--dataset", dataset), ("--purpose", purpose),
                              ("--measure", measure_sets)) if not v]
    if missing:
        usage_error(f"missing option {missing[0]} (or give a --report file)")
    return [{"dataset": dataset, "purpose": purpose, "measures": m, **base}
            for m in measure_sets]


def _measure_sets(measures: tuple[str, ...], more: tuple[str, ...]) -> list[list[str]]:
    sets = [list(measures)] if measures else []
    return sets + [[m.strip() for m in group.split(",") if m.strip()] for group in more]


def _signed_answer(answer: Answer) -> dict[str, Any]:
    """The answer object as the node signed it, inside its report reply."""
    return next(r["answer"] for r in answer.document["body"]["report"]
                if "answer" in r and r["answer"]["event_seq"] == answer.event_seq)


def _report_output(results: list[Any], as_json: bool) -> None:
    """Print every question's answer or refusal; exit 1 if any was refused."""
    refused = [r for r in results if isinstance(r, NodeError)]
    if as_json:
        click.echo(json.dumps([
            {"refused": {"code": r.code.name, "message": str(r)}} if isinstance(r, NodeError)
            else {"answer": _signed_answer(r)} for r in results], indent=2, sort_keys=True))
    else:
        for i, result in enumerate(results, start=1):
            click.echo(f"question {i}: " + (f"refused: {result}" if isinstance(result, NodeError)
                                            else "\n" + _table(result)))
    if refused:
        fail(f"{len(refused)} of {len(results)} questions were refused (see above)")


#: Scored questions: the node scores each consenting customer with this installed model and
#: the question may use the columns score (0 to 1) and score_band (0 to 9).
MODEL_OPTION = click.option(
    "--model", default=None, metavar="DIGEST",
    help="score with this installed intent model (its 64-hex digest): adds the columns score "
         "and score_band, e.g. --measure avg:score --group-by score_band")


@main.command()
@home_option
@pass_option
@click.option("--node", required=True, help="node address host:port (port 7443 if none)",
              callback=lambda _ctx, _param, value: node_address(value))
@click.option("--ca", required=True, type=click.Path(dir_okay=False),
              help="the node's TLS CA certificate (PEM)")
@click.option("--dataset", default=None)
@click.option("--measure", "measures", multiple=True,
              help="count | count:COL | sum:COL | avg:COL | quantile:COL:Q | median:COL")
@click.option("--measures", "more", multiple=True, metavar="M1,M2,...",
              help="one more question with these comma-separated measures (same dataset, "
                   "purpose, group-by and filters); several questions travel as one report")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="a JSON file holding a list of queries, asked as one report")
@click.option("--group-by", "group_by", multiple=True)
@click.option("--filter", "filters", multiple=True, help="e.g. \"age >= 30\"")
@click.option("--purpose", default=None)
@click.option("--grant", "grants", multiple=True, help="grant id(s) to use (default: all)")
@click.option("--epsilon", type=float, default=None,
              help="privacy cost of this answer to each customer it reads (dp mode; within "
                   "the node's bounds, default the node's default_epsilon)")
@MODEL_OPTION
@click.option("--json", "as_json", is_flag=True, help="print the answer as JSON")
def ask(home: str, passphrase_file: Path | None, node: str, ca: str, dataset: str | None,
        measures: tuple[str, ...], more: tuple[str, ...], report: Path | None,
        group_by: tuple[str, ...], filters: tuple[str, ...], purpose: str | None,
        grants: tuple[str, ...], epsilon: float | None, model: str | None,
        as_json: bool) -> None:
    """Seal aggregate queries to a node and print the verified answers: one question, or
    several (--measures, --report) sent as one report in one sealed request."""
    ca_pem = read_pem_certificate(ca)  # a usage error before the passphrase
    base: dict[str, Any] = {"group_by": list(group_by),
                            "filters": [parse_filter_text(f) for f in filters],
                            "grant_ids": list(grants)}
    if epsilon is not None:
        base["epsilon"] = epsilon
    if model is not None:
        base["model"] = model
    queries = _questions(report, dataset, purpose, _measure_sets(measures, more), base)
    identity = load_identity(Path(home) / "requester.key", _passphrase(passphrase_file))
    if len(queries) > 1 or report is not None:
        _report_output(Requester(identity).ask_report(node, ca_pem, queries), as_json)
        return
    answer = Requester(identity).ask(node, ca_pem, queries[0])
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
@click.option("--measure", "measures", multiple=True,
              help="count | count:COL | sum:COL | avg:COL (quantiles: per node only)")
@click.option("--measures", "more", multiple=True, metavar="M1,M2,...",
              help="one more question with these comma-separated measures; several questions "
                   "reach each node as one report (one sealed envelope per node)")
@click.option("--group-by", "group_by", multiple=True)
@click.option("--filter", "filters", multiple=True, help="e.g. \"age >= 30\"")
@click.option("--purpose", required=True)
@click.option("--epsilon", type=float, default=None, help="privacy cost per node (dp mode)")
@MODEL_OPTION
@click.option("--deadline-ms", type=click.IntRange(0, 600_000), default=0,
              help="how long each node may take (default: the coordinator's)")
@click.option("--json", "as_json", is_flag=True, help="print the combined answer as JSON")
def ask_network_command(home: str, passphrase_file: Path | None, coordinator: str, ca: str,
                        node_dids: tuple[str, ...], regions: tuple[str, ...], dataset: str,
                        measures: tuple[str, ...], more: tuple[str, ...],
                        group_by: tuple[str, ...],
                        filters: tuple[str, ...], purpose: str, epsilon: float | None,
                        model: str | None,
                        deadline_ms: int, as_json: bool) -> None:
    """Ask every node of a coordinator's network (one sealed envelope each), verify every
    answer and print their combination."""
    from agent_node.network import CoordinatorClient
    from agent_node.requester import ask_network, ask_network_report

    ca_pem = read_pem_certificate(ca)  # a usage error before the passphrase
    sets = _measure_sets(measures, more)
    if not sets:
        usage_error("missing option --measure (or --measures)")
    base: dict[str, Any] = {
        "dataset": dataset, "purpose": purpose, "group_by": list(group_by),
        "filters": [parse_filter_text(f) for f in filters]}
    if epsilon is not None:
        base["epsilon"] = epsilon
    if model is not None:
        base["model"] = model
    identity = load_identity(Path(home) / "requester.key", _passphrase(passphrase_file))
    options: dict[str, Any] = {"nodes": list(node_dids) or None,
                               "regions": list(regions) or None, "deadline_ms": deadline_ms}
    with CoordinatorClient(coordinator, ca_pem) as client:
        if len(sets) == 1:
            results = [ask_network(identity, client, {**base, "measures": sets[0]}, **options)]
        else:
            results = ask_network_report(identity, client,
                                         [{**base, "measures": m} for m in sets], **options)
    if as_json:
        combined = [r.combined for r in results]
        click.echo(json.dumps(combined[0] if len(sets) == 1 else combined, indent=2,
                              sort_keys=True))
    else:
        click.echo("\n".join((f"question {i}:\n" if len(sets) > 1 else "")
                              + _network_table(r.combined)
                              for i, r in enumerate(results, start=1)))
