"""Local scoring with a registered intent model (issue 14 item 6, ``agent_node.scoring``).

A logistic regression is trained in this process on the bank-marketing rows (``fl.train``,
real PyTorch), made into an artifact, and its coordinator-signed ``model`` entry appended to a
real ledger log; the node installs it only with a receipt that verifies against the log key,
names this file's digest and is signed by the expected author. Scored questions go through the
real gRPC node (served in this process so the test can see which rows scoring read) and the
same consent filter, DP noise and budgets as any query.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import tomllib
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w

from agent_node import scoring, spend
from agent_node.client import NodeClient
from agent_node.errors import NotFound
from agent_node.grantstore import GrantStore
from agent_node.node import Node
from agent_node.vaultcrypto import decrypt_cell
from consent.grants import issue_grant, issue_revocation
from consent.identity import Identity
from consent.integrity import sign_document
from consent.keystore import load_identity
from coordinator.home import open_home
from coordinator.models import model_event
from coordinator.training import RunOptions, run_training
from coordinator.trainjob import register
from fl import artifact as artifacts
from fl import models
from fl.features import combine_moments, encode, feature_spec_from_dict, local_moments
from fl.protocol import parse_plan, plan_document
from fl.scoring import scorer
from fl.train import TrainConfig, train
from ledger.authority import sign_entry
from ledger.client import LedgerClient
from ledger.home import init_home as init_ledger
from ledger.home import open_log
from tests.agent_node.conftest import PASSPHRASE, THRESHOLD, in_process_node, run_cli
from tests.coordinator.conftest import init_coordinator, serve_coordinator, stop_process
from tests.fl.conftest import CONSENTING, signed_plan
from tests.fl.conftest import Node as TrainingNode
from tests.fl.test_training_inprocess import FAST, grid_of

PURPOSE = "marketing-analytics"
SCORED = 30  # customers who grant the purpose on the features' scope; the rest do not


def trained_artifact(rows: list[dict[str, Any]], requester: Identity,
                     kind: str = "logreg") -> dict[str, Any]:
    """A model trained centrally on ``rows`` (one per customer), as the coordinator would
    register it after a run."""
    plan = signed_plan(requester, dp=None, kind=kind)
    spec = parse_plan(plan).features
    firsts = list({r["customer_id"]: r for r in reversed(rows)}.values())
    scaling = combine_moments([local_moments(firsts, spec, 5.0)], spec)
    x, y = encode(firsts, spec, scaling)
    model = models.build(models.ModelSpec(kind, 8), spec.width)
    train(model, x, y, TrainConfig(epochs=20, lr=0.3, batch_size=16))
    return artifacts.make_artifact(plan, 7, models.get_state(model),
                                   {"mean": scaling.mean, "std": scaling.std})


@pytest.fixture(scope="module")
def coordinator() -> Identity:
    return Identity.generate()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, bank_rows: list[dict[str, Any]],
              requester: Identity, coordinator: Identity) -> dict[str, Any]:
    """The artifact and its receipt as files, and the log key, as a node operator gets them."""
    tmp = tmp_path_factory.mktemp("published")
    artifact = trained_artifact(bank_rows, requester)
    digest = artifacts.save(artifact, tmp / "model.json")
    log_key = init_ledger(tmp / "ledger", origin="ledger.test/log", passphrase=PASSPHRASE)
    log = open_log(tmp / "ledger", PASSPHRASE)
    try:
        entry = sign_entry(model_event(digest, "7", [], {Identity.generate().did: []}), coordinator)
        [receipt] = log.append([entry])
    finally:
        log.close()
    (tmp / "model.receipt.json").write_text(receipt.dumps())
    (tmp / "log-public.json").write_text(json.dumps(log_key.to_json()))
    return {"digest": digest, "artifact": artifact, "model": tmp / "model.json",
            "receipt": tmp / "model.receipt.json", "log_key": log_key,
            "log_key_file": tmp / "log-public.json", "dir": tmp}


def test_numpy_scores_equal_the_torch_model(bank_rows: list[dict[str, Any]],
                                            requester: Identity) -> None:
    for kind in ("logreg", "mlp"):
        artifact = trained_artifact(bank_rows[:120], requester, kind)
        found = scorer(artifact)
        spec = parse_plan(artifact["plan"]).features
        model = models.build(models.ModelSpec(kind, 8), spec.width)
        models.set_state(model, artifacts.weights_of(artifact))
        x, _ = encode(bank_rows, spec, found.scaling)
        assert np.allclose(found.score(bank_rows), models.predict(model, x), atol=1e-6)
        assert found.digest == artifacts.digest(artifact)


def grant(parts: Any, wallets: list[Identity], requester: Identity,
          scopes: tuple[str, ...] = ("transaction",)) -> list[str]:
    store: GrantStore = parts.store
    node = parts.home.identity.did
    return [store.submit(issue_grant(w, requester=requester.did, nodes=[node], purpose=PURPOSE,
                                     scopes=list(scopes), ttl=timedelta(hours=24)))[0].id
            for w in wallets]


def first_rows(parts: Any, wallets: list[Identity]) -> list[dict[str, Any]]:
    """Each wallet's customer's first row in the vault (by row id), as scoring reads it."""
    with parts.vault.connection() as conn:
        sids = {s for w in wallets for s in parts.vault.sids_for_did(conn, w.did)}
        found: dict[int, dict[str, Any]] = {}
        for sid, age, job in conn.execute("SELECT sid, c_age, c_job FROM ds_contacts "
                                          "ORDER BY sid, row_id"):
            if sid in sids and sid not in found:
                found[sid] = {"age": age, "job": job}
    return list(found.values())


@pytest.fixture()
def node(tmp_path: Path, bank_rows: list[dict[str, Any]]) -> Any:
    return in_process_node(tmp_path, bank_rows, "scoring-node")


def install(parts: Any, published: dict[str, Any], author: str, **files: Path
            ) -> tuple[scoring.InstalledModel, bool]:
    return scoring.install(parts.vault, parts.home.datamap(),
                           files.get("model", published["model"]),
                           files.get("receipt", published["receipt"]), published["log_key"],
                           author)


def test_a_model_is_installed_only_with_a_receipt_naming_it_signed_by_its_author(
        node: Any, published: dict[str, Any], coordinator: Identity) -> None:
    tmp: Path = published["dir"]
    tampered = json.loads(json.dumps(published["artifact"]))
    tampered["weights"]["0.bias"]["values"][0] += 0.5  # one weight changed after publication
    artifacts.save(tampered, tmp / "tampered.json")
    with pytest.raises(scoring.ModelRefused, match=r"digest .* is not the one the ledger"):
        install(node, published, coordinator.did, model=tmp / "tampered.json")
    with pytest.raises(scoring.ModelRefused, match=r"signed by .* not by the expected author"):
        install(node, published, Identity.generate().did)
    receipt = json.loads(published["receipt"].read_text())
    receipt["inclusion_proof"] = receipt["inclusion_proof"][::-1] or ["AAAA"]
    receipt["index"] += 1  # a proof for another place in the log
    (tmp / "bad.receipt.json").write_text(json.dumps(receipt))
    with pytest.raises(scoring.ModelRefused, match="receipt does not verify"):
        install(node, published, coordinator.did, receipt=tmp / "bad.receipt.json")
    assert scoring.installed(node.vault) == []  # nothing written by a refusal
    model, new = install(node, published, coordinator.did)
    assert new and model.digest == published["digest"] and model.author == coordinator.did
    assert model.dataset == "contacts"
    again, new = install(node, published, coordinator.did)
    assert not new and again == model
    assert scoring.installed(node.vault) == [model]


def test_a_scored_question_reads_and_debits_only_consenting_customers(
        node: Any, published: dict[str, Any], coordinator: Identity,
        bank_rows: list[dict[str, Any]], requester: Identity) -> None:
    install(node, published, coordinator.did)
    scored = grant(node, node.wallets[:SCORED], requester)
    # Ten more grant the purpose for another scope than the model's features read: not scored.
    other = grant(node, node.wallets[SCORED:SCORED + 10], requester, ("sentiment",))
    query = {"dataset": "contacts", "purpose": PURPOSE, "model": published["digest"],
             "measures": ["count", "avg:score"], "epsilon": 2.0}
    answer = node.engine.run(query, requester.did)
    with node.vault.connection() as conn:
        wanted = {s for w in node.wallets[:SCORED] for s in node.vault.sids_for_did(conn, w.did)}
        usage = spend.usage(conn, scored + other)
        event = json.loads(conn.execute("SELECT body FROM access_log ORDER BY seq DESC "
                                        "LIMIT 1").fetchone()[0])
    assert node.engine.models.touched == wanted  # nobody else's row was read
    # The exact answer, computed here from the same first row per consenting customer.
    exact = scorer(published["artifact"]).score(first_rows(node, node.wallets[:SCORED]))
    [group] = answer["groups"]
    noisy, interval = group["values"]["avg:score"], group["accuracy"]["avg:score"]["ci95"]
    assert noisy != pytest.approx(float(exact.mean()), abs=1e-9)  # noise was added
    # Within the answer's own accuracy: three 95 % half-widths (a 95 % interval alone would
    # miss the exact value in one run of twenty).
    half = (interval[1] - interval[0]) / 2
    assert half > 0 and abs(noisy - float(exact.mean())) <= 3 * half
    assert answer["dp"]["epsilon"] == 2.0
    assert {g: usage.get(g, (0, 0))[1] for g in scored} == {g: 2_000_000 for g in scored}
    assert all(usage.get(g, (0, 0)) == (0, 0) for g in other)
    assert event["model"] == published["digest"] and event["subject_count"] == SCORED


def test_scores_are_never_released_per_customer_and_need_an_installed_model(
        node: Any, published: dict[str, Any], requester: Identity, coordinator: Identity) -> None:
    grant(node, node.wallets, requester)
    query = {"dataset": "contacts", "purpose": PURPOSE, "model": published["digest"],
             "measures": ["count"], "group_by": ["score_band"]}
    with pytest.raises(NotFound, match=r"no model .* is installed"):
        node.engine.run(query, requester.did)
    install(node, published, coordinator.did)
    answer = node.engine.run(query, requester.did)
    # A histogram over the ten declared bands: group keys only, each a noisy count.
    assert [g["key"] for g in answer["groups"]] == [[b] for b in range(10)]
    assert all(set(g["values"]) == {"count"} for g in answer["groups"])
    with pytest.raises(Exception, match="min would release one customer's exact value"):
        node.engine.run({**query, "measures": ["min:score"], "group_by": []}, requester.did)
    scoring.remove(node.vault, published["digest"])  # uninstalled: refused from now on
    with pytest.raises(NotFound, match=r"no model .* is installed"):
        node.engine.run(query, requester.did)


def test_the_operator_installs_with_sov_node_and_a_requester_asks_over_grpc(
        tmp_path: Path, bank_rows: list[dict[str, Any]], published: dict[str, Any],
        coordinator: Identity, requester: Identity) -> None:
    parts = in_process_node(tmp_path, bank_rows, "grpc-scoring")
    home = str(parts.home.path)
    tampered = json.loads(json.dumps(published["artifact"]))
    tampered["scaling"]["mean"][0] += 1.0
    artifacts.save(tampered, tmp_path / "tampered.json")
    install_args = ["sov-node", "models", "install", "--home", home, "--receipt",
                    str(published["receipt"]), "--author", coordinator.did,
                    "--log-key", str(published["log_key_file"])]
    refused = run_cli(*install_args, str(tmp_path / "tampered.json"), check=False)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("error: the model file's digest ")
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert json.loads(run_cli("sov-node", "models", "list", "--home", home,
                              "--json").stdout) == []
    done = json.loads(run_cli(*install_args, str(published["model"]), "--json").stdout)
    assert done["digest"] == published["digest"] and done["new"] is True
    listed = run_cli("sov-node", "models", "list", "--home", home).stdout
    assert listed.startswith(published["digest"]) and "dataset contacts" in listed

    ids = grant(parts, parts.wallets[:SCORED], requester)
    running = Node.open(home, PASSPHRASE).serve("127.0.0.1:0")
    try:
        with NodeClient(f"127.0.0.1:{running.port}", parts.home.ca_pem(), requester) as client:
            answer = client.query({"dataset": "contacts", "purpose": PURPOSE,
                                   "model": published["digest"], "epsilon": 0.5,
                                   "measures": ["avg:score", "quantile:score:0.5"]}
                                  )["body"]["answer"]
        with NodeClient(f"127.0.0.1:{running.port}", parts.home.ca_pem(),
                        parts.wallets[0]) as wallet:
            [status] = wallet.grant_status(ids[:1])  # the customer sees the debit
        touched = set(running.service.engine.models.touched)
    finally:
        running.stop()
    with parts.vault.connection() as conn:
        wanted = {s for w in parts.wallets[:SCORED]
                  for s in parts.vault.sids_for_did(conn, w.did)}
    assert touched == wanted
    [group] = answer["groups"]
    assert 0.0 <= group["values"]["avg:score"] <= 1.0 and answer["dp"]["epsilon"] == 0.5
    assert "quantile:score:0.5" in group["values"]
    assert status.epsilon_spent == pytest.approx(0.5)


def scoring_section_commands() -> list[str]:
    """The command lines of docs/training.md's Scoring section, continuations joined."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    section = text.split("## Scoring", 1)[1].split("\n## ", 1)[0]
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        lines += [line.strip() for line in block.replace("\\\n", " ").splitlines()
                  if line.strip()]
    return lines


