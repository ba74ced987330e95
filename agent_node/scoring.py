"""Local scoring with registered intent models (issue 14, item 6).

**Installing.** ``install`` takes a model artifact (``fl.artifact``, what the coordinator
writes as ``models/DIGEST.json``) and the ledger receipt of its ``model`` entry
(``models/DIGEST.receipt.json``) and checks, before anything is stored:

1. the receipt against the ledger's log key (``ledger.verify.verify_receipt``: the log's
   signature on the tree head and the entry's inclusion proof);
2. that the entry is a ``model`` entry naming this file's digest (SHA-256 of its RFC 8785
   JSON), so a changed file, or another model, is refused;
3. the entry's author signature (``ledger.authority.verify_author``) and that the author is
   the one the operator trusts to publish models (the coordinator's DID);
4. that the model can score this node's dataset: the dataset exists and has every feature
   column, numeric features on numeric columns (``fl.scoring.scorer`` checks the weights fit
   the features and are finite).

The model is then one row of the vault table ``installed_models`` (this module owns it): the
artifact, the receipt, the author and when. It holds nothing about customers.

**Scoring.** A query naming a model (``"model": DIGEST``, ``sov-query ask --model``) is
answered by the query engine exactly as any other query (consent filter, DP noise, budgets,
access event, which names the model), over a dataset with two more columns:

- ``score``: the customer's score in [0, 1] (``bounds = [0, 1]``);
- ``score_band``: ``floor(10 * score)``, 0 to 9, declared public keys (a histogram of the
  scores per segment needs no partition selection; one band per customer).

The score is computed when the query is read, from one row per consenting customer (the first
by row order, as in training), only for the customers in the query's consent filter
(``temp._eligible``): nobody else's row is read, and no score is stored or released per
customer. The query's scopes are those of its own columns plus those of the model's features,
so only customers whose grants cover both are scored.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent_node import locations
from agent_node.datamap import ColumnSpec, DataMap, DatasetSpec
from agent_node.errors import ConfigError, InvalidRequest, NotFound
from agent_node.vault import Vault, encrypted_column, iso, plain_column, table_name
from agent_node.vaultcrypto import decrypt_cell
from fl import artifact as artifacts
from fl.scoring import Scorer, scorer

SCHEMA = ("CREATE TABLE IF NOT EXISTS installed_models (digest TEXT PRIMARY KEY, "
          "dataset TEXT NOT NULL, author TEXT NOT NULL, run_id TEXT NOT NULL, "
          "ledger_origin TEXT NOT NULL, ledger_index INTEGER NOT NULL, "
          "entry_hash TEXT NOT NULL, installed_at TEXT NOT NULL, artifact TEXT NOT NULL, "
          "receipt TEXT NOT NULL) WITHOUT ROWID")
SCORE = "score"
BAND = "score_band"
BANDS = 10
VIRTUAL = (SCORE, BAND)
SCORE_CACHE_SIZE = 32


class ModelRefused(ConfigError):
    """The model file or its ledger receipt does not pass a check; the message says which."""


# -- installing ------------------------------------------------------------------------------

@dataclass(frozen=True)
class InstalledModel:
    digest: str
    dataset: str
    author: str
    run_id: str
    ledger_origin: str
    ledger_index: int
    entry_hash: str
    installed_at: str

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "dataset": self.dataset, "author": self.author,
                "run_id": self.run_id, "ledger": {"origin": self.ledger_origin,
                                                  "index": self.ledger_index,
                                                  "entry_hash": self.entry_hash},
                "installed_at": self.installed_at}


def verify(artifact: dict[str, Any], receipt_text: str, log_key: Any, author: str,
           datamap: DataMap) -> tuple[Scorer, Any]:
    """The model's scorer and its verified receipt, or ``ModelRefused`` saying what failed."""
    from ledger.authority import verify_author
    from ledger.errors import LedgerError
    from ledger.verify import CheckFailed, load_receipt, verify_receipt

    try:
        found = scorer(artifact)
    except artifacts.ArtifactError as exc:
        raise ModelRefused(f"the model file is refused: {exc}") from None
    try:
        receipt = load_receipt(receipt_text)
        verify_receipt(receipt, log_key)
    except CheckFailed as exc:
        raise ModelRefused(f"the ledger receipt does not verify ({exc}); get the receipt "
                           "the coordinator stored with the model") from None
    event = receipt.event
    if event.get("type") != "model":
        raise ModelRefused(f"the ledger entry is a {event.get('type')!r} entry, not a 'model' "
                           "entry")
    if event.get("model_digest") != found.digest:
        raise ModelRefused(f"the model file's digest {found.digest[:16]}... is not the one "
                           f"the ledger entry names ({str(event.get('model_digest'))[:16]}...):"
                           " the file was changed, or the receipt is another model's")
    try:
        signer = verify_author(event, receipt.entry)
    except LedgerError as exc:
        raise ModelRefused(f"the ledger entry's author signature does not verify ({exc})"
                           ) from None
    if signer != author:
        raise ModelRefused(f"the model entry is signed by {signer}, not by the expected "
                           f"author {author}; install only models the coordinator published")
    dataset = datamap.datasets.get(found.dataset)
    if dataset is None:
        raise ModelRefused(f"the model scores dataset {found.dataset!r}, which is not in this "
                           "node's data map")
    missing = [c for c in found.columns if c not in dataset.columns]
    if missing:
        raise ModelRefused(f"the model reads column {missing[0]!r}, which dataset "
                           f"{found.dataset!r} of this node's data map does not have")
    text = _text_numbers(found, dataset)
    if text:
        raise ModelRefused(f"the model reads column {text!r} as a number, but dataset "
                           f"{found.dataset!r} of this node's data map has it as text")
    clash = [c for c in VIRTUAL if c in dataset.columns]
    if clash:
        raise ModelRefused(f"dataset {found.dataset!r} has a column named {clash[0]!r}, the "
                           "name scored questions give the model's score; rename it in the "
                           "data map")
    return found, receipt


