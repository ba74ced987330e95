"""``consent-wallet``: the customer's command line for grants, revocations, access and export.

A thin click layer over ``wallet.service``: every command takes ``--json`` for scripts, prints
plain sentences otherwise, and turns every expected failure into one sentence on stderr and a
non-zero exit (never a traceback).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import click

from consent import timespec
from consent.commandline import (
    Failure,
    GlobalOption,
    ToolGroup,
    emit,
    global_value,
    json_option,
    progress,
)
from consent.passphrase import read_passphrase
from protos.transport import canonical_address, node_address
from wallet import service
from wallet.parsing import check_purpose_text, format_duration, parse_duration
from wallet.store import iso, utcnow

PASSPHRASE_ENV = "CONSENT_WALLET_PASSPHRASE"
HOME_ENV = "CONSENT_WALLET_HOME"
EXIT_PENDING = 3  # saved locally, not yet delivered: `consent-wallet sync` finishes the job


class Pending(click.ClickException):
    """Saved in the wallet, not yet delivered: exit 3, `consent-wallet sync` finishes it."""

    exit_code = EXIT_PENDING


class WalletGroup(ToolGroup):
    """The shared convention (consent.commandline), and a locked wallet database said in
    words."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except sqlite3.Error as exc:
            # e.g. wallet.db locked by another wallet process for longer than the timeout
            raise click.ClickException(
                f"the wallet database could not be used ({exc}); retry, and make sure no other "
                "consent-wallet command is running on this wallet"
            ) from None


def _sentence(exc: Exception | str) -> str:
    """One sentence starting with a capital, unless it starts with a name (``--ttl``,
    ``purposeText``, a quoted value) whose spelling must be kept."""
    text = str(exc).strip() or exc.__class__.__name__
    first = text.split(" ", 1)[0]
    if first.isalpha() and first.islower():
        return text[0].upper() + text[1:]
    return text


class Context:
    """The wallet folder and passphrase file, from --home / --passphrase-file written before
    or after the subcommand (consent.commandline.GlobalOption)."""

    @property
    def home(self) -> Path:
        return Path(global_value("home", service.default_home())).expanduser()

    @property
    def passphrase_file(self) -> Path | None:
        value = global_value("passphrase_file")
        return None if value is None else Path(value)


def _passphrase(ctx: Context, confirm: bool = False) -> str:
    return read_passphrase(PASSPHRASE_ENV, file=ctx.passphrase_file, what="wallet passphrase",
                           confirm=confirm)


def _open(ctx: Context) -> service.Wallet:
    if not service.wallet_exists(ctx.home):
        raise service.WalletNotFound(
            f"no wallet in {ctx.home}: run `consent-wallet init` first (or pass --home)"
        )
    return service.Wallet.open(ctx.home, _passphrase(ctx))