def test_the_documented_scoring_commands_run_as_written(
        tmp_path: Path, bank_rows: list[dict[str, Any]], published: dict[str, Any],
        coordinator: Identity) -> None:
    """docs/training.md's Scoring section, replayed: the operator's install and list, then the
    requester's two questions through sov-query over TLS, on a real node."""
    commands = scoring_section_commands()
    assert [c.split()[:3] for c in commands] == [
        ["sov-node", "models", "install"], ["sov-node", "models", "list"],
        ["sov-query", "ask", "--home"], ["sov-query", "ask", "--home"]]
    parts = in_process_node(tmp_path, bank_rows, "docs-scoring")
    home = parts.home.path
    models_dir = tmp_path / "models"  # as copied from the coordinator's HOME/models
    models_dir.mkdir()
    digest = published["digest"]
    shutil.copy(published["model"], models_dir / f"{digest}.json")
    shutil.copy(published["receipt"], models_dir / f"{digest}.receipt.json")
    shutil.copy(published["log_key_file"], home / "log-public.json")
    config = tomllib.loads((home / "node.toml").read_text())
    config["node"]["ledger_log_key"] = "log-public.json"  # the operator's guide's way
    (home / "node.toml").write_text(tomli_w.dumps(config))
    queries = tmp_path / "sov-query"
    run_cli("sov-query", "init", "--home", str(queries))
    crm = load_identity(queries / "requester.key", PASSPHRASE)
    grant(parts, parts.wallets[:SCORED], crm)
    (tmp_path / "ca.pem").write_bytes(parts.home.ca_pem())
    running = Node.open(home, PASSPHRASE).serve("127.0.0.1:0")
    outputs = []
    try:
        for command in commands:
            line = (command.replace("/srv/node", str(home))
                    .replace("/srv/models", str(models_dir)).replace("DIGEST", digest)
                    .replace("did:key:z6MkCoordinator", coordinator.did)
                    .replace("~/.sov-query", str(queries))
                    .replace("node.acme.example:7443", f"127.0.0.1:{running.port}")
                    .replace(" ca.pem", f" {tmp_path / 'ca.pem'}"))
            outputs.append(run_cli(*shlex.split(line)).stdout)
        touched = set(running.service.engine.models.touched)
    finally:
        running.stop()
    assert outputs[0].startswith(f"installed {digest}") and outputs[1].startswith(digest)
    histogram, mean = json.loads(outputs[2]), json.loads(outputs[3])
    assert histogram["group_by"] == ["score_band"] and histogram["dp"]["delta"] == 0
    assert [g["key"] for g in histogram["groups"]] == [[b] for b in range(10)]
    [group] = mean["groups"]
    assert set(group["values"]) == {"avg:score", "quantile:score:0.9"}
    with parts.vault.connection() as conn:
        assert touched == {s for w in parts.wallets[:SCORED]
                           for s in parts.vault.sids_for_did(conn, w.did)}


