"""Benchmark of local scoring (issue 14 item 6, agent_node.scoring).

Builds a node vault from the bank-marketing table (``--subjects`` customers, three rows each;
2,000 with ``--quick``, 20,000 by default), every customer bound to a wallet that granted the
requester ``marketing-analytics`` on ``transaction``; trains a logistic regression on the
customers' first rows (fl.train), appends its coordinator-signed ``model`` entry to a real
ledger log and installs it with its receipt (``agent_node.scoring.install``). Then, in the
node's query engine (the transport is the same for every question, so it is left out), the
median time of

- the baseline: ``count`` and ``avg:age`` per ``job`` (public keys), a plain DP question over
  the same consenting customers;
- the same question naming the model (``scored_same``): what scoring adds to a question of the
  same shape (each consenting customer's first row read and decrypted where needed, encoded,
  a numpy forward pass, a temp table; the aggregate then reads one row per customer instead of
  three). Target: at most 1.5 x the baseline;
- the score histogram: ``count`` per ``score_band`` with the model;
- the mean score per segment: ``avg:score`` per ``job`` with the model;

each against the baseline measured in the same run. Prints medians and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent_node import scoring  # noqa: E402
from agent_node.engine import QueryEngine  # noqa: E402
from agent_node.grantstore import GrantStore  # noqa: E402
from agent_node.home import init_home  # noqa: E402
from agent_node.vault import Vault, sync  # noqa: E402
from consent.grants import issue_grant  # noqa: E402
from consent.identity import Identity  # noqa: E402
from consent.integrity import sign_document  # noqa: E402
from coordinator.models import model_event  # noqa: E402
from fl import artifact as artifacts  # noqa: E402
from fl import models  # noqa: E402
from fl.features import combine_moments, encode, feature_spec_from_dict, local_moments  # noqa: E402
from fl.protocol import plan_document  # noqa: E402
from fl.train import TrainConfig, train  # noqa: E402
from ledger.authority import sign_entry  # noqa: E402
from ledger.home import init_home as init_ledger  # noqa: E402
from ledger.home import open_log  # noqa: E402

PASS = "bench-passphrase"
PURPOSE = "marketing-analytics"
ROWS_PER_SUBJECT = 3
SOURCE = REPO.parent / "shared" / "datasets" / "bank_marketing" / "bank-additional-full.csv"
JOBS = ["admin.", "blue-collar", "entrepreneur", "housemaid", "management", "retired",
        "self-employed", "services", "student", "technician", "unemployed", "unknown"]
DATAMAP = f"""
[sources.crm]
kind = "csv"
path = "contacts.csv"
[datasets.contacts]
source = "crm"
subject_key = ["customer_id"]
row_key = ["contact_id"]
max_rows_per_subject = {ROWS_PER_SUBJECT}
[datasets.contacts.columns]
age = {{ type = "integer", scope = "transaction", index = true, bounds = [17, 100] }}
job = {{ type = "text", scope = "transaction", public_keys = {json.dumps(JOBS)} }}
y = {{ type = "text", scope = "transaction", public_keys = ["no", "yes"] }}
"""
FEATURES = {"target": {"column": "y", "positive": "yes"},
            "categorical": [["job", JOBS]], "numeric": [["age", 17.0, 100.0]]}


def build(work: Path, subjects: int) -> tuple[Any, Vault, Identity]:
    """A synced node home; every customer bound and granting the requester."""
    home = init_home(work / "node", PASS, name="bench-scoring")
    with SOURCE.open(newline="") as handle:
        base = [(int(r["age"]), r["job"], r["y"]) for r in csv.DictReader(handle, delimiter=";")]
    with (home.path / "contacts.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["customer_id", "contact_id", "age", "job", "y"])
        for i in range(subjects * ROWS_PER_SUBJECT):
            age, job, outcome = base[i % len(base)]
            writer.writerow([f"C{i % subjects:06d}", i, age, job, outcome])
    home.datamap_path.write_text(DATAMAP)
    vault = Vault(home.vault_path, home.keys)
    sync(vault, home.datamap())
    requester = Identity.generate()
    store = GrantStore(vault, home.identity.did, max_ttl=home.config.max_ttl,
                       clock_skew=home.config.clock_skew, default_budget=10.0)
    for i in range(subjects):
        wallet = Identity.generate()
        vault.bind([f"C{i:06d}"], wallet.did)
        store.submit(issue_grant(wallet, requester=requester.did, nodes=[home.identity.did],
                                 purpose=PURPOSE, scopes=["transaction"],
                                 ttl=timedelta(hours=24), dp_epsilon=10.0))
    return home, vault, requester


def publish(work: Path, vault: Vault, requester: Identity) -> tuple[Path, Path, Any, Identity]:
    """Train on the vault's first rows, write the artifact, log its signed entry."""
    with vault.connection() as conn:
        firsts: dict[int, dict[str, Any]] = {}
        for sid, age, job, outcome in conn.execute(
                "SELECT sid, c_age, c_job, c_y FROM ds_contacts ORDER BY sid, row_id"):
            firsts.setdefault(sid, {"age": age, "job": job, "y": outcome})
    rows = list(firsts.values())
    spec = feature_spec_from_dict(FEATURES)
    scaling = combine_moments([local_moments(rows, spec, 5.0)], spec)
    x, y = encode(rows, spec, scaling)
    model = models.build(models.ModelSpec("logreg", 8), spec.width)
    train(model, x, y, TrainConfig(epochs=2, lr=0.3, batch_size=64))
    plan = sign_document(plan_document("urn:uuid:00000000-0000-4000-8000-000000000001",
                                       requester.did, "contacts", spec,
                                       models.ModelSpec("logreg", 8), TrainConfig(),
                                       stats_epsilon=1.0), requester)
    artifact = artifacts.make_artifact(plan, 1, models.get_state(model),
                                       {"mean": scaling.mean, "std": scaling.std})
    digest = artifacts.save(artifact, work / "model.json")
    coordinator = Identity.generate()
    log_key = init_ledger(work / "ledger", origin="bench.ledger/log", passphrase=PASS)
    log = open_log(work / "ledger", PASS)
    try:
        [receipt] = log.append([sign_entry(model_event(digest, "1", [], {
            Identity.generate().did: []}), coordinator)])
    finally:
        log.close()
    (work / "model.receipt.json").write_text(receipt.dumps())
    return work / "model.json", work / "model.receipt.json", log_key, coordinator


