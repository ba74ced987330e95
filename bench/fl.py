"""Round wall time of federated training on Flower's deployment engine (issue 14, Speed).

A real SuperLink (loopback, TLS, SuperNode authentication) behind the fleet gateway
(``coordinator.flower``) and three real SuperNodes (``agent_node.flnode``) over real node vaults
(bank-marketing rows, 40 consenting customers each, built as the tests build them:
``tests.fl.conftest.make_node``). One run of the app trains a DP-SGD logistic regression for
R rounds and then, in the same run, does R **empty rounds**: a ``query.empty`` message that each
ClientApp answers at once without touching the vault or a model, i.e. what a round costs in
Flower alone. The ratio is median(training round) / median(empty round); target <= 1.2.

What is shortened: SuperExec's task poll (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` = 0.05 s, from
1 s), the ServerApp's pull loop (``coordinator.training.BoundedGrid`` polls every 0.05 s here
instead of Flower's 3 s), and each message's ClientApp process: it is forked from the node's
warm process (``agent_node.clientapps``), which has imported Flower, PyTorch, Opacus and the
app and unlocked the node home, instead of a fresh ``flwr-clientapp`` importing them all again.
What cannot be, in flwr 1.41 without patching it: the SuperNode's pull loop sleeps a
hard-coded 3 s when no message is waiting (``flwr.supernode.start_client_internal``) and polls
for the ClientApp's reply every 0.5 s; a training message still opens the vault, checks
consent, trains and commits the access event and budget debits, and the first round of a new
(epsilon, delta, sample rate, epochs) calibrates the DP-SGD noise (Opacus's RDP search, several
CPU seconds, then remembered by the node). The ratio is the median over rounds, so that
one-off first round is reported apart (``first_train_round_s``). Prints one line per round and
ends with one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent_node.flnode import SuperNodeProcess, node_key  # noqa: E402
from consent.identity import Identity  # noqa: E402
from coordinator.flower import FlowerLink  # noqa: E402
from fl.protocol import encode_plan  # noqa: E402
from protos.tls import create_ca  # noqa: E402
from protos.transport import free_port  # noqa: E402
from tests.agent_node.conftest import PASSPHRASE, ROWS, SUBJECTS  # noqa: E402
from tests.fl.conftest import make_node, signed_plan  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "bank_marketing" / "bank-additional-full.csv"


def bank_rows() -> list[dict[str, Any]]:
    import csv

    rows = []
    with DATA.open(newline="") as handle:
        for i, raw in enumerate(csv.DictReader(handle, delimiter=";")):
            if i == ROWS:
                break
            rows.append({"customer_id": f"C{i % SUBJECTS:03d}", "contact_id": i,
                         "age": int(raw["age"]), "job": raw["job"],
                         "duration": int(raw["duration"]), "education": raw["education"],
                         "y": raw["y"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of each kind, not 5")
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    rounds = 3 if args.quick else 5
    tmp = Path(tempfile.mkdtemp(prefix="bench-fl-"))
    rows, requester = bank_rows(), Identity.generate()
    nodes = []
    for i in range(args.nodes):
        (tmp / f"n{i}").mkdir()
        nodes.append(make_node(tmp / f"n{i}", rows[i * 100:] + rows[:i * 100], f"node-{i}",
                               requester))
    passphrase = tmp / "passphrase"
    passphrase.write_text(PASSPHRASE)
    link = FlowerLink(tmp / "link", create_ca("bench CA"), f"127.0.0.1:{free_port()}").start()
    supernodes: list[SuperNodeProcess] = []
    try:
        link.sync_nodes({n.source.node.identity.did: node_key(n.source.node.path)[1]
                         for n in nodes})
        supernodes = [SuperNodeProcess(n.source.node.path, link.fleet_listen, link.ca_path,
                                       passphrase_file=passphrase, min_customers=10).start()
                      for n in nodes]
        link.wait_online(args.nodes, timeout=120)
        config = {"plan": encode_plan(signed_plan(requester, dp=1.0)), "rounds": rounds,
                  "min-nodes": args.nodes, "poll": 0.05, "empty-model": True,
                  "round-timeout": 300.0}
        result = link.run(config, tmp / "run", timeout=3600,
                          progress=lambda e: print(json.dumps(e), flush=True))
    finally:
        for proc in supernodes:
            proc.stop()
        link.stop()
    train = [r["seconds"] for r in result.outcome["rounds"]]
    empty = result.outcome["empty_rounds"]
    print(f"training rounds {train} s; empty rounds {empty} s")
    ratio = statistics.median(train) / statistics.median(empty)
    print(json.dumps({"bench": "fl", "nodes": args.nodes, "rounds": rounds,
                      "train_round_s": statistics.median(train),
                      "first_train_round_s": train[0],
                      "empty_round_s": statistics.median(empty),
                      "ratio": round(ratio, 3), "target": 1.2, "met": ratio <= 1.2,
                      "run_s": round(result.elapsed, 1)}))


if __name__ == "__main__":
    main()