def test_a_revoked_customer_is_not_scored_again(
        node: Any, published: dict[str, Any], coordinator: Identity,
        requester: Identity) -> None:
    install(node, published, coordinator.did)
    ids = grant(node, node.wallets[:SCORED], requester)
    query = {"dataset": "contacts", "purpose": PURPOSE, "model": published["digest"],
             "measures": ["sum:score"], "epsilon": 0.2}
    node.engine.run(query, requester.did)
    node.store.revoke(issue_revocation(node.wallets[0], ids[0]))
    node.engine.models.touched.clear()
    node.engine.run(query, requester.did)
    with node.vault.connection() as conn:
        revoked = set(node.vault.sids_for_did(conn, node.wallets[0].did))
        others = {s for w in node.wallets[1:SCORED] for s in node.vault.sids_for_did(conn, w.did)}
    assert node.engine.models.touched == others and not revoked & others


def test_threshold_mode_answers_scored_questions_exactly_for_groups_of_k(
        tmp_path: Path, bank_rows: list[dict[str, Any]], published: dict[str, Any],
        coordinator: Identity, requester: Identity) -> None:
    parts = in_process_node(tmp_path, bank_rows, "threshold-scoring", THRESHOLD)
    install(parts, published, coordinator.did)
    grant(parts, parts.wallets, requester)
    answer = parts.engine.run({"dataset": "contacts", "purpose": PURPOSE, "model":
                               published["digest"], "measures": ["count", "avg:score"],
                               "group_by": ["score_band"]}, requester.did)
    scores = scorer(published["artifact"]).score(first_rows(parts, parts.wallets))
    bands = np.minimum((scores * 10).astype(int), 9)
    expected = {int(b): int((bands == b).sum()) for b in set(bands.tolist())
                if (bands == b).sum() >= 5}
    assert {g["key"][0]: g["values"]["count"] for g in answer["groups"]} == expected
    for g in answer["groups"]:
        assert g["values"]["avg:score"] == pytest.approx(
            float(scores[bands == g["key"][0]].mean()))


