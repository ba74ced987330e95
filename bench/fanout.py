"""Benchmark of the coordinator's fan-out (issue 12, Tests and speed).

Starts one `sov-coordinator serve` and five `sov-node serve` processes on loopback, each node
over its own SQLite source (the bank-marketing rows, --rows per node, 40 consenting
customers, k-threshold mode so no privacy budget runs out), all registered with the
coordinator. Then, with the same requester and the same group-by question, measures the
median latency of
- one node asked directly (Requester.ask_with over an open NodeClient): the baseline;
- one node through the coordinator (agent_node.requester.ask_network): the coordinator's
  added latency, target <= 1.3 x direct;
- 1, 3 and 5 nodes through the coordinator in one fan-out, every answer verified and the
  answers combined: target for 5 nodes <= 2.5 x direct (they share the machine's cores);
- where a fan-out's time goes: CPU per call of the requester (this process), the coordinator
  and the nodes (from /proc), the slowest node leg as the coordinator timed it, and the least
  wall time that CPU allows on this machine's cores (total CPU / cores): a ratio that bound
  already puts above the target cannot be reached by any routing change;
- several questions in one fan-out (agent_node.requester.ask_network_report, --questions of
  them, each node answering all in one sealed report): per question vs direct.
The wall-time medians come from every kind of call made in turn (direct, 1, 3, 5 nodes, the
report, repeated), so that all see the same load: on a shared machine it moves a lot between
one series and the next, and a baseline measured in a series of its own could be twice as slow
or fast as the routed calls' series. CPU per call comes from a series of each kind alone.
Prints medians and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import tomli_w

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent_node.client import NodeClient  # noqa: E402
from agent_node.grantstore import GrantStore  # noqa: E402
from agent_node.home import init_home, load_home  # noqa: E402
from agent_node.network import CoordinatorClient  # noqa: E402
from agent_node.requester import Requester, ask_network, ask_network_report  # noqa: E402
from agent_node.vault import Vault, sync  # noqa: E402
from consent.grants import issue_grant  # noqa: E402
from consent.identity import Identity  # noqa: E402
from protos.transport import free_port  # noqa: E402

PASS = "benchmark passphrase"
SOURCE = REPO.parent / "shared" / "datasets" / "bank_marketing" / "bank-additional-full.csv"
SUBJECTS = 40
BIN = Path(sys.executable).parent
QUERY = {"dataset": "contacts", "purpose": "marketing-analytics",
         "measures": ["count", "sum:duration"], "group_by": ["job"]}
DATAMAP = """
[sources.crm]
kind = "sqlite"
path = "{path}"

[datasets.contacts]
source = "crm"
table = "contacts"
subject_key = ["customer_id"]
row_key = ["contact_id"]

[datasets.contacts.columns]
age = {{ type = "integer", scope = "transaction", bounds = [17, 100] }}
job = {{ type = "text", scope = "transaction", index = true }}
duration = {{ type = "integer", scope = "transaction", bounds = [0, 5000] }}
"""


def env() -> dict[str, str]:
    return {**os.environ, "SOV_NODE_PASSPHRASE": PASS, "SOV_COORDINATOR_PASSPHRASE": PASS}


def wait_port(process: subprocess.Popen[bytes], port_file: Path) -> int:
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("a benchmark server did not start")
        time.sleep(0.05)
    return int(port_file.read_text())


def make_node(folder: Path, index: int, rows: list[tuple], requester: Identity,
              coordinator_ca: Path) -> Path:
    folder.mkdir(parents=True)
    source = folder / "crm.db"
    conn = sqlite3.connect(source)
    conn.execute("CREATE TABLE contacts (customer_id TEXT, contact_id INTEGER, age INTEGER, "
                 "job TEXT, duration INTEGER)")
    conn.executemany("INSERT INTO contacts VALUES (?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    home = init_home(folder / "node", PASS, name=f"bench-{index}", region="eu-bench")
    home.datamap_path.write_text(DATAMAP.format(path=source))
    config_path = home.path / "node.toml"
    config = tomllib.loads(config_path.read_text())
    config["node"].update(coordinator_listen=f"127.0.0.1:{free_port()}",
                          coordinator_ca=str(coordinator_ca), privacy="threshold")
    config_path.write_text(tomli_w.dumps(config))
    home = load_home(home.path, PASS)
    vault = Vault(home.vault_path, home.keys)
    sync(vault, home.datamap())
    store = GrantStore(vault, home.identity.did, max_ttl=home.config.max_ttl,
                       clock_skew=home.config.clock_skew)
    for i in range(SUBJECTS):
        wallet = Identity.generate()
        vault.bind([f"C{i:03d}"], wallet.did)
        store.submit(issue_grant(wallet, requester=requester.did, nodes=[home.identity.did],
                                 purpose="marketing-analytics", scopes=["transaction"],
                                 ttl=timedelta(hours=24)))
    return home.path


TICK = os.sysconf("SC_CLK_TCK")


def cpu_ms(pids: list[int]) -> float:
    """CPU time (user + system) the processes ``pids`` used so far, in ms (/proc/PID/stat)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total * 1000 / TICK