def median_ms(call: Callable[[], object], repeat: int) -> float:
    call()  # warm: caches, the parsed model, SQLite pages
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 customers, 5 repeats")
    parser.add_argument("--subjects", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args()
    subjects = args.subjects or (2_000 if args.quick else 20_000)
    repeat = args.repeat or (5 if args.quick else 11)
    with tempfile.TemporaryDirectory(prefix="sov-bench-scoring-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        home, vault, requester = build(work, subjects)
        model_file, receipt_file, log_key, coordinator = publish(work, vault, requester)
        installed, _ = scoring.install(vault, home.datamap(), model_file, receipt_file,
                                       log_key, coordinator.did)
        setup = time.perf_counter() - started
        engine = QueryEngine(vault, home.datamap(), home.identity.did,
                             home.config.privacy_settings())

        def ask(**query: Any) -> Callable[[], object]:
            body = {"dataset": "contacts", "purpose": PURPOSE, "epsilon": 0.05, **query}
            return lambda: engine.run(body, requester.did)

        baseline = median_ms(ask(measures=["count", "avg:age"], group_by=["job"]), repeat)
        same = median_ms(ask(model=installed.digest, measures=["count", "avg:age"],
                             group_by=["job"]), repeat)
        histogram = median_ms(ask(model=installed.digest, measures=["count"],
                                  group_by=["score_band"]), repeat)
        per_job = median_ms(ask(model=installed.digest, measures=["avg:score"],
                                group_by=["job"]), repeat)
        scored = len(engine.models.touched)
    result = {"bench": "scoring", "subjects": subjects, "rows": subjects * ROWS_PER_SUBJECT,
              "scored_customers": scored, "repeat": repeat, "setup_s": round(setup, 1),
              "baseline_ms": round(baseline, 1), "scored_same_ms": round(same, 1),
              "scored_same_vs_baseline": round(same / baseline, 2),
              "histogram_ms": round(histogram, 1),
              "per_segment_ms": round(per_job, 1),
              "histogram_vs_baseline": round(histogram / baseline, 2),
              "per_segment_vs_baseline": round(per_job / baseline, 2),
              "load_avg_1m": round(os.getloadavg()[0], 1)}
    print(f"{subjects} customers x {ROWS_PER_SUBJECT} rows, median of {repeat}:")
    print(f"  plain question (count, avg:age per job)   {baseline:8.1f} ms")
    print(f"  the same question, scored with the model  {same:8.1f} ms  "
          f"x{result['scored_same_vs_baseline']} (target <= 1.5)")
    print(f"  score histogram (count per score_band)    {histogram:8.1f} ms  "
          f"x{result['histogram_vs_baseline']}")
    print(f"  mean score per job                        {per_job:8.1f} ms  "
          f"x{result['per_segment_vs_baseline']}")
    print(f"  {scored} customers scored per scored question; load average "
          f"{result['load_avg_1m']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