def test_a_model_the_coordinator_registered_is_installed_and_scores(
        tmp_path: Path, nodes: list[TrainingNode], requester: Identity) -> None:
    """End to end: a federated run's model registered by the coordinator (its receipt from the
    ledger service the coordinator hosts, written beside the artifact), installed at one of
    the nodes that trained it and used for a scored question there."""
    plan = signed_plan(requester, dp=1.0)
    outcome = run_training(grid_of([n.source for n in nodes], run_id=43), plan,
                           RunOptions(rounds=1, min_nodes=3, **FAST)).to_json()
    home = open_home(init_coordinator(tmp_path / "coord", host_ledger=True))
    identity = home.identity(PASSPHRASE)
    served = serve_coordinator(home.path)
    try:
        with LedgerClient(served.address, served.ca_pem) as ledger:
            model = register(home, identity, plan, 43, outcome, ledger=ledger)
            log_key = ledger.log_key
    finally:
        stop_process(served.process)
    receipt_file = model.artifact.with_name(f"{model.digest}.receipt.json")
    assert json.loads(receipt_file.read_text()) == model.receipt
    node = nodes[0]
    installed, _ = scoring.install(node.vault, node.source.datamap, model.artifact,
                                   receipt_file, log_key, identity.did)
    assert installed.digest == model.digest and installed.run_id == "43"
    # Five of the node's customers granted marketing-analytics (tests/fl/conftest.py): only
    # they are scored; the forty who granted intent-model-training only are not.
    engine = node.source.engine
    answer = engine.run({"dataset": "contacts", "purpose": "marketing-analytics",
                         "model": model.digest, "measures": ["count"], "epsilon": 0.5},
                        requester.did)
    assert engine.models.touched == node.sids(node.wallets[CONSENTING:CONSENTING + 5])
    assert answer["dp"]["epsilon"] == 0.5 and len(answer["groups"]) == 1


