"""Benchmark of the agent node (issue 3, Speed).

Builds a vault from the bank-marketing table replicated and perturbed to --rows rows
(1,000,000 by default, 100,000 with --quick), then measures
- a group-by aggregate end to end (gRPC + TLS, sealing, consent filtering, signing) against
  the same aggregate in raw sqlite3 in-process (target <= 1.5);
- small indexed queries from 32 concurrent clients against a bare grpcio echo server over
  the same TLS (target >= 0.5);
- the idle resident memory of a `sov-node serve` process.
Prints medians and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent_node.client import NodeClient  # noqa: E402
from agent_node.home import init_home, load_home  # noqa: E402
from agent_node.requester import Requester  # noqa: E402
from agent_node.server import start  # noqa: E402
from agent_node.vault import Vault, sync  # noqa: E402
from consent.grants import issue_grant  # noqa: E402
from consent.identity import Identity  # noqa: E402
from protos.transport import secure_channel, serve  # noqa: E402

PASS = "bench-passphrase"
DATAMAP = """
[sources.crm]
kind = "sqlite"
path = "crm.db"
[datasets.contacts]
source = "crm"
table = "contacts"
subject_key = ["customer_id"]
row_key = ["contact_id"]
[datasets.contacts.columns]
age = { type = "integer", scope = "transaction", index = true }
job = { type = "text", scope = "transaction", index = true }
duration = { type = "integer", scope = "transaction" }
"""


def build_source(path: Path, rows: int, subjects: int) -> None:
    source = REPO.parent / "shared" / "datasets" / "bank_marketing" / "bank-additional-full.csv"
    with source.open(newline="") as handle:
        base = [(int(r["age"]), r["job"], int(r["duration"]))
                for r in csv.DictReader(handle, delimiter=";")]
    rng = random.Random(7)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE contacts (customer_id TEXT, contact_id INTEGER, age INTEGER, "
                 "job TEXT, duration INTEGER)")
    batch = []
    for i in range(rows):
        age, job, duration = base[i % len(base)]
        batch.append((f"C{i % subjects:05d}", i, age + rng.randint(-2, 2), job,
                      max(0, duration + rng.randint(-30, 30))))
        if len(batch) == 50_000:
            conn.executemany("INSERT INTO contacts VALUES (?, ?, ?, ?, ?)", batch)
            batch.clear()
    conn.executemany("INSERT INTO contacts VALUES (?, ?, ?, ?, ?)", batch)
    conn.commit()
    conn.close()


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def throughput(call, clients: int, seconds: float) -> float:
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        while time.perf_counter() < stop:
            call(i)
            done[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / seconds


def echo_server(home) -> tuple[object, int]:
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)})
    cert, key = home.server_tls()
    running = serve(lambda s: s.add_generic_rpc_handlers((handler,)), ["bench.Echo"],
                    address="127.0.0.1:0", cert_pem=cert, key_pem=key)
    return running, running.port


def idle_rss_mib(home_dir: Path) -> float:
    env = {**os.environ, "SOV_NODE_PASSPHRASE": PASS}
    port_file = home_dir / "port"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "sov-node"), "serve", "--home",
                             str(home_dir), "--listen", "127.0.0.1:0", "--port-file",
                             str(port_file)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while not port_file.exists():
            time.sleep(0.1)
        time.sleep(1.0)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        kib = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
        return kib / 1024
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=None)
    args = parser.parse_args()
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    subjects = 100 if args.quick else 400
    seconds = 3.0 if args.quick else 8.0
    with tempfile.TemporaryDirectory() as tmp:
        home_dir = Path(tmp) / "node"
        init_home(home_dir, PASS, name="bench")
        (home_dir / "datamap.toml").write_text(DATAMAP)
        build_source(home_dir / "crm.db", rows, subjects)
        home = load_home(home_dir, PASS)
        vault = Vault(home.vault_path, home.keys)
        started = time.perf_counter()
        sync(vault, home.datamap())
        print(f"vault: {rows} rows, {subjects} subjects, sync {time.perf_counter() - started:.1f}s")
        wallets = [Identity.generate() for _ in range(subjects)]
        for i, wallet in enumerate(wallets):
            vault.bind([f"C{i:05d}"], wallet.did)
        node = start(home, address="127.0.0.1:0")
        address = f"127.0.0.1:{node.port}"
        requester = Identity.generate()
        for wallet in wallets:
            credential = issue_grant(wallet, requester=requester.did, nodes=[home.identity.did],
                                     purpose="marketing-analytics", scopes=["transaction"],
                                     ttl=timedelta(hours=24))
            node.service.grants.submit(credential)
        client = NodeClient(address, home.ca_pem(), requester, timeout=120)
        asker = Requester(requester)
        group_query = {"dataset": "contacts", "purpose": "marketing-analytics",
                       "measures": ["count", "sum:duration", "avg:age"], "group_by": ["job"]}
        e2e = median_time(lambda: asker.ask_with(client, group_query), 5)
        raw = sqlite3.connect(home_dir / "crm.db")
        baseline = median_time(lambda: raw.execute(
            "SELECT job, COUNT(*), SUM(duration), AVG(age) FROM contacts GROUP BY job"
        ).fetchall(), 5)
        print(f"group-by e2e median {e2e * 1000:.1f} ms, raw sqlite3 {baseline * 1000:.1f} ms")

        clients = [NodeClient(address, home.ca_pem(), requester) for _ in range(32)]
        small = {"dataset": "contacts", "purpose": "marketing-analytics", "measures": ["count"],
                 "filters": [{"column": "age", "op": "eq", "value": 30}]}
        node_qps = throughput(lambda i: clients[i].query(small), 32, seconds)
        echo, port = echo_server(home)
        channel = secure_channel(f"127.0.0.1:{port}", home.ca_pem())
        echo_call = channel.unary_unary("/bench.Echo/Echo")
        payload = b"x" * 600
        echo_qps = throughput(lambda i: echo_call(payload), 32, seconds)
        print(f"small queries {node_qps:.0f}/s vs echo {echo_qps:.0f}/s (32 clients)")
        echo.stop(0)
        node.stop(0)
        rss = idle_rss_mib(home_dir)
        print(f"idle node RSS {rss:.1f} MiB")
    print(json.dumps({"bench": "query", "rows": rows, "e2e_vs_sqlite": round(e2e / baseline, 3),
                      "target": 1.5, "throughput_vs_echo": round(node_qps / echo_qps, 3),
                      "throughput_target": 0.5, "idle_rss_mib": round(rss, 1)}))


if __name__ == "__main__":
    main()