def _address(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A node's address in the one spelling the wallet's API uses too (localhost and
    127.0.0.1 are one node; the port defaults to 7443), so messages name it as stored."""
    return None if value is None else node_address(value)


def _ledger_address(_ctx: click.Context, _param: click.Parameter, value: str | None
                    ) -> str | None:
    return None if value is None else canonical_address(value)


pass_ctx = click.make_pass_decorator(Context)


@click.group(cls=WalletGroup, expected_errors=service.expected_errors())
@click.option(
    "--home", type=click.Path(file_okay=False, path_type=Path), envvar=HOME_ENV,
    default=service.default_home, show_default="~/.consent-wallet",
    help=f"Wallet folder (or {HOME_ENV}).", cls=GlobalOption, copy=True,
)
@click.option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False),
              help=f"File holding the wallet passphrase (else {PASSPHRASE_ENV}, else a prompt).",
              cls=GlobalOption, copy=True)
@click.pass_context
def cli(click_ctx: click.Context) -> None:
    """Your consent wallet: grant, revoke and watch the use of your data.

    The passphrase is read from --passphrase-file, else CONSENT_WALLET_PASSPHRASE, else
    asked for.
    """
    click_ctx.obj = Context()


@cli.command()
@click.option("--profile", type=click.Choice(["intl", "gm"]), default="intl", show_default=True,
              help="Crypto profile: intl (Ed25519) or gm (SM2 beside Ed25519).")
@json_option
@pass_ctx
def init(ctx: Context, profile: str, as_json: bool) -> None:
    """Create your keys and did:key in an encrypted keystore (never overwrites)."""
    if service.wallet_exists(ctx.home):
        raise service.WalletExists(
            f"a wallet already exists in {ctx.home}; choose another --home to create a new one"
        )
    wallet = service.Wallet.create(ctx.home, _passphrase(ctx, confirm=True), profile)
    with wallet:
        who = wallet.whoami()
    emit(as_json, {"did": who.did, "profile": who.profile, "home": who.home}, lambda: click.echo(
        f"Created your wallet in {who.home}\nYour DID: {who.did}\nProfile: {who.profile}\n"
        "Keep your passphrase safe: without it the keys cannot be opened."
    ))


@cli.command()
@json_option
@pass_ctx
def whoami(ctx: Context, as_json: bool) -> None:
    """Show your DID and crypto profile."""
    who = service.whoami(ctx.home)
    emit(as_json, {"did": who.did, "profile": who.profile, "home": who.home},
          lambda: click.echo(f"{who.did}\nprofile: {who.profile}"))


@cli.group(cls=WalletGroup)
def requesters() -> None:
    """Companies you grant access to, known by the name they sign (their profile)."""


@requesters.command("add")
@click.argument("profile_file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@pass_ctx
def requesters_add(ctx: Context, profile_file: Path, as_json: bool) -> None:
    """Remember a company's name from its signed profile (the file 'sov-query profile'
    writes, got from the company itself); its proof must be by the DID it names."""
    from wallet.requesters import add_profile

    try:
        document = json.loads(profile_file.read_text(encoding="utf-8"))
    except ValueError:
        raise click.BadParameter(f"{profile_file} is not JSON: give the profile file the "
                                 "company sent you") from None
    store = service.open_store(ctx.home)
    try:
        did, name = add_profile(store, document)
    finally:
        store.close()
    emit(as_json, {"did": did, "name": name},
         f"{name} is {did}; grants and the dashboard show this name beside the DID")


@requesters.command("list")
@json_option
@pass_ctx
def requesters_list(ctx: Context, as_json: bool) -> None:
    """The companies this wallet knows by name."""
    from wallet.requesters import names

    store = service.open_store(ctx.home)
    try:
        known = names(store)
    finally:
        store.close()
    emit(as_json, [{"did": d, "name": n} for d, n in sorted(known.items())],
         "\n".join(f"{n}  {d}" for d, n in sorted(known.items()))
         or "No company profiles yet: `consent-wallet requesters add FILE`.")


@cli.group(cls=WalletGroup)
def nodes() -> None:
    """Nodes you talk to and the CA certificates that authenticate them."""


@nodes.command("add")
@click.argument("address", callback=_address)
@click.option("--ca", "ca_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PEM CA certificate of the node's TLS certificate.")
@click.option("--did", "expected_did",
              help="The node's DID as its operator published it: pinned ahead, so a node "
                   "presenting another is refused (default: pin what it presents now).")
@click.option("--node-doc", "node_doc", type=click.Path(dir_okay=False, path_type=Path),
              help="The node's signed identity document (from `sov-node identity`), got out "
                   "of band: pins the DID it names, like --did.")
@json_option
@pass_ctx
def nodes_add(ctx: Context, address: str, ca_file: Path, expected_did: str | None,
              node_doc: Path | None, as_json: bool) -> None:
    """Remember a node's CA, fetch its verified identity and pin its DID."""
    ca_pem = service.read_ca(ca_file)
    if node_doc is not None:
        documented = service.read_node_document(node_doc)
        if expected_did not in (None, documented):
            raise click.UsageError("--did and --node-doc name different DIDs; give one")
        expected_did = documented
    if expected_did is not None:
        service.check_node_did(expected_did)
    with _open(ctx) as wallet:
        node = wallet.add_node(address, ca_pem, expected_did=expected_did)
    data = _node_json(node)
    emit(as_json, data, lambda: click.echo(
        f"Added node {node.name or '?'} at {address}\n  DID: {node.did}\n"
        f"  region: {node.region}  residency: {node.residency}"
    ))


@nodes.command("trust")
@click.argument("address", callback=_address)
@click.option("--new-did", required=True,
              help="The node's new DID, confirmed with its operator out of band.")
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A new PEM CA certificate, if the node's TLS changed too.")
@json_option
@pass_ctx
def nodes_trust(ctx: Context, address: str, new_did: str, ca_file: Path | None,
                as_json: bool) -> None:
    """Accept a node's new DID (only after checking it with the node's operator)."""
    service.check_node_did(new_did)
    ca_pem = service.read_ca(ca_file) if ca_file else None
    with _open(ctx) as wallet:
        node = wallet.trust_node(address, new_did, ca_pem)
    emit(as_json, _node_json(node), lambda: click.echo(
        f"Node {node.name or '?'} at {address} is now pinned to {node.did}"
        + (f"\n  earlier DIDs: {', '.join(node.retired_dids)}" if node.retired_dids else "")))


@nodes.command("list")
@json_option
@pass_ctx
def nodes_list(ctx: Context, as_json: bool) -> None:
    """List the nodes this wallet knows."""
    store = service.open_store(ctx.home)
    try:
        records = store.nodes()
    finally:
        store.close()
    emit(as_json, [_node_json(n) for n in records], "\n".join(
        f"{n.address}  {n.name or '?'}  {n.region or '?'}  {n.did or '(never reached)'}"
        for n in records) or "No nodes yet: `consent-wallet nodes add ADDR --ca FILE`.")