def install(vault: Vault, datamap: DataMap, model_file: Path, receipt_file: Path,
            log_key: Any, author: str, now: datetime | None = None
            ) -> tuple[InstalledModel, bool]:
    """Verify and record a model; (the installed model, whether it is new). Nothing is
    written unless every check passes."""
    try:
        artifact = artifacts.load(model_file)
    except artifacts.ArtifactError as exc:
        raise ModelRefused(str(exc)) from None
    try:
        receipt_text = Path(receipt_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelRefused(f"cannot read the receipt {receipt_file}: {exc.strerror}") from None
    found, receipt = verify(artifact, receipt_text, log_key, author, datamap)
    model = InstalledModel(found.digest, found.dataset, author, found.run_id, receipt.origin,
                           receipt.index, receipt.entry_hash, iso(now or datetime.now(UTC)))
    with vault.transaction() as conn:
        conn.execute(SCHEMA)
        known = conn.execute("SELECT 1 FROM installed_models WHERE digest = ?",
                             (model.digest,)).fetchone()
        if known is None:
            conn.execute("INSERT INTO installed_models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (model.digest, model.dataset, model.author, model.run_id,
                          model.ledger_origin, model.ledger_index, model.entry_hash,
                          model.installed_at, json.dumps(artifact), receipt.dumps()))
    if known is not None:
        return installed(vault, model.digest), False
    return model, True


def installed(vault: Vault, digest: str | None = None) -> Any:
    """Every installed model (a list), or the one with ``digest`` (``NotFound`` if none)."""
    with vault.connection() as conn:
        rows = _rows(conn, "SELECT digest, dataset, author, run_id, ledger_origin, "
                     "ledger_index, entry_hash, installed_at FROM installed_models"
                     + (" WHERE digest = ?" if digest else "") + " ORDER BY installed_at",
                     (digest,) if digest else ())
    models = [InstalledModel(*row) for row in rows]
    if digest is None:
        return models
    if not models:
        raise NotFound(f"no model {digest[:16]}... is installed at this node; the operator "
                       "installs it with 'sov-node models install'", reason="unknown-model")
    return models[0]


def remove(vault: Vault, digest: str) -> InstalledModel:
    model = installed(vault, digest)
    with vault.transaction() as conn:
        conn.execute("DELETE FROM installed_models WHERE digest = ?", (digest,))
    return model  # type: ignore[no-any-return]


