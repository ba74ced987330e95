"""The coordinator's model registry and lineage: what each training run produced and from whom.

``HOME/models.sqlite`` (this module owns it) keeps per model: its digest (``fl.artifact``), the
Flower run id and plan id, the requester, the per-round metrics, the nodes that took part and
the digests of the grants their customers' data was used under, the ledger receipt of its
signed ``model`` entry, and the artifact and training-curve PNG files under ``HOME/models/``.
``contributed`` answers which models a customer's grants fed, e.g. after a revocation or an
erasure (a revoked customer is left out of every later run by the nodes themselves).

``model_event`` is the ledger entry: the model's digest, the run, a digest of its metrics, the
participating nodes and the grant digests, signed by the coordinator
(``ledger.authority.sign_entry``) before it is appended.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consent.canonical import canonicalize
from fl.protocol import PURPOSE

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    digest TEXT PRIMARY KEY, run_id TEXT NOT NULL, plan_id TEXT NOT NULL,
    requester TEXT NOT NULL, created TEXT NOT NULL, rounds TEXT NOT NULL,
    artifact TEXT NOT NULL, curve TEXT NOT NULL, receipt TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS model_grants (
    digest TEXT NOT NULL, node TEXT NOT NULL, grant_digest TEXT NOT NULL,
    PRIMARY KEY (digest, node, grant_digest)
);
CREATE INDEX IF NOT EXISTS model_grants_by_grant ON model_grants (grant_digest);
"""


def metrics_digest(rounds: list[dict[str, Any]]) -> str:
    return hashlib.sha256(canonicalize(rounds)).hexdigest()


def model_event(model_digest: str, run_id: str, rounds: list[dict[str, Any]],
                nodes: dict[str, list[str]]) -> dict[str, Any]:
    """The unsigned ledger ``model`` entry (sign with ``ledger.authority.sign_entry``)."""
    return {"type": "model", "schema_version": 1,
            "time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "model_digest": model_digest, "run_id": str(run_id),
            "metrics_digest": metrics_digest(rounds), "nodes": sorted(nodes),
            "purpose": PURPOSE,
            "grant_digests": sorted({g for grants in nodes.values() for g in grants})}


def training_curve(rounds: list[dict[str, Any]], path: Path, title: str) -> Path:
    """A PNG of the per-round metrics (loss and AUC where the run released them)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    xs = [r["round"] for r in rounds]
    plotted = 0
    for key in ("train-loss", "eval-loss", "auc", "central-auc", "central-loss"):
        ys = [r.get(key) for r in rounds]
        if any(y is not None for y in ys):
            axis.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=key)
            plotted += 1
    if not plotted:  # DP runs release no noiseless metric: show who took part instead
        axis.plot(xs, [r["nodes"] for r in rounds], marker="o", label="nodes")
    axis.set_xlabel("round")
    axis.set_title(title)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
    return path


class ModelRegistry:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with self._db() as db:
            db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def record(self, digest: str, run_id: str, plan: dict[str, Any],
               rounds: list[dict[str, Any]], nodes: dict[str, list[str]],
               artifact: Path, curve: Path, receipt: str = "") -> None:
        """Store one model and its lineage in one transaction (all or nothing)."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (digest, str(run_id), str(plan["id"]), str(plan["requester"]),
                        datetime.now(UTC).isoformat(timespec="seconds"), json.dumps(rounds),
                        str(artifact), str(curve), receipt))
            db.executemany("INSERT OR IGNORE INTO model_grants VALUES (?, ?, ?)",
                           [(digest, node, g) for node, grants in nodes.items()
                            for g in grants])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def set_receipt(self, digest: str, receipt: str) -> None:
        with self._db() as db:
            db.execute("UPDATE models SET receipt = ? WHERE digest = ?", (receipt, digest))

    def models(self) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT digest, run_id, plan_id, requester, created, rounds, "
                              "artifact, curve, receipt FROM models ORDER BY created").fetchall()
            nodes = db.execute("SELECT digest, node, COUNT(*) FROM model_grants "
                               "GROUP BY digest, node").fetchall()
        by_model: dict[str, dict[str, int]] = {}
        for digest, node, count in nodes:
            by_model.setdefault(digest, {})[node] = count
        return [{"digest": r[0], "run_id": r[1], "plan_id": r[2], "requester": r[3],
                 "created": r[4], "rounds": json.loads(r[5]), "artifact": r[6],
                 "curve": r[7], "receipt": json.loads(r[8]) if r[8] else None,
                 "nodes": by_model.get(r[0], {})} for r in rows]

    def contributed(self, grant_digests: Iterable[str]) -> list[str]:
        """Digests of the models trained on data used under any of ``grant_digests``."""
        wanted = sorted(set(grant_digests))
        if not wanted:
            return []
        with self._db() as db:
            rows = db.execute("SELECT DISTINCT digest FROM model_grants WHERE grant_digest IN "
                              "(SELECT value FROM json_each(?)) ORDER BY digest",
                              (json.dumps(wanted),)).fetchall()
        return [r[0] for r in rows]