def _node_json(node: Any) -> dict[str, Any]:
    return {
        "address": node.address, "did": node.did, "name": node.name, "region": node.region,
        "residency": node.residency, "profile": node.profile, "k_threshold": node.k_threshold,
        "max_ttl_hours": node.max_ttl_hours,
        "info_at": iso(node.info_at) if node.info_at else None,
        "retired_dids": list(node.retired_dids),
    }


@cli.group(cls=WalletGroup)
def ledger() -> None:
    """The ledger that anchors your grants and checks the nodes' access logs (optional)."""


def _ledger_json(info: service.LedgerInfo) -> dict[str, Any]:
    return {"ledger": info.address, "origin": info.origin, "hash": info.hash_algorithm,
            "fingerprint": info.fingerprint}


def _load_log_key(path: Path) -> Any:
    from ledger.models import LogPublicKey

    return LogPublicKey.load(path)


@ledger.command("set")
@click.argument("address", callback=_ledger_address)
@click.option("--ca", "ca_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PEM CA certificate of the ledger's TLS certificate.")
@click.option("--log-key", "log_key_file", type=click.Path(dir_okay=False, path_type=Path),
              help="The log's public key file (log-public.json) got out of band: the ledger "
                   "must serve exactly this key.")
@json_option
@pass_ctx
def ledger_set(ctx: Context, address: str, ca_file: Path, log_key_file: Path | None,
               as_json: bool) -> None:
    """Pin the ledger at ADDRESS and its log key; anchor grants and revocations there."""
    ca_pem = service.read_ca(ca_file)
    expected = _load_log_key(log_key_file) if log_key_file else None
    with _open(ctx) as wallet:
        info = wallet.set_ledger(address, ca_pem, expected_key=expected)
    emit(as_json, _ledger_json(info), lambda: click.echo(
        f"Ledger set to {address}.\n  log: {info.origin} ({info.hash_algorithm})\n"
        f"  key fingerprint: {info.fingerprint}\n"
        "Compare the fingerprint with the one the ledger operator publishes "
        "(`consent-wallet ledger fingerprint log-public.json` computes it from their file)."
        + ("\n  matches the log key file you gave." if expected else "")
    ))


@ledger.command("show")
@json_option
@pass_ctx
def ledger_show(ctx: Context, as_json: bool) -> None:
    """The configured ledger and the fingerprint of its pinned log key."""
    with _open(ctx) as wallet:
        info = wallet.ledger_info()
    if info is None:
        raise click.ClickException("No ledger is set: run `consent-wallet ledger set ADDR --ca "
                                   "FILE`.")
    emit(as_json, _ledger_json(info), lambda: click.echo(
        f"{info.address}  {info.origin} ({info.hash_algorithm})\n"
        f"  key fingerprint: {info.fingerprint}"))


