"""Fixtures for training tests: in-process nodes (real vaults, grants, access logs) whose
data map declares intent-model features, and signed run plans."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_node.engine import EngineSettings
from agent_node.training import VaultSource
from consent.grants import issue_grant
from consent.identity import Identity
from consent.integrity import sign_document
from fl.models import ModelSpec
from fl.protocol import PURPOSE, plan_document
from fl.train import DPConfig, TrainConfig
from tests.agent_node import conftest as node_fixtures
from tests.agent_node.conftest import DATASET_TOML, in_process_node

FEATURES_TOML = """
[datasets.contacts.features]
target = { column = "y", positive = "yes" }
categorical = { job = ["admin.", "blue-collar", "technician", "services", "management"] }
numeric = ["age"]
"""
bank_rows = node_fixtures.bank_rows  # the same session fixture, visible here
CONSENTING = 40  # of the 50 customers per node; 5 grant another purpose, 5 nothing


@dataclass
class Node:
    source: VaultSource
    wallets: list[Identity]
    grant_ids: list[str]  # the consenting customers' training grants
    store: Any
    vault: Any

    def sids(self, wallets: list[Identity]) -> set[int]:
        with self.vault.connection() as conn:
            return {sid for w in wallets for sid in self.vault.sids_for_did(conn, w.did)}


def make_node(tmp: Path, rows: list[dict[str, Any]], name: str, requester: Identity,
              min_customers: int = 10) -> Node:
    parts = in_process_node(tmp, rows, name)
    parts.home.datamap_path.write_text(parts.home.datamap_path.read_text() + FEATURES_TOML)
    assert DATASET_TOML in parts.home.datamap_path.read_text()
    did = parts.home.identity.did
    ids = []
    for i, wallet in enumerate(parts.wallets):
        if i >= CONSENTING + 5:
            continue
        purpose = PURPOSE if i < CONSENTING else "marketing-analytics"
        credential = issue_grant(wallet, requester=requester.did, nodes=[did], purpose=purpose,
                                 scopes=["transaction", "sentiment"], ttl=timedelta(hours=24),
                                 dp_epsilon=10.0)
        grant, _ = parts.store.submit(credential)
        if purpose == PURPOSE:
            ids.append(grant.id)
    source = VaultSource(parts.home, parts.vault, EngineSettings(k=5), min_customers)
    return Node(source, parts.wallets, ids, parts.store, parts.vault)


@pytest.fixture(scope="session")
def requester() -> Identity:
    return Identity.generate()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]],
          requester: Identity) -> list[Node]:
    return [make_node(tmp_path_factory.mktemp(f"fl-node-{i}"), bank_rows[i * 100:] +
                      bank_rows[:i * 100], f"node-{i}", requester) for i in range(3)]


def signed_plan(requester: Identity, *, dp: float | None = 1.0, epochs: int = 1,
                stats_epsilon: float = 0.5, kind: str = "logreg", **kwargs: Any
                ) -> dict[str, Any]:
    import tomllib

    from agent_node.datamap import parse_datamap  # the nodes' declaration, parsed alike

    declared = parse_datamap(tomllib.loads(
        '[sources.crm]\nkind = "csv"\npath = "x"\n' + DATASET_TOML + FEATURES_TOML),
        Path(".")).datasets["contacts"].features
    train = TrainConfig(epochs=epochs, lr=0.3, batch_size=16,
                        dp=None if dp is None else DPConfig(dp, 1e-3, 1.0))
    return sign_document(plan_document(f"urn:uuid:{uuid.uuid4()}", requester.did, "contacts",
                                       declared, ModelSpec(kind, 8), train,
                                       stats_epsilon=stats_epsilon, **kwargs), requester)
