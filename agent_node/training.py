"""The node's part in federated training: the Flower ClientApp over this node's vault only.

``VaultSource`` is the ``fl.client.TrainingSource`` of a node. For each phase of a run it

1. verifies the run plan's signature (``consent.integrity``): the signer is the requester, and
   the plan's id is bound to the Flower run id on first use (``training_runs``), so a plan
   copied off the SuperLink cannot start another run;
2. checks the plan's features against the node's own data map declaration;
3. finds the customers whose active grants let this requester use every scope the features
   touch for ``intent-model-training``, exactly as a query does (``QueryEngine._grants``), and
   keeps those whose grant budgets still cover the phase's epsilon (a grant carrying a DP
   budget never feeds a phase without DP);
4. reads one row per consenting customer, and nobody else's (``touched`` lists the sids);
5. refuses when fewer customers than the node's minimum (``min-customers``) remain.

After the computation, ``commit`` re-checks in the vault's write transaction that consent did
not shrink and budgets still hold, debits every participating grant (one use, the phase's
epsilon) and appends one access event naming the training run, phase and round: the same
helpers and the same transaction as a query's answer. If that fails the reply is a refusal,
so an update is never released for a use that was not recorded.

The ClientApp ``app`` finds the node through SuperNode's ``--node-config``: ``home`` (the node
home), optional ``passphrase-file`` (else ``SOV_NODE_PASSPHRASE``) and ``min-customers``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent_node import accesslog, engine, grantstore, trainingstore
from agent_node.engine import EngineSettings, QueryEngine
from agent_node.errors import RequestError
from agent_node.home import NodeHome, load_home
from agent_node.query import query_from_dict
from agent_node.vault import Batch, Vault, encrypted_column, iso, plain_column, table_name
from agent_node.vaultcrypto import decrypt_cell
from consent import errors as ce
from consent.integrity import verify_document
from fl import train as fl_train
from fl.client import Refused, Selection, make_client_app, make_secagg_client_app
from fl.protocol import PURPOSE, parse_plan

DEFAULT_MIN_CUSTOMERS = 20
PASSPHRASE_ENV = "SOV_NODE_PASSPHRASE"


class VaultSource:
    def __init__(self, node: NodeHome, vault: Vault, settings: EngineSettings,
                 min_customers: int = DEFAULT_MIN_CUSTOMERS) -> None:
        self.node, self.vault, self.settings = node, vault, settings
        self.datamap = node.datamap()
        self.engine = QueryEngine(vault, self.datamap, node.identity.did, settings)
        self.min_customers = min_customers
        self.touched: set[int] = set()  # every sid whose row was read, for tests and audits
        with vault.transaction() as conn:
            conn.execute(trainingstore.SCHEMA)

    # -- select -------------------------------------------------------------------------------

    def select(self, plan_document: dict[str, Any], run_id: int, phase: str,
               epsilon: float) -> Selection:
        now = datetime.now(UTC)
        try:
            signer = verify_document(plan_document)
        except ce.ConsentError as exc:
            raise Refused(f"the run plan's signature does not verify ({exc}); the requester "
                          "must sign the plan with its did:key") from None
        plan = parse_plan(plan_document, now)
        if signer != plan.requester:
            raise Refused("the run plan is signed by another key than its requester's")
        dataset = self.datamap.datasets.get(plan.dataset)
        if dataset is None or dataset.features is None:
            raise Refused(f"this node declares no features for dataset {plan.dataset!r}")
        if dataset.features != plan.features:
            raise Refused("the plan's features differ from this node's declaration of "
                          f"dataset {plan.dataset!r}; use the node's features")
        self._bind_run(plan.id, run_id, plan.requester, now)
        columns = [dataset.column(c) for c in plan.features.columns]
        scopes = {c.scope for c in columns}
        with self.vault.snapshot() as conn:
            version = engine._consent_version(conn)
            grants = self._grants(conn, plan.requester, plan.dataset, scopes, now, epsilon)
            by_subject = engine._bound_sids(conn, {g.subject for g in grants})
            owners: dict[int, list[Any]] = {}
            for grant in grants:
                for sid in by_subject.get(grant.subject, []):
                    owners.setdefault(sid, []).append(grant)
            if len(owners) < self.min_customers:
                raise Refused(f"only {len(owners)} customers at this node allow this "
                              f"requester {PURPOSE!r} with budget left, fewer than the "
                              f"node's minimum of {self.min_customers}")
            rows = self._rows(conn, dataset, columns, sorted(owners))
            refs = engine._subject_refs(conn, sorted(rows))
        used = [g for g in grants if any(sid in rows for sid in by_subject.get(g.subject, []))]
        return Selection(plan, [rows[sid] for sid in sorted(rows)], self.node.identity.did,
                         [self._digest(g.grant_id) for g in used],
                         handle={"version": version, "grants": used, "sids": sorted(rows),
                                 "refs": [refs[s] for s in sorted(rows)], "run_id": run_id})

    def _grants(self, conn: sqlite3.Connection, requester: str, dataset: str,
                scopes: set[str], now: datetime, epsilon: float) -> list[Any]:
        query = query_from_dict({"dataset": dataset, "purpose": PURPOSE,
                                 "measures": ["count"]})
        try:
            grants = self.engine._grants(conn, query, requester, scopes, now)
        except RequestError as exc:
            raise Refused(str(exc)) from None
        kept = []
        need = _micro(epsilon)
        for grant in grants:
            budget = self._budget(grant)
            if budget is None:
                kept.append(grant)
            elif need > 0 and grant.spent + need <= budget:
                kept.append(grant)  # a budgeted grant never feeds a phase without DP
        return kept

    def _budget(self, grant: Any) -> int | None:
        """The grant's privacy budget in micro-epsilon, None when it has none."""
        if grant.dp_epsilon:
            return _micro(grant.dp_epsilon, up=False)
        if self.settings.dp:  # the node's budget for a grant whose wallet set none
            return _micro(self.settings.grant_budget, up=False)
        return None

    def _rows(self, conn: sqlite3.Connection, dataset: Any, columns: list[Any],
              sids: list[int]) -> dict[int, dict[str, Any]]:
        """One row per customer (the first by row id), decrypted, for ``sids`` only."""
        select = ", ".join(["row_id", "sid", *(
            encrypted_column(c.name) if c.encrypted else plain_column(c.name)
            for c in columns)])
        found: dict[int, dict[str, Any]] = {}
        for row in conn.execute(
                f'SELECT {select} FROM "{table_name(dataset.name)}" WHERE sid IN '
                "(SELECT value FROM json_each(?)) ORDER BY sid, row_id", (_json(sids),)):
            row_id, sid = row[0], row[1]
            if sid in found:
                continue
            self.touched.add(sid)
            cipher = None
            values: dict[str, Any] = {}
            for column, value in zip(columns, row[2:], strict=True):
                if column.encrypted and value is not None:
                    cipher = cipher or self.vault.keys.cell_cipher(self.vault.data_key(conn, sid))
                    value = decrypt_cell(cipher, value,
                                         f"{dataset.name}|{column.name}|{row_id}".encode())
                values[column.name] = value
            found[sid] = values
        return found

    def _bind_run(self, plan_id: str, run_id: int, requester: str, now: datetime) -> None:
        with self.vault.transaction() as conn:
            bound = trainingstore.bind_run(conn, plan_id, str(run_id), requester, iso(now))
        if str(bound) != str(run_id):
            raise Refused(f"this run plan was already used by run {bound}; sign a new plan "
                          "for a new run")

    def _digest(self, grant_id: str) -> str:
        with self.vault.connection() as conn:
            return grantstore.digests(conn, [grant_id]).get(grant_id, "")

    # -- commit -------------------------------------------------------------------------------

    def commit(self, selection: Selection, phase: str, server_round: int,
               epsilon: float) -> None:
        handle = selection.handle
        plan = selection.plan
        now = datetime.now(UTC)
        grants = handle["grants"]
        grant_ids = [g.grant_id for g in grants]
        need = _micro(epsilon)
        budgets = {g.grant_id: b for g in grants if (b := self._budget(g)) is not None}
        (subject_count, subjects_root) = accesslog.set_commitment(handle["refs"])
        (grant_count, grants_root) = accesslog.set_commitment(grant_ids)
        event = accesslog.prepare({
            "v": accesslog.EVENT_VERSION, "time": iso(now), "node": selection.node,
            "requester": plan.requester, "purpose": PURPOSE, "dataset": plan.dataset,
            "outcome": "answered", "reason": "ok", "grant_count": grant_count,
            "grants_root": grants_root, "subject_count": subject_count,
            "subjects_root": subjects_root, "training_run": plan.id,
            "flower_run": str(handle["run_id"]), "phase": phase, "round": server_round,
            "epsilon": epsilon})

        def record(conn: sqlite3.Connection, batch: Batch) -> int:
            if engine._consent_version(conn) != handle["version"]:
                raise Refused("a customer's consent changed during this round; the node "
                              "withholds its update and takes part again next round")
            try:
                engine._check_budgets(conn, grants, need, budgets)
            except engine._Stale:
                raise Refused("a grant's budget was spent during this round; the node "
                              "withholds its update") from None
            engine._debit(conn, [g for g in grant_ids if g in budgets], need)
            engine._debit(conn, [g for g in grant_ids if g not in budgets], 0)
            seq, _ = accesslog.append_batched(conn, batch, event, handle["sids"], grant_ids)
            return int(seq)

        self.vault.commit(record)