@ledger.command("fingerprint")
@click.argument("log_key_file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def ledger_fingerprint(log_key_file: Path, as_json: bool) -> None:
    """The fingerprint of a log public-key file (log-public.json), to compare out of band."""
    from wallet.anchoring import fingerprint

    key = _load_log_key(log_key_file)
    emit(as_json, {"origin": key.origin, "fingerprint": fingerprint(key)},
          lambda: click.echo(f"{fingerprint(key)}  {key.origin}"))


@cli.command()
@click.option("--node", help="Node address HOST:PORT that holds your data.",
              callback=_address)
@click.option("--node-ca", type=click.Path(dir_okay=False, path_type=Path),
              help="The node's CA certificate (remembered for this address).")
@click.option("--requester", help="did:key of the application you grant access to.")
@click.option("--purpose", help="One purpose, e.g. quote-generation.")
@click.option("--purpose-text", default="", help="Free text shown beside the purpose.")
@click.option("--scope", "scopes", multiple=True,
              help="Scope tier: identity, transaction or sentiment (repeatable).")
@click.option("--ttl", help="How long the grant lasts: 24h, 90m, 3d (at most 72h).")
@click.option("--max-queries", type=click.IntRange(min=1), help="Query budget.")
@click.option("--dp-epsilon", type=float, help="Differential-privacy budget (epsilon).")
@click.option("--retry", "retry_id", metavar="GRANT_ID",
              help="Re-deliver a grant saved as pending instead of signing a new one.")
@json_option
@pass_ctx
def grant(
    ctx: Context, node: str | None, node_ca: Path | None, requester: str | None,
    purpose: str | None, purpose_text: str, scopes: tuple[str, ...], ttl: str | None,
    max_queries: int | None, dp_epsilon: float | None, retry_id: str | None, as_json: bool,
) -> None:
    """Sign a consent grant and deliver it to the node."""
    if retry_id is not None:
        # The grant was signed as it stands: a changed --ttl or scope would be a new grant.
        given = [name for name, value in (
            ("--node", node), ("--node-ca", node_ca), ("--requester", requester),
            ("--purpose", purpose), ("--purpose-text", purpose_text), ("--scope", scopes),
            ("--ttl", ttl), ("--max-queries", max_queries), ("--dp-epsilon", dp_epsilon))
            if value]
        if given:
            raise click.UsageError(
                f"--retry re-delivers grant {retry_id} exactly as it was signed, so it takes "
                f"no {', '.join(given)}; to change it, revoke it and sign a new grant "
                "(consent-wallet grant without --retry)")
    if retry_id is None:
        missing = [name for name, value in (("--node", node), ("--requester", requester),
                   ("--purpose", purpose), ("--scope", scopes), ("--ttl", ttl)) if not value]
        if missing:
            raise click.UsageError(f"missing {', '.join(missing)} (see --help)")
        assert node and requester and purpose and ttl
        duration = parse_duration(ttl)
        service.check_ttl(duration)  # refused before the passphrase is even asked
        service.check_purpose(purpose)
        check_purpose_text(purpose_text)
        ca_pem = service.read_ca(node_ca) if node_ca else None
    with _open(ctx) as wallet:
        if retry_id is not None:
            outcome = wallet.retry(retry_id)
        else:
            assert node and requester and purpose  # checked above when not --retry
            outcome = wallet.grant(
                node=node, requester=requester, purpose=purpose, scopes=list(scopes),
                ttl=duration, purpose_text=purpose_text, max_queries=max_queries,
                dp_epsilon=dp_epsilon, node_ca=ca_pem,
            )
    record = outcome.grant
    data = {"grant_id": record.id, "expires": iso(record.expires), "delivered": outcome.delivered,
            "delivery": record.delivery, "digest": record.digest, "node": record.node_address,
            "ledger_anchored": record.ledger_receipt is not None, "message": outcome.message}
    emit(as_json, data, lambda: click.echo(
        f"Grant {record.id}\n  {record.purpose} for {', '.join(record.scopes)}, "
        f"until {iso(record.expires)}\n"
        + ("  delivered to the node" if outcome.delivered else "  NOT delivered yet")
        + (" and anchored in the ledger" if record.ledger_receipt else "")
        + (f"\n  note: {outcome.message}" if outcome.delivered and outcome.message else "")
    ))
    if not outcome.delivered and record.delivery != "delivered":
        message = _sentence(outcome.message or "the grant was not delivered")
        # A refused grant is not pending: `sync` will not deliver it, so it is a plain failure.
        raise (Failure(message) if record.delivery == service.REFUSED else Pending(message))


@cli.command()
@click.option("--offline", is_flag=True, help="Do not ask the nodes; show the last known status.")
@json_option
@pass_ctx
def grants(ctx: Context, offline: bool, as_json: bool) -> None:
    """Your grants: status, remaining budget, and where the data lives."""
    with _open(ctx) as wallet:
        views = wallet.grants(refresh=not offline)
    emit(as_json, [v.to_json() for v in views], lambda: _print_grants(views, offline))


def _print_grants(views: list[service.GrantView], offline: bool = False) -> None:
    if not views:
        click.echo("No grants yet.")
        return
    now = utcnow()
    for v in views:
        left = f" ({format_duration(v.expires - now)} left)" if v.status == "active" else ""
        click.echo(f"{v.id}  {v.status.upper()}")
        click.echo(f"  {v.purpose} [{', '.join(v.scopes)}] for {v.requester}")
        click.echo(f"  data at {v.node_name or v.node_address} ({v.node_region or '?'}: "
                   f"{v.node_residency or 'residency unknown'}) until {iso(v.expires)}{left}")
        budget = []
        if v.max_queries is not None:
            budget.append(f"{v.queries_left}/{v.max_queries} queries left")
        if v.budget is not None and v.epsilon_left is not None:
            budget.append(f"privacy budget epsilon {v.epsilon_left:g}/{v.budget:g} left")
        if budget:
            when = "" if v.status_fresh else (
                f" (last known {iso(v.status_at)})" if v.status_at else " (never read from node)")
            click.echo(f"  budget: {', '.join(budget)}{when}")
        elif not v.status_fresh and v.delivery == "delivered":
            click.echo("  status: last known" + ("" if offline else " (node not reachable)"))
        if v.status == service.REVOCATION_PENDING:
            click.echo("  your revocation is NOT yet in effect at the node: run "
                       "`consent-wallet sync`")


@cli.command()
@click.argument("grant_id")
@click.option("--reason", default="", help="Optional reason recorded in the revocation.")
@click.option("--via-coordinator", "coordinator", metavar="HOST:PORT",
              callback=_ledger_address,
              help="When the node cannot be reached, hand the revocation to this coordinator, "
                   "which delivers it (remembered; `coordinator set` does the same).")
@click.option("--coordinator-ca", type=click.Path(dir_okay=False, path_type=Path),
              help="The coordinator's CA certificate (needed once per coordinator).")
@json_option
@pass_ctx
def revoke(ctx: Context, grant_id: str, reason: str, coordinator: str | None,
           coordinator_ca: Path | None, as_json: bool) -> None:
    """Revoke a grant; effective at the node before its next answer.

    The node is asked directly. When it cannot be reached and a coordinator is set, the
    coordinator relays the signed revocation: the reply names the nodes it has not reached yet
    (exit 3), and it keeps delivering until they have it.
    """
    if coordinator_ca is not None and coordinator is None:
        raise click.UsageError("--coordinator-ca goes with --via-coordinator HOST:PORT")
    ca_pem = service.read_ca(coordinator_ca) if coordinator_ca else None
    try:
        with _open(ctx) as wallet:
            outcome = wallet.revoke(grant_id, reason=reason, coordinator=coordinator,
                                    coordinator_ca=ca_pem)
    except service.RelayPending as pending:
        outcome = pending.outcome
        emit(as_json, _revoke_json(outcome), lambda: _print_relay(outcome))
        raise Pending(str(pending)) from None
    def human() -> None:
        click.echo(f"Revoked {grant_id} at {iso(outcome.revoked_at)} ({outcome.message}).")
        _print_relay(outcome)

    emit(as_json, _revoke_json(outcome), human)


def _revoke_json(outcome: service.RevokeOutcome) -> dict[str, Any]:
    return {"grant_id": outcome.grant_id, "confirmed": outcome.confirmed,
            "revoked_at": iso(outcome.revoked_at) if outcome.confirmed else None,
            "message": outcome.message,
            "relay": outcome.relay.to_json() if outcome.relay else None}


def _print_relay(outcome: service.RevokeOutcome) -> None:
    relay = outcome.relay
    if relay is None:
        return
    click.echo(f"Relayed by the coordinator at {relay.coordinator} (relay {relay.relay_id}):")
    for did in relay.delivered:
        click.echo(f"  {did}: has it (its signed receipt checked)")
    for did in relay.pending:
        click.echo(f"  {did}: NOT reached yet; the coordinator keeps delivering it")
    for did, reason in relay.refused.items():
        click.echo(f"  {did}: refused it ({reason})")


@cli.group(cls=WalletGroup)
def coordinator() -> None:
    """The network's coordinator: relays revocations and erasure requests to nodes you cannot
    reach yourself (optional; it carries sealed envelopes it cannot read)."""


def _print_coordinator(info: service.CoordinatorInfo) -> None:
    click.echo(f"Coordinator {info.address}: {info.nodes} registered node(s), "
               f"{len(info.known)} of yours")
    for address in info.known:
        click.echo(f"  {address}")


@coordinator.command("set")
@click.argument("address", callback=_ledger_address)
@click.option("--ca", "ca_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PEM CA certificate of the coordinator's TLS certificate.")
@json_option
@pass_ctx
def coordinator_set(ctx: Context, address: str, ca_file: Path, as_json: bool) -> None:
    """Use the coordinator at ADDRESS when a node cannot be reached directly."""
    ca_pem = service.read_ca(ca_file)
    with _open(ctx) as wallet:
        info = wallet.set_coordinator(address, ca_pem)
    emit(as_json, info.to_json(), lambda: _print_coordinator(info))


@coordinator.command("show")
@json_option
@pass_ctx
def coordinator_show(ctx: Context, as_json: bool) -> None:
    """The coordinator set, and which of your nodes it lists now."""
    with _open(ctx) as wallet:
        info = wallet.coordinator_info()
    if info is None:
        raise click.ClickException("No coordinator is set: run `consent-wallet coordinator set "
                                   "ADDRESS --ca FILE`.")
    emit(as_json, info.to_json(), lambda: _print_coordinator(info))


@cli.command()
@json_option
@pass_ctx
def sync(ctx: Context, as_json: bool) -> None:
    """Deliver every grant and revocation still pending (after a node was unreachable)."""
    with _open(ctx) as wallet:
        report = wallet.sync()
    data = {"delivered_grants": report.delivered_grants,
            "delivered_revocations": report.delivered_revocations,
            "anchored_grants": report.anchored_grants,
            "anchored_revocations": report.anchored_revocations, "failed": report.failed}

    def human() -> None:
        for gid in report.delivered_grants:
            click.echo(f"Delivered grant {gid}")
        for gid in report.delivered_revocations:
            click.echo(f"Delivered revocation of {gid}")
        for gid in report.anchored_grants:
            click.echo(f"Anchored grant {gid} in the ledger")
        for gid in report.anchored_revocations:
            click.echo(f"Anchored the revocation of {gid} in the ledger")
        if not (report.delivered_grants or report.delivered_revocations or report.failed
                or report.anchored_grants or report.anchored_revocations):
            click.echo("Nothing pending.")

    emit(as_json, data, human)
    if report.failed:
        raise Pending(
            f"{len(report.failed)} item(s) still pending: " + next(iter(report.failed.values()))
        )


@cli.command("access-log")
@timespec.since_option()
@timespec.until_option()
@json_option
@pass_ctx
def access_log(ctx: Context, since: timespec.TimeBound | None,
               until: timespec.TimeBound | None, as_json: bool) -> None:
    """Who used your data, when, for what, under which grant — each event verified."""
    timespec.check_range(since, until)
    with _open(ctx) as wallet:
        view = wallet.access_log(since=since.start if since else None)
        mine = {grant.id for grant in wallet.store.grants()}
    events = [e for e in view.events if until is None or e.time < until.end]
    selection = timespec.describe_range(since, until)
    data = {"events": [_event_json(e) for e in events], "unreachable": view.unreachable,
            "selection": selection or "all events",
            "integrity": {a: c.to_json(a) for a, c in view.integrity.items()},
            "ledger_problem": view.ledger_problem}
    hidden = [m.sentence(a) for a, c in view.integrity.items() for m in c.mismatches]

    def human() -> None:
        for address, message in view.unreachable.items():
            click.echo(f"! {_sentence(message)}; showing the events cached from {address}")
        if selection:
            click.echo(f"Events {selection}:")
        if not events:
            click.echo("No recorded use of your data.")
        for e in events:
            ev = e.event
            mark = "verified" if e.verified else "NOT VERIFIED"
            mark += _ledger_mark(e)
            click.echo(f"{iso(e.time)}  {ev.get('requester')}  {ev.get('purpose')}  "
                       f"{_outcome(ev)}  {_grants_line(*service.grants_used(ev, mine))}  "
                       f"[{mark}]")
        _print_integrity(view)

    emit(as_json, data, human)
    if hidden:
        raise click.ClickException(_sentence(hidden[0]) + (
            f" (and {len(hidden) - 1} more such gap(s))" if len(hidden) > 1 else ""))


def _print_integrity(view: service.AccessView) -> None:
    """What the check against the ledger's heads found, per node."""
    if view.ledger_problem:
        click.echo(f"! {_sentence(view.ledger_problem)}")
    for address, check in view.integrity.items():
        for mismatch in check.mismatches:
            click.echo(f"! {_sentence(mismatch.sentence(address))}")
        if not check.mismatches:
            click.echo(f"Ledger check of {address}: its listing matches the {check.heads} "
                       "anchored head(s) that name you.")
        if check.not_anchored:
            click.echo(f"  {check.not_anchored} of your event(s) there are not yet anchored "
                       "(the node anchors on a schedule; look again in a minute).")


def _outcome(event: dict[str, Any]) -> str:
    """The event's meaning for you (service.outcome_label) and the epsilon it debited."""
    label = service.outcome_label(event)
    if event.get("training_run") and label == service.ANSWERED:
        # A federated training phase (agent_node.training): your row trained a model.
        label = (f"used for training run {event['training_run']} ({event.get('phase')}"
                 + (f", round {event['round']}" if event.get("round") else "") + ")")
    # A scored question (agent_node.scoring): your intent score, computed at the node from your
    # row with the model the event names, went into an aggregate (never out on its own).
    scored = bool(event.get("model")) and label in (service.ANSWERED, service.NOTHING_RELEASED)
    if event.get("epsilon") and (label.startswith("used for training")
                                 or label in (service.ANSWERED, service.NOTHING_RELEASED)):
        label += f" (epsilon {event['epsilon']:g} debited)"
    if scored:
        label += f" (scored with intent model {str(event['model'])[:16]})"
    return label


def _grants_line(own: list[str], others: int) -> str:
    """Your own grants by id; other customers' only as a count (they are theirs, not yours)."""
    text = "under your grant " + ", ".join(own) if own else "under none of your grants"
    return text + (f" (+{others} other customers' grants)" if others else "")


def _ledger_mark(e: Any) -> str:
    if e.ledger_status == "verified":
        return ", in the ledger"
    if e.ledger_status == "failed":
        return f", LEDGER VERIFICATION FAILED: {e.ledger_detail}"
    if e.ledger_status == "not-anchored":
        return ", not yet anchored"
    return ""


def _event_json(e: Any) -> dict[str, Any]:
    return {"node": e.node_address, "seq": e.seq, "time": iso(e.time), "event": e.event,
            "verified": e.verified, "ledger_verified": e.ledger_verified,
            "ledger_status": e.ledger_status, "ledger_detail": e.ledger_detail}


@cli.command()
@click.option("--node", required=True, help="Node address HOST:PORT.", callback=_address)
@click.option("--node-ca", type=click.Path(dir_okay=False, path_type=Path),
              help="The node's CA certificate (remembered for this address).")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the JSON export.")
@json_option
@pass_ctx
def export(ctx: Context, node: str, node_ca: Path | None, out: Path, as_json: bool) -> None:
    """Everything the node holds about you, opened locally into a portable JSON file."""
    ca_pem = service.read_ca(node_ca) if node_ca else None
    with _open(ctx) as wallet, progress(as_json) as shown:  # a large export takes a while
        wallet.export(node, out, node_ca=ca_pem, progress=shown.advance)
    emit(as_json, {"out": str(out), "node": node},
          lambda: click.echo(f"Wrote everything {node} holds about you to {out}"))


@cli.command()
@click.option("--node", required=True, help="Node address HOST:PORT.", callback=_address)
@click.option("--node-ca", type=click.Path(dir_okay=False, path_type=Path),
              help="The node's CA certificate (remembered for this address).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@json_option
@pass_ctx
def erase(ctx: Context, node: str, node_ca: Path | None, yes: bool, as_json: bool) -> None:
    """Ask a node to erase everything it holds about you, and keep its signed proof.

    When the node cannot be reached directly and a coordinator is set (`coordinator set`),
    the sealed request goes through the coordinator, which cannot read it.
    """
    if not yes:
        click.confirm(f"Erase everything {node} holds about you? Your grants there end and "
                      "this cannot be undone", abort=True)
    ca_pem = service.read_ca(node_ca) if node_ca else None
    with _open(ctx) as wallet:
        receipt, via = wallet.erase_routed(node, node_ca=ca_pem)
    proof = receipt["proof"]
    rows = sum(int(loc["rows"]) for loc in proof["locations"])
    files = proof["scan"]["files"]
    hits = sum(int(f["hits"]) for f in files)

    def human() -> None:
        click.echo(f"{node} erased you: {rows} row(s) in {len(proof['locations'])} "
                   f"location(s), {len(proof['destroyed_keys'])} data key(s) destroyed")
        click.echo(f"  scan of {len(files)} file(s) for {proof['scan']['needles']} of your "
                   f"values: {hits} hit(s)")
        # The sweep's record is the node's word, unsigned: only a count is shown of it.
        sweep = receipt.get("sweep")
        sweep = sweep if isinstance(sweep, dict) else {}
        swept = sweep.get("hits")
        if sweep.get("state") == "pending":
            click.echo("  the node now sweeps its whole home for them too: erase again later "
                       "to see what it found")
        elif isinstance(swept, int) and not isinstance(swept, bool):
            click.echo(f"  the node's sweep of its whole home: {swept} hit(s)")
        click.echo(f"  proof signed by {proof['node']}; ledger: {receipt.get('ledger')}")
        if via:
            click.echo(f"  the node was out of reach: sent sealed through the coordinator "
                       f"at {via}")
        click.echo("  `consent-wallet receipts --out DIR` writes it for sov-audit verify")

    emit(as_json, {**receipt, "via_coordinator": via} if via else receipt, human)


@cli.command()
@click.option("--from", "source", help="The node that holds your data now (HOST:PORT).",
              callback=_address)
@click.option("--to", "target", help="The node to move it to (HOST:PORT).", callback=_address)
@click.option("--from-ca", type=click.Path(dir_okay=False, path_type=Path),
              help="--from's CA certificate (remembered for that address).")
@click.option("--to-ca", type=click.Path(dir_okay=False, path_type=Path),
              help="--to's CA certificate (remembered for that address).")
@click.option("--resume", is_flag=True,
              help="Finish (or roll back) a migration a crash or an outage interrupted.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@json_option
@pass_ctx
def migrate(ctx: Context, source: str | None, target: str | None, from_ca: Path | None,
            to_ca: Path | None, resume: bool, yes: bool, as_json: bool) -> None:
    """Move your data from one node to another: the first exports it (signed), the second
    imports it under your signed request, then the first erases it with its proof. All or
    nothing: your data stays where it was unless the second node confirms the import."""
    if not resume and not (source and target):
        raise click.UsageError("give --from NODE_A and --to NODE_B (or --resume)")
    if not resume and not yes:
        click.confirm(f"Move everything {source} holds about you to {target}, then erase it "
                      f"at {source}?", abort=True)
    source_ca = service.read_ca(from_ca) if from_ca else None
    target_ca = service.read_ca(to_ca) if to_ca else None
    with _open(ctx) as wallet:
        outcome = wallet.migrate(source, target, resume=resume, source_ca=source_ca,
                                 target_ca=target_ca)
    if outcome.state == "rolled-back":
        raise service.MigrationRefused(f"{outcome.note}; nothing was moved or erased")
    imported = outcome.import_receipt or {}
    proof = (outcome.erasure or {}).get("proof") or {}

    def human() -> None:
        rows = sum(int(n) for n in imported.get("datasets", {}).values())
        click.echo(f"{'Finished the interrupted move' if outcome.resumed else 'Moved you'} "
                   f"from {outcome.source} to {outcome.target}:")
        click.echo(f"  {outcome.target} imported {rows} row(s); receipt signed by "
                   f"{imported.get('node')}")
        click.echo(f"  {outcome.source} erased you: "
                   f"{sum(int(loc['rows']) for loc in proof.get('locations', []))} row(s), "
                   f"{len(proof.get('destroyed_keys', []))} data key(s) destroyed; "
                   f"{outcome.note.split(': ', 1)[-1]}")
        click.echo("  `consent-wallet receipts --out DIR` writes the migration receipt "
                   "(export, import, erasure) for sov-audit verify")

    emit(as_json, outcome.to_json(), human)


@cli.command()
@click.argument("grant_id")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write the signed grant to (JSON, 0600).")
@json_option
@pass_ctx
def credential(ctx: Context, grant_id: str, out: Path, as_json: bool) -> None:
    """Write one of your signed grants, for a compliance officer's `sov-audit verify
    --grant` (it shows which key may write that grant's ledger entries: yours)."""
    service.write_credential(ctx.home, grant_id, out)
    emit(as_json, {"out": str(out), "grant": grant_id},
         lambda: click.echo(f"Wrote grant {grant_id} to {out}"))


@cli.command()
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the receipts into (created if missing).")
@json_option
@pass_ctx
def receipts(ctx: Context, out: Path, as_json: bool) -> None:
    """Write every ledger receipt you hold (grants, revocations, erasures) for `sov-audit
    verify`."""
    result = service.write_receipts(ctx.home, out)
    data = {"out": str(out), "written": [str(p) for p in result.written],
            "not_anchored": result.pending}

    def human() -> None:
        click.echo(f"Wrote {len(result.written)} receipt(s) to {out}")
        for item in result.pending:
            click.echo(f"  not yet in the ledger: {item} (`consent-wallet sync` anchors it)")
        if result.written:
            click.echo(f"Check them: sov-audit verify --log-key log-public.json "
                       f"{out}/*.json")

    emit(as_json, data, human)


AUDIT_KEY_WARNING = (
    "This shows your commitment salt. With it and your DID, anyone can pick out every grant, "
    "revocation and access in the ledger that concerns you, for as long as the ledger exists; "
    "give it only to someone you want to audit your data. Show it?"
)


@cli.command("audit-key")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
@json_option
@pass_ctx
def audit_key(ctx: Context, yes: bool, as_json: bool) -> None:
    """Reveal your DID and commitment salt for a compliance officer (`sov-audit report`)."""
    if not yes:
        if not sys.stdin.isatty():
            raise click.ClickException(
                "audit-key reveals your commitment salt only after you confirm: answer the "
                "prompt in a terminal, or pass --yes in a script")
        if not click.confirm(AUDIT_KEY_WARNING, default=False, err=True):
            raise click.ClickException("Nothing was revealed.")
    with _open(ctx) as wallet:
        key = wallet.audit_key()
    data = {"did": key.did, "salt": key.salt, "subject_commitment": key.subject_commitment}
    emit(as_json, data, lambda: click.echo(
        f"DID:  {key.did}\nsalt: {key.salt}\ncommitment: {key.subject_commitment}\n"
        f"Report: sov-audit report --log-key log-public.json --subject-did {key.did} "
        f"--salt {key.salt} -o my-report.html RECEIPTS..."))


@cli.command()
@click.option("--port", default=0, type=click.IntRange(0, 65535),
              help="Port on 127.0.0.1 (0 picks a free one).")
@click.option("--refresh/--no-refresh", default=True,
              help="Ask the nodes for fresh status and access events first (needs the passphrase).")
@json_option
@pass_ctx
def dashboard(ctx: Context, port: int, refresh: bool, as_json: bool) -> None:
    """A local web page on 127.0.0.1: grants, data location, access timeline, revoke."""
    from wallet.dashboard import serve_dashboard

    if refresh:
        with _open(ctx) as wallet:
            wallet.grants(refresh=True)
            wallet.access_log()
    try:
        server = serve_dashboard(ctx.home, port=port)
    except OSError as exc:  # the port is taken, or not ours to bind
        raise click.ClickException(
            f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); choose another --port, or "
            "--port 0 for any free one"
        ) from None
    emit(as_json, {"url": server.url}, lambda: click.echo(
        f"Dashboard at {server.url} (Ctrl-C to stop)"))
    sys.stdout.flush()
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def main() -> None:
    cli(prog_name="consent-wallet")


if __name__ == "__main__":
    main()