def _rows(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []  # no model was ever installed
        raise


# -- scoring -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScoredDataset(DatasetSpec):
    """A dataset as a scored question sees it: the node's dataset plus ``score`` and
    ``score_band``, one row per customer (``max_rows_per_subject`` 1)."""

    base: DatasetSpec | None = None
    scorer: Scorer | None = None
    models: Models | None = field(default=None, compare=False)

    def build_source(self, conn: sqlite3.Connection, vault: Vault,
                     columns: dict[str, ColumnSpec]) -> str:
        """The temp table ``_work`` a scored question aggregates: for each customer in the
        consent filter (``temp._eligible``) their first row's ``columns``, with the score."""
        assert self.base is not None and self.scorer is not None and self.models is not None
        base, model = self.base, self.scorer
        wanted = [c for c in columns if c not in VIRTUAL]
        read = [base.columns[c] for c in dict.fromkeys([*wanted, *model.columns])]
        select = ", ".join(["row_id", "sid", "rfp", *(
            encrypted_column(c.name) if c.encrypted else plain_column(c.name) for c in read)])
        first: dict[int, tuple[Any, ...]] = {}
        for row in conn.execute(f'SELECT {select} FROM "{table_name(base.name)}" WHERE sid IN '
                                "(SELECT sid FROM temp._eligible) ORDER BY sid, row_id"):
            first.setdefault(row[1], row)
        records: list[dict[str, Any]] = []
        for sid, row in first.items():
            cipher = None
            values: dict[str, Any] = {}
            for column, value in zip(read, row[3:], strict=True):
                if column.encrypted and value is not None:
                    cipher = cipher or vault.keys.cell_cipher(vault.data_key(conn, sid))
                    value = decrypt_cell(cipher, value,
                                         f"{base.name}|{column.name}|{row[0]}".encode())
                values[column.name] = value
            records.append(values)
        self.models.touched = set(first)  # the last question's only: bounded memory
        scores = model.score(records) if records else np.zeros(0)
        names = ["sid", "rfp", *(plain_column(c) for c in wanted),
                 plain_column(SCORE), plain_column(BAND)]
        conn.execute("DROP TABLE IF EXISTS temp._work")
        conn.execute(f"CREATE TEMP TABLE _work ({', '.join(names)})")
        conn.executemany(
            f"INSERT INTO _work VALUES ({', '.join('?' for _ in names)})",
            [[sid, row[2], *(values[c] for c in wanted), float(s),
              min(int(s * BANDS), BANDS - 1)]
             for (sid, row), values, s in zip(first.items(), records, scores, strict=True)])
        return "_work"


class Models:
    """The engine's view of the installed models: resolves a query's ``model`` to its scored
    dataset (parsed artifacts cached by digest: a digest names one artifact forever) and
    records which customers' rows the last scored question read (``touched``, sids, for tests
    and audits)."""

    def __init__(self, vault: Vault, datamap: DataMap) -> None:
        self.vault, self.datamap = vault, datamap
        self.touched: set[int] = set()
        self._scorers: dict[str, Scorer] = {}
        self._lock = threading.Lock()

    def dataset(self, dataset: DatasetSpec, digest: str) -> tuple[ScoredDataset, set[str]]:
        """The scored dataset of ``dataset`` under model ``digest`` and the scopes its
        features touch; ``NotFound`` / ``InvalidRequest`` when the model cannot score it."""
        with self.vault.connection() as conn:  # still installed? (removal is immediate)
            rows = _rows(conn, "SELECT dataset FROM installed_models WHERE digest = ?",
                         (digest,))
        if not rows:
            raise NotFound(f"no model {digest[:16]}... is installed at this node; the "
                           "operator installs it with 'sov-node models install'",
                           reason="unknown-model")
        if rows[0][0] != dataset.name:
            raise InvalidRequest(f"model {digest[:16]}... scores dataset {rows[0][0]!r}, not "
                                 f"{dataset.name!r}", reason="model-dataset")
        with self._lock:
            found = self._scorers.get(digest)
        if found is None:  # parsed once: a digest names one artifact forever
            with self.vault.connection() as conn:
                stored = _rows(conn, "SELECT artifact FROM installed_models WHERE "
                               "digest = ?", (digest,))
            if not stored:  # removed in between
                raise NotFound(f"no model {digest[:16]}... is installed at this node",
                               reason="unknown-model")
            found = scorer(json.loads(stored[0][0]))
            with self._lock:
                if len(self._scorers) >= SCORE_CACHE_SIZE:
                    self._scorers.clear()
                self._scorers[digest] = found
        missing = [c for c in found.columns if c not in dataset.columns]
        if missing:  # the data map changed since the model was installed
            raise InvalidRequest(f"model {digest[:16]}... reads column {missing[0]!r}, which "
                                 f"dataset {dataset.name!r} no longer has in this node's data "
                                 "map", reason="model-dataset")
        text = _text_numbers(found, dataset)
        if text:  # every question would fail on the first value that is not a number
            raise InvalidRequest(f"model {digest[:16]}... reads column {text!r} as a number, "
                                 f"which dataset {dataset.name!r} now has as text in this "
                                 "node's data map", reason="model-dataset")
        scopes = {dataset.columns[c].scope for c in found.columns}
        scope = sorted(scopes)[0]  # the virtual columns' own tier; every scope is checked
        extra = {
            SCORE: ColumnSpec(SCORE, "real", scope, "", bounds=(0.0, 1.0)),
            BAND: ColumnSpec(BAND, "integer", scope, "", public_keys=tuple(range(BANDS)),
                             groups_per_subject=1),
        }
        scored = ScoredDataset(**{**_fields(dataset), "columns": {**dataset.columns, **extra},
                                  "max_rows_per_subject": 1},
                               base=dataset, scorer=found, models=self)
        return scored, scopes


def _text_numbers(found: Scorer, dataset: DatasetSpec) -> str | None:
    """The first numeric feature whose column the data map types as text, if any (its
    values would not convert: a scored question must not fail on one customer's value)."""
    for column, _, _ in found.features.numeric:
        spec = dataset.columns.get(column)
        if spec is not None and not spec.numeric:
            return str(column)
    return None


def _fields(dataset: DatasetSpec) -> dict[str, Any]:
    """A dataset's own fields (``dataclasses.replace`` cannot make the subclass)."""
    return {f.name: getattr(dataset, f.name) for f in fields(DatasetSpec)}

locations.table("installed_models", "agent_node.scoring", "", "none")