def _micro(epsilon: float, *, up: bool = True) -> int:
    from agent_node.privacy import to_micro

    return to_micro(epsilon, up=up) if epsilon else 0


def _json(values: list[int]) -> str:
    import json

    return json.dumps(values)


# -- the ClientApp -----------------------------------------------------------------------------

_sources: dict[str, VaultSource] = {}
_homes: dict[str, NodeHome] = {}  # unlocked before the fork by unlock_home
_lock = threading.Lock()


def _passphrase(node_config: dict[str, Any]) -> str:
    file = node_config.get("passphrase-file")
    return (Path(str(file)).read_text().rstrip("\r\n") if file
            else os.environ.get(PASSPHRASE_ENV, ""))


def unlock_home(node_config: dict[str, Any]) -> None:
    """Unlock the node home once in the process ClientApps are forked from
    (``agent_node.clientapps``), so each one skips the passphrase KDF; the vault itself is
    opened after the fork, by each ClientApp (a SQLite connection must not cross a fork)."""
    home = str(node_config["home"])
    _homes[home] = load_home(Path(home), _passphrase(node_config))


def open_source(node_config: dict[str, Any]) -> VaultSource:
    """The node's source from SuperNode's ``--node-config`` (one per process and home)."""
    home = node_config.get("home")
    if not home:
        raise Refused("this SuperNode has no node home: start it with "
                      "--node-config \"home='/srv/sov-node'\" (sov-node serve --fl does)")
    with _lock:
        found = _sources.get(str(home))
        if found is None:
            node = _homes.get(str(home)) or load_home(Path(str(home)), _passphrase(node_config))
            fl_train.CALIBRATION_CACHE = node.path / "flower" / "noise-calibration.json"
            settings = node.config.privacy_settings()
            found = _sources[str(home)] = VaultSource(
                node, Vault(node.vault_path, node.keys), settings,
                int(node_config.get("min-customers", DEFAULT_MIN_CUSTOMERS)))
        return found


app = make_client_app(lambda context: open_source(dict(context.node_config)))
#: The same node behind Flower's SecAgg+ (legacy API): the run option ``secagg``.
secagg_app = make_secagg_client_app(lambda context: open_source(dict(context.node_config)))