def alternated_ms(calls: list[Callable[[], object]], repeat: int) -> list[float]:
    """Median wall ms of each call, the calls made in turn ``repeat`` times, so that each
    sees the same load."""
    for call in calls:
        call()  # warm
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeat):
        for call, spent in zip(calls, times, strict=True):
            started = time.perf_counter()
            call()
            spent.append(time.perf_counter() - started)
    return [statistics.median(spent) * 1000 for spent in times]


def measure(call: Callable[[], object], repeat: int, servers: dict[str, list[int]]
            ) -> tuple[float, dict[str, float]]:
    """(median wall ms, CPU ms per call of this process and of each group of ``servers``)."""
    call()  # warm: channels, sessions, caches
    times = []
    before = {name: cpu_ms(pids) for name, pids in servers.items()}
    own = time.process_time()
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    cpu = {"requester": (time.process_time() - own) * 1000 / repeat}
    cpu.update({name: (cpu_ms(pids) - before[name]) / repeat for name, pids in servers.items()})
    return statistics.median(times) * 1000, {k: round(v, 2) for k, v in cpu.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--rows", type=int, default=400, help="contacts per node")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--questions", type=int, default=4,
                        help="questions per fan-out in the report measurement")
    args = parser.parse_args()
    repeat = args.repeat or (15 if args.quick else 60)
    with SOURCE.open(newline="") as handle:
        base = [(int(r["age"]), r["job"], int(r["duration"]))
                for r in csv.DictReader(handle, delimiter=";")]
    tmp = Path(tempfile.mkdtemp(prefix="sov-fanout-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        coordinator_home = tmp / "coordinator"
        subprocess.run([str(BIN / "sov-coordinator"), "init", "--home", str(coordinator_home),
                        "--listen", f"127.0.0.1:{free_port()}"], env=env(), check=True,
                       capture_output=True)
        port_file = coordinator_home / "port"
        processes.append(subprocess.Popen(
            [str(BIN / "sov-coordinator"), "serve", "--home", str(coordinator_home),
             "--port-file", str(port_file)], env=env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL))
        coordinator = f"127.0.0.1:{wait_port(processes[0], port_file)}"
        ca = coordinator_home / "tls" / "ca.pem"
        requester = Identity.generate()
        nodes = []
        for index in range(5):
            start = index * args.rows
            rows = [(f"C{i % SUBJECTS:03d}", i, *base[i % len(base)])
                    for i in range(start, start + args.rows)]
            home = make_node(tmp / f"node{index}", index, rows, requester, ca)
            node_port = home / "port"
            processes.append(subprocess.Popen(
                [str(BIN / "sov-node"), "serve", "--home", str(home), "--listen",
                 "127.0.0.1:0", "--port-file", str(node_port)], env=env(),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            port = wait_port(processes[-1], node_port)
            subprocess.run([str(BIN / "sov-node"), "register", "--home", str(home),
                            "--coordinator", coordinator, "--coordinator-ca", str(ca)],
                           env=env(), check=True, capture_output=True)
            loaded = load_home(home, PASS)
            nodes.append((f"127.0.0.1:{port}", loaded.ca_pem(), loaded.identity.did))

        asker = Requester(requester)
        address, ca_pem, _ = nodes[0]
        node_pids = [p.pid for p in processes[1:]]
        coordinator_pid = [processes[0].pid]
        cores = len(os.sched_getaffinity(0))
        results: dict[str, object] = {}
        cpu: dict[int, dict[str, float]] = {}
        with NodeClient(address, ca_pem, requester) as direct, \
                CoordinatorClient(coordinator, ca.read_bytes()) as client:
            def ask_direct() -> None:
                asker.ask_with(direct, QUERY)

            # CPU per call of each kind, from a series of its own (/proc counts per process).
            _, direct_cpu = measure(ask_direct, repeat, {"nodes": node_pids})
            results["cpu_direct"] = direct_cpu
            asks: list[Callable[[], None]] = []
            for count in (1, 3, 5):
                dids = [did for _, _, did in nodes[:count]]

                def ask(dids: list[str] = dids) -> None:
                    answer = ask_network(requester, client, QUERY, nodes=dids)
                    if len(answer.combined["answered"]) != len(dids):
                        raise RuntimeError(f"not every node answered: {answer.missing}")

                asks.append(ask)
                _, cpu[count] = measure(ask, repeat, {"coordinator": coordinator_pid,
                                                      "nodes": node_pids})
                results[f"cpu_fanout_{count}"] = cpu[count]
            # The slowest node leg of a 5-node fan-out as the coordinator timed it.
            listed = [n for n in client.nodes(dataset="contacts")]
            legs = []
            for _ in range(repeat):
                routed = client.fan_out("Query", [(client.client_for(n, requester),
                                                   {"query": QUERY}) for n in listed])
                legs.append(max(r.elapsed_ms for r in routed))
            results["fanout_5_slowest_node_leg_ms"] = round(statistics.median(legs), 3)
            questions = [{**QUERY, "measures": ["count"]},
                         {**QUERY, "measures": ["sum:duration"]},
                         {**QUERY, "measures": ["count"], "group_by": []},
                         {**QUERY, "measures": ["sum:age"], "group_by": []}]
            questions = (questions * args.questions)[:args.questions]
            every = [did for _, _, did in nodes]

            def report() -> None:
                ask_network_report(requester, client, questions, nodes=every)

            # Wall times: every kind of call made in turn, so that all see the same load (on
            # this shared machine it moves a lot between one series and the next).
            walls = alternated_ms([ask_direct, *asks, report], repeat)
        direct_ms, report_ms = walls[0], walls[-1]
        results["direct_ms"] = round(direct_ms, 3)
        for count, wall in zip((1, 3, 5), walls[1:4], strict=True):
            results[f"fanout_{count}_ms"] = round(wall, 3)
        results["fanout_5_report_ms"] = round(report_ms, 3)
        results["fanout_5_report_per_question_ms"] = round(report_ms / len(questions), 3)
        for count in (1, 3, 5):
            results[f"fanout_{count}_vs_direct"] = round(
                float(results[f"fanout_{count}_ms"]) / direct_ms, 3)  # type: ignore[arg-type]
        results["coordinator_added_vs_direct"] = results["fanout_1_vs_direct"]
        total_5 = sum(cpu[5].values())
        results["fanout_5_cpu_bound_ms"] = round(total_5 / cores, 3)
        results["fanout_5_cpu_bound_vs_direct"] = round(total_5 / cores / direct_ms, 3)
        results["fanout_5_report_per_question_vs_direct"] = round(
            report_ms / len(questions) / direct_ms, 3)
        print(f"direct, one node:            {direct_ms:8.2f} ms (median of {repeat}); CPU "
              f"per call {direct_cpu}")
        for count in (1, 3, 5):
            print(f"through the coordinator, {count}: {results[f'fanout_{count}_ms']:8.2f} ms "
                  f"= {results[f'fanout_{count}_vs_direct']:.2f} x direct; CPU per call "
                  f"{cpu[count]}")
        print(f"5 nodes: the slowest node leg as the coordinator timed it "
              f"{results['fanout_5_slowest_node_leg_ms']} ms; all CPU of one fan-out "
              f"{total_5:.1f} ms on {cores} core(s) takes at least {total_5 / cores:.1f} ms = "
              f"{results['fanout_5_cpu_bound_vs_direct']:.2f} x direct")
        print(f"5 nodes, {len(questions)} questions in one report: {report_ms:.2f} ms, "
              f"{report_ms / len(questions):.2f} ms per question = "
              f"{results['fanout_5_report_per_question_vs_direct']:.2f} x one direct question")
        print("targets: 1 node <= 1.3 x direct, 5 nodes <= 2.5 x direct")
        results.update(target_one_node=1.3, target_five_nodes=2.5, repeat=repeat,
                       rows_per_node=args.rows, cores=cores,
                       load_average=round(os.getloadavg()[0], 2))
        print(json.dumps(results))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