def test_a_model_reading_an_encrypted_column_scores_only_customers_granting_its_scope(
        node: Any, bank_rows: list[dict[str, Any]], requester: Identity,
        coordinator: Identity, tmp_path: Path) -> None:
    """A model whose features include ``education`` (scope ``identity``, SM4-encrypted in the
    vault): a customer is scored only when their grant covers ``identity`` too, and the
    encrypted cells are decrypted for those customers only."""
    spec = feature_spec_from_dict({"target": {"column": "y", "positive": "yes"},
                                   "categorical": [["education", ["basic.4y", "high.school",
                                                                  "university.degree"]]],
                                   "numeric": [["age", 17.0, 100.0]]})
    rows = first_rows_with_education(node)
    scaling = combine_moments([local_moments(rows, spec, 5.0)], spec)
    model = models.build(models.ModelSpec("logreg", 8), spec.width)
    x, y = encode(rows, spec, scaling)
    train(model, x, y, TrainConfig(epochs=5, lr=0.3, batch_size=16))
    plan = sign_document(plan_document(f"urn:uuid:{uuid.uuid4()}", requester.did, "contacts",
                                       spec, models.ModelSpec("logreg", 8), TrainConfig(),
                                       stats_epsilon=1.0), requester)
    artifact = artifacts.make_artifact(plan, 9, models.get_state(model),
                                       {"mean": scaling.mean, "std": scaling.std})
    digest = artifacts.save(artifact, tmp_path / "edu.json")
    log_key = init_ledger(tmp_path / "ledger", origin="ledger.test/edu", passphrase=PASSPHRASE)
    log = open_log(tmp_path / "ledger", PASSPHRASE)
    try:
        [receipt] = log.append([sign_entry(model_event(digest, "9", [], {
            Identity.generate().did: []}), coordinator)])
    finally:
        log.close()
    (tmp_path / "edu.receipt.json").write_text(receipt.dumps())
    scoring.install(node.vault, node.home.datamap(), tmp_path / "edu.json",
                    tmp_path / "edu.receipt.json", log_key, coordinator.did)
    grant(node, node.wallets[:20], requester, ("transaction", "identity"))
    grant(node, node.wallets[20:SCORED], requester)  # transaction only: not scored
    # identity only: not scored either (the model reads age, a transaction column)
    grant(node, node.wallets[SCORED:SCORED + 5], requester, ("identity",))
    answer = node.engine.run({"dataset": "contacts", "purpose": PURPOSE, "model": digest,
                              "measures": ["avg:score"], "epsilon": 1.0}, requester.did)
    with node.vault.connection() as conn:
        wanted = {s for w in node.wallets[:20] for s in node.vault.sids_for_did(conn, w.did)}
    assert node.engine.models.touched == wanted
    exact = scorer(artifact).score([r for r in first_rows_with_education(node)
                                    if r["sid"] in wanted])
    [group] = answer["groups"]
    low, high = group["accuracy"]["avg:score"]["ci95"]
    assert abs(group["values"]["avg:score"] - float(exact.mean())) <= 3 * (high - low) / 2


def first_rows_with_education(parts: Any) -> list[dict[str, Any]]:
    """Every customer's first vault row with its decrypted education (the test reads the
    vault as the node's operator could)."""
    found: dict[int, dict[str, Any]] = {}
    with parts.vault.connection() as conn:
        for row_id, sid, age, blob, outcome in conn.execute(
                "SELECT row_id, sid, c_age, e_education, e_y FROM ds_contacts "
                "ORDER BY sid, row_id"):
            if sid in found:
                continue
            cipher = parts.vault.keys.cell_cipher(parts.vault.data_key(conn, sid))
            found[sid] = {"sid": sid, "age": age,
                          "education": decrypt_cell(cipher, blob,
                                                    f"contacts|education|{row_id}".encode()),
                          "y": decrypt_cell(cipher, outcome, f"contacts|y|{row_id}".encode())}
    return list(found.values())
