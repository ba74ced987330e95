"""``make demo``: the Sovereign Fabric story, end to end, on real processes.

A distributor runs an agent node next to its order system (SQLite) and its chat-sentiment
store (PostgreSQL). Customers create wallets and grant the CRM application `quote-generation`
on the `transaction` tier for 24 hours. The CRM asks for order totals by region and gets
differentially private aggregates, each with its 95 % interval, and each customer's privacy
budget goes down; a question outside the granted scope is refused. A
customer sees who used their data and checks it against the ledger, revokes, and the next
question under that grant is refused. A compliance officer verifies every receipt offline.

Every step runs the real command line tools as separate processes (ledger, node, wallet,
requester, auditor) and prints the commands, so it can be replayed by hand. The demo's
passphrases are fixed, demo-only values.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from protos.transport import free_port

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
TELCO = SHARED / "datasets" / "telco_churn" / "WA_Fn-UseC_-Telco-Customer-Churn.csv"
BIN = Path(sys.executable).parent
DEMO_PASSPHRASE = "demo-only passphrase, never reuse"
PG_DSN = "host=127.0.0.1 port=5432 user=postgres"
PG_DATABASE = "sovfab_demo_chat"
CUSTOMERS = 600
# The customers who grant through their wallets, by region; BULK more grant through the
# Python API, so that differentially private answers have enough customers to be useful.
GRANTING = {"north": 7, "south": 5, "east": 2}
NEVER = 40  # customers who never grant: their data is never used
BULK = CUSTOMERS - NEVER - sum(GRANTING.values())
REGIONS = ["north", "south", "east", "west"]


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(command: list[str]) -> None:
    print("$ " + " ".join(shlex.quote(part) for part in command), flush=True)


def run(command: list[str], env: dict[str, str], *, check: bool = True,
        quiet: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    if not quiet:
        show(command)
    tool = str(BIN / command[0])
    result = subprocess.run([tool, *command[1:]], env=env, text=True, capture_output=True,
                            timeout=timeout, check=False)
    if not quiet:
        for line in (result.stdout + result.stderr).rstrip().splitlines():
            print("  " + line)
    if check and result.returncode != 0:
        sys.exit(f"demo step failed ({result.returncode}): {' '.join(command)}")
    return result


@contextmanager
def background(command: list[str], env: dict[str, str], port_file: Path, *, name: str = "",
               processes: dict[str, subprocess.Popen[bytes]] | None = None) -> Iterator[int]:
    """Start a server process, wait until it has written its port, stop it at the end
    (``processes[name]`` lets the story stop it earlier)."""
    show(command)
    log = open(port_file.with_suffix(".log"), "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen([str(BIN / command[0]), *command[1:]], env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    if processes is not None:
        processes[name] = process
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"{command[0]} did not start; see {log.name}")
            time.sleep(0.1)
        yield int(port_file.read_text().strip())
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def customer_rows() -> list[dict[str, str]]:
    with TELCO.open(newline="") as handle:
        return [row for _, row in zip(range(CUSTOMERS), csv.DictReader(handle), strict=False)]


def region_of(index: int) -> str:
    """Granting customers fill GRANTING's regions first; the rest spread over all four."""
    bound = 0
    for region, count in GRANTING.items():
        bound += count
        if index < bound:
            return region
    return REGIONS[index % len(REGIONS)]


def build_order_system(path: Path, customers: list[dict[str, str]]) -> None:
    """The distributor's order system: one order per month of tenure (at most six)."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_id TEXT, "
                   "region TEXT, amount REAL, contract TEXT)")
        for index, row in enumerate(customers):
            for month in range(min(int(row["tenure"]), 6) or 1):
                db.execute("INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
                           (f"{row['customerID']}-{month}", row["customerID"], region_of(index),
                            float(row["MonthlyCharges"]), row["Contract"]))


def build_chat_store(customers: list[dict[str, str]]) -> bool:
    """The chat-sentiment store in PostgreSQL; False when no server answers."""
    import psycopg

    try:
        with psycopg.connect(f"{PG_DSN} dbname=postgres", autocommit=True,
                             connect_timeout=3) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE}")
            admin.execute(f"CREATE DATABASE {PG_DATABASE}")
    except psycopg.OperationalError:
        return False
    with psycopg.connect(f"{PG_DSN} dbname={PG_DATABASE}") as db:
        db.execute("CREATE TABLE chats (chat_id TEXT PRIMARY KEY, customer_id TEXT, mood TEXT)")
        for row in customers:
            mood = "frustrated" if row["Churn"] == "Yes" else "content"
            db.execute("INSERT INTO chats VALUES (%s, %s, %s)",
                       (f"chat-{row['customerID']}", row["customerID"], mood))
    return True


def datamap(orders_db: Path, with_chats: bool) -> str:
    text = f"""
[sources.orders]
kind = "sqlite"
path = "{orders_db}"

[datasets.orders]
source = "orders"
table = "orders"
subject_key = ["customer_id"]
row_key = ["order_id"]
max_rows_per_subject = 6   # at most six orders per customer in this system

[datasets.orders.columns]
amount = {{ type = "real", scope = "transaction", bounds = [0, 120] }}  # monthly charges
contract = {{ type = "text", scope = "transaction", groups_per_subject = 1 }}

[datasets.orders.columns.region]  # one region per customer, and the four are public
type = "text"
scope = "transaction"
index = true
groups_per_subject = 1
public_keys = ["north", "south", "east", "west"]
"""
    if with_chats:
        text += f"""
[sources.chat]
kind = "postgresql"
dsn = "{PG_DSN} dbname={PG_DATABASE}"

[datasets.chats]
source = "chat"
table = "chats"
subject_key = ["customer_id"]
row_key = ["chat_id"]

[datasets.chats.columns]
mood = {{ type = "text", scope = "sentiment", groups_per_subject = 1 }}
"""
    return text


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="sovfab-demo-"))
    env = {**os.environ, "SOV_NODE_PASSPHRASE": DEMO_PASSPHRASE,
           "SOV_LEDGER_PASSPHRASE": DEMO_PASSPHRASE, "SOV_QUERY_PASSPHRASE": DEMO_PASSPHRASE,
           "CONSENT_WALLET_PASSPHRASE": DEMO_PASSPHRASE}
    print(f"Sovereign Fabric demo; everything lives in {workdir}")
    try:
        story(workdir, env)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def story(work: Path, env: dict[str, str]) -> None:
    ledger_home, node_home = work / "ledger", work / "node"
    crm_home, alice_home = work / "crm", work / "alice"

    say("1. The ledger operator starts the hash ledger (RFC 9162 log, anchors on an embedded EVM)")
    run(["sov-ledger", "init", "--home", str(ledger_home)], env)
    ledger_addr = f"127.0.0.1:{free_port()}"
    ledger_cmd = ["sov-ledger", "serve", "--home", str(ledger_home), "--listen", ledger_addr,
                  "--anchor-interval", "2"]
    ledger_port_file = work / "ledger.port"
    with background_ledger(ledger_cmd, env, ledger_port_file, ledger_addr):
        node_and_customers(work, env, ledger_home, node_home, crm_home, alice_home, ledger_addr)


@contextmanager
def background_ledger(command: list[str], env: dict[str, str], port_file: Path,
                      address: str) -> Iterator[None]:
    """``sov-ledger serve`` binds a fixed address; wait for its TLS port to accept."""
    import socket

    show(command)
    log = open(port_file.with_suffix(".log"), "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen([str(BIN / command[0]), *command[1:]], env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    host, port = address.rsplit(":", 1)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the ledger did not start; see {log.name}")
                time.sleep(0.2)
        yield
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def node_and_customers(work: Path, env: dict[str, str], ledger_home: Path, node_home: Path,
                       crm_home: Path, alice_home: Path, ledger_addr: str) -> None:
    say("2. A distributor runs a node next to its order system (SQLite) and chat store "
        "(PostgreSQL)")
    customers = customer_rows()
    orders_db = work / "orders.db"
    build_order_system(orders_db, customers)
    with_chats = build_chat_store(customers)
    print(f"  order system: {orders_db} ({CUSTOMERS} customers from the telco churn dataset)")
    print("  chat store: " + (f"PostgreSQL database {PG_DATABASE}" if with_chats else
                             "PostgreSQL not reachable at 127.0.0.1:5432 - skipped"))
    created = run(["sov-node", "init", "--home", str(node_home), "--name", "distributor-eu",
                   "--region", "eu-west", "--listen", "127.0.0.1:0"], env)
    node_did = created.stdout.split("DID: ", 1)[1].split()[0]
    register_and_refuse(work, env, ledger_home, ledger_addr, node_did)
    (node_home / "datamap.toml").write_text(datamap(orders_db, with_chats))
    configure_node_ledger(node_home, ledger_addr, ledger_home)
    run(["sov-node", "sync", "--home", str(node_home)], env)
    run(["sov-node", "sync", "--home", str(node_home)], env)  # incremental: nothing new

    say("3. The CRM application creates its requester identity")
    crm_did = run(["sov-query", "init", "--home", str(crm_home)], env).stdout.split()[-1]

    node_cmd = ["sov-node", "serve", "--home", str(node_home), "--port-file",
                str(work / "node.port")]
    with background(node_cmd, env, work / "node.port") as node_port:
        node_addr = f"127.0.0.1:{node_port}"
        node_ca = node_home / "tls" / "ca.pem"
        ledger_ca = ledger_home / "tls" / "ca.pem"
        alice_grant = customers_grant(work, env, node_home, node_addr, node_ca, ledger_addr,
                                      ledger_ca, crm_did, alice_home, customers)
        ask = ["sov-query", "ask", "--home", str(crm_home), "--node", node_addr,
               "--ca", str(node_ca), "--purpose", "quote-generation"]

        say("5. The CRM asks for order totals by region: differentially private per customer, "
            "each value with its 95 % interval")
        run([*ask, "--dataset", "orders", "--measure", "count", "--measure", "sum:amount",
             "--measure", "avg:amount", "--group-by", "region"], env)
        say("   Alice's privacy budget went down by that answer's epsilon (the node's default "
            "budget, as her grant set none); a second question costs 0.5 more")
        wallet = ["consent-wallet", "--home", str(alice_home)]
        run([*wallet, "grants"], env)
        run([*ask, "--dataset", "orders", "--measure", "avg:amount", "--group-by", "contract",
             "--epsilon", "0.5"], env)
        run([*wallet, "grants"], env)
        if with_chats:
            say("   ... and a question about chat sentiment, which no grant covers, is refused")
            run([*ask, "--dataset", "chats", "--measure", "count", "--group-by", "mood"], env,
                check=False)

        say("6. Alice asks her wallet who used her data, and checks it against the ledger")
        run(["sov-node", "log", "push", "--home", str(node_home)], env)
        run([*wallet, "access-log"], env)
        say("   The node's operator sees which grants and customers each event used, checked "
            "against the event's Merkle roots and the chain")
        run(["sov-node", "log", "events", "--home", str(node_home), "--limit", "3"], env)

        say("7. Alice revokes her grant; the next question under it is refused")
        run([*wallet, "revoke", alice_grant], env)
        run([*ask, "--dataset", "orders", "--measure", "count", "--grant", alice_grant], env,
            check=False)
        run([*wallet, "grants"], env)

        say("7b. Alice asks the node to erase everything it holds about her: its signed proof "
            "(rows, destroyed key, a raw-byte scan of its home where her data was) is anchored "
            "in the ledger; a sweep of every byte of the home follows")
        run([*wallet, "erase", "--node", node_addr, "--yes"], env)
        dana_receipts = migrate_dana(work, env, node_home, node_addr, customers)

    say("8. A compliance officer verifies every receipt offline")
    run(["sov-node", "log", "receipts", "--home", str(node_home), "--out",
         str(work / "node-receipts")], env)
    audit(work, env, ledger_home, alice_home)
    say("   ... and Dana's migration receipt: her signed request and the second node's signed "
        "import both naming the export's digest (her wallet kept no copy of her data), the "
        "distributor's anchored erasure proof")
    run(["sov-audit", "verify", "--log-key", str(ledger_home / "log-public.json"),
         *map(str, dana_receipts)], env)
    network(work, env, crm_home, customer_rows_from(CUSTOMERS, 3 * NETWORK_CUSTOMERS),
            ledger=(ledger_home, ledger_addr))


def migrate_dana(work: Path, env: dict[str, str], node_home: Path, node_addr: str,
                customers: list[dict[str, str]]) -> list[Path]:
    """7c: a customer moves from the distributor's node to a second node (issue 13)."""
    say("7c. Dana, a customer who never granted anything, moves her data to a second node: "
        "the distributor exports it (signed), the second node imports it under Dana's signed "
        "request, then the distributor erases it with its proof")
    second = work / "node-2"
    run(["sov-node", "init", "--home", str(second), "--name", "distributor-2",
         "--region", "eu-west", "--listen", "127.0.0.1:0"], env)
    second_orders = work / "orders-2.db"
    own = customers[-30:-10]  # its own customers
    build_order_system(second_orders, own)
    mapping = datamap(second_orders, False)
    if "[datasets.chats]" in (node_home / "datamap.toml").read_text():
        # It keeps chats too (SQLite here), or it could not hold Dana's and would refuse her.
        with sqlite3.connect(second_orders) as db:
            db.execute("CREATE TABLE chats (chat_id TEXT PRIMARY KEY, customer_id TEXT, "
                       "mood TEXT)")
            db.executemany("INSERT INTO chats VALUES (?, ?, 'content')",
                           [(f"chat-{c['customerID']}", c["customerID"]) for c in own])
        mapping += ('\n[datasets.chats]\nsource = "orders"\ntable = "chats"\n'
                    'subject_key = ["customer_id"]\nrow_key = ["chat_id"]\n\n'
                    '[datasets.chats.columns]\nmood = { type = "text", scope = "sentiment", '
                    'groups_per_subject = 1 }\n')
    (second / "datamap.toml").write_text(mapping)
    run(["sov-node", "sync", "--home", str(second)], env, quiet=True)
    mover_home = work / "dana"
    dana = ["consent-wallet", "--home", str(mover_home)]
    run([*dana, "init"], env, quiet=True)
    dana_did = json.loads(run([*dana, "whoami", "--json"], env, quiet=True).stdout)["did"]
    run(["sov-node", "subjects", "bind", "--home", str(node_home), customers[-1]["customerID"],
         dana_did], env)
    command = ["sov-node", "serve", "--home", str(second), "--port-file",
               str(work / "node-2.port")]
    with background(command, env, work / "node-2.port") as port:
        second_addr = f"127.0.0.1:{port}"
        run([*dana, "migrate", "--from", node_addr, "--from-ca",
             str(node_home / "tls" / "ca.pem"), "--to", second_addr, "--to-ca",
             str(second / "tls" / "ca.pem"), "--yes"], env)
    out = work / "dana-receipts"
    run([*dana, "receipts", "--out", str(out)], env)
    return sorted(out.glob("migration-*.json"))


def register_and_refuse(work: Path, env: dict[str, str], ledger_home: Path, ledger_addr: str,
                        node_did: str) -> None:
    """The ledger takes entries only from authors its operator registered (ledger.authority)."""
    say("   The ledger operator registers the node as an author; anyone else is refused")
    run(["sov-ledger", "authors", "add", "--home", str(ledger_home), node_did,
         "--name", "distributor-eu", "--role", "node"], env)
    forged = work / "forged-erasure.json"  # what an attacker with the public CA could send
    forged.write_text(json.dumps({
        "type": "erasure", "schema_version": 1, "time": "2026-01-01T00:00:00Z",
        "proof_digest": "0" * 64, "subject_commitment": "1" * 64, "node": node_did}))
    result = run(["sov-ledger", "submit", "--ledger", ledger_addr, "--ca",
                  str(ledger_home / "tls" / "ca.pem"), str(forged)], env, check=False)
    if result.returncode == 0 or "UNAUTHENTICATED" not in result.stderr:
        sys.exit("the ledger accepted an unauthenticated entry: the demo expected a refusal")


def configure_node_ledger(node_home: Path, ledger_addr: str, ledger_home: Path) -> None:
    import tomllib

    import tomli_w

    config = node_home / "node.toml"
    settings = tomllib.loads(config.read_text())
    settings["node"]["ledger_address"] = ledger_addr
    settings["node"]["ledger_ca"] = str(ledger_home / "tls" / "ca.pem")
    config.write_text(tomli_w.dumps(settings))


def customers_grant(work: Path, env: dict[str, str], node_home: Path, node_addr: str,
                    node_ca: Path, ledger_addr: str, ledger_ca: Path, crm_did: str,
                    alice_home: Path, customers: list[dict[str, str]]) -> str:
    say("4. Customers create wallets and grant the CRM quote-generation on transaction, 24 h")
    wallet = ["consent-wallet", "--home", str(alice_home)]
    run([*wallet, "init"], env)
    alice_did = run([*wallet, "whoami", "--json"], env, quiet=True)
    did = json.loads(alice_did.stdout)["did"]
    run(["sov-node", "subjects", "bind", "--home", str(node_home),
         customers[0]["customerID"], did], env)
    run([*wallet, "nodes", "add", node_addr, "--ca", str(node_ca)], env)
    run([*wallet, "ledger", "set", ledger_addr, "--ca", str(ledger_ca), "--log-key",
         str(ledger_ca.parent.parent / "log-public.json")], env)
    granted = run([*wallet, "grant", "--node", node_addr, "--requester", crm_did,
                   "--purpose", "quote-generation", "--scope", "transaction", "--ttl", "24h",
                   "--json"], env)
    alice_grant = json.loads(granted.stdout)["grant_id"]
    print(f"  Alice's grant: {alice_grant}")

    others = sum(GRANTING.values()) - 1
    print(f"  ... and {others} more customers do the same through the wallet's Python API")
    from wallet.service import Wallet

    for index in range(1, others + 1):
        home = work / f"customer-{index}"
        customer = Wallet.create(home, DEMO_PASSPHRASE)
        run(["sov-node", "subjects", "bind", "--home", str(node_home),
             customers[index]["customerID"], customer.identity.did], env, quiet=True)
        customer.set_ledger(ledger_addr, ledger_ca.read_bytes())
        customer.grant(node=node_addr, requester=crm_did, purpose="quote-generation",
                       scopes=["transaction"], ttl=timedelta(hours=24),
                       node_ca=node_ca.read_bytes())
    bulk_grant(node_home, crm_did, customers[others + 1:others + 1 + BULK])
    print(f"  ... and {BULK} more, bound and stored by the operator in bulk (keys and signed "
          "grants through the Python API)")
    print(f"  {CUSTOMERS - NEVER} of {CUSTOMERS} customers granted; the other {NEVER} never "
          "did, so their data is never used")
    return alice_grant


def bulk_grant(node_home: Path, crm_did: str,
               customers: list[dict[str, str]]) -> None:
    """Customers who grant the CRM without the wallet's CLI: a key and a signed grant each,
    bound and stored by the operator in bulk through the node's grant store (which verifies
    each grant's proof as SubmitGrant does; the running node sees them at its next answer)."""
    from agent_node.grantstore import GrantStore
    from agent_node.home import load_home
    from agent_node.vault import Vault
    from consent.grants import issue_grant
    from consent.identity import Identity

    node = load_home(node_home, DEMO_PASSPHRASE)
    vault = Vault(node.vault_path, node.keys)
    store = GrantStore(vault, node.identity.did, max_ttl=node.config.max_ttl,
                       clock_skew=node.config.clock_skew)
    for row in customers:
        customer = Identity.generate()
        vault.bind([row["customerID"]], customer.did)
        store.submit(issue_grant(customer, requester=crm_did, nodes=[node.identity.did],
                                 purpose="quote-generation", scopes=["transaction"],
                                 ttl=timedelta(hours=24)))


def audit(work: Path, env: dict[str, str], ledger_home: Path, alice_home: Path) -> None:
    log_key = ledger_home / "log-public.json"
    alice_receipts = own_audit(work, env, alice_home, log_key)
    receipts = alice_receipts + sorted((work / "node-receipts").glob("*.json"))
    # The officer also gets the ledger's authors file, and sees who wrote each entry by name.
    authors = work / "authors.json"
    authors.write_text(run(["sov-ledger", "authors", "list", "--home", str(ledger_home),
                            "--json"], env, quiet=True).stdout)
    run(["sov-audit", "verify", "--log-key", str(log_key), "--authors", str(authors),
         *map(str, receipts)], env)
    bundle, report = work / "audit-bundle.json", work / "audit-report.html"
    run(["sov-audit", "bundle", "--log-key", str(log_key), "-o", str(bundle),
         *map(str, receipts)], env)
    run(["sov-audit", "report", "--log-key", str(log_key), "--since", "24h", "-o", str(report),
         str(bundle)], env)
    kept = Path.cwd() / "demo-audit-report.html"
    shutil.copyfile(report, kept)
    print(f"  the HTML report is kept at {kept}")
    tampered = work / "tampered-receipt.json"
    document = json.loads(receipts[0].read_text())
    document["entry"]["purpose"] = "marketing-analytics"
    tampered.write_text(json.dumps(document))
    print("  A copy whose purpose was changed after the fact:")
    result = run(["sov-audit", "verify", "--log-key", str(log_key), str(tampered)], env,
                 check=False)
    if result.returncode == 0:
        sys.exit("the tampered receipt was accepted: the demo expected a rejection")


def own_audit(work: Path, env: dict[str, str], alice_home: Path, log_key: Path) -> list[Path]:
    """Alice audits her own data with the command line alone: her wallet writes out its
    receipts and reveals her salt, `sov-audit` verifies them and reports on her entries."""
    say("   Alice checks her own receipts and makes her own report (no one else's help)")
    wallet = ["consent-wallet", "--home", str(alice_home)]
    out = work / "alice-receipts"
    written = run([*wallet, "receipts", "--out", str(out), "--json"], env, quiet=True)
    show([*wallet, "receipts", "--out", str(out)])
    paths = [Path(p) for p in json.loads(written.stdout)["written"]]
    if not paths:
        sys.exit("Alice's wallet holds no ledger receipts")
    print(f"  wrote {len(paths)} receipt(s): " + ", ".join(p.name for p in paths))
    run(["sov-audit", "verify", "--log-key", str(log_key), *map(str, paths)], env)
    # Her erasure receipt too: the report shows what the node's signed proof says.
    key = json.loads(run([*wallet, "audit-key", "--yes", "--json"], env).stdout)
    report = work / "alice-report.html"
    run(["sov-audit", "report", "--log-key", str(log_key), "--subject-did", key["did"],
         "--salt", key["salt"], "-o", str(report), *map(str, paths)], env)
    return paths


# -- 9. the network: a coordinator, three nodes with different sources, one question ------------

NETWORK_CUSTOMERS = 30  # per shop
NETWORK_SOURCES = (("shop-sqlite", "eu-west", "sqlite"), ("shop-csv", "eu-central", "csv"),
                   ("shop-postgres", "eu-north", "postgresql"))
PG_ORDERS = "sovfab_demo_orders"


def customer_rows_from(start: int, count: int) -> list[dict[str, str]]:
    with TELCO.open(newline="") as handle:
        rows = list(zip(range(start + count), csv.DictReader(handle), strict=False))
    return [row for index, row in rows if index >= start]


def shop_orders(customers: list[dict[str, str]]) -> list[tuple[str, str, float, str]]:
    return [(f"{row['customerID']}-{month}", row["customerID"], float(row["MonthlyCharges"]),
             row["Contract"])
            for row in customers for month in range(min(int(row["tenure"]), 6) or 1)]


def shop_source(work: Path, kind: str, orders: list[tuple[str, str, float, str]]) -> str:
    """The shop's order table in its own kind of source; the data map's [sources] table."""
    if kind == "sqlite":
        path = work / "shop.db"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE orders (order_id TEXT, customer_id TEXT, amount REAL, "
                       "contract TEXT)")
            db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", orders)
        return f'[sources.shop]\nkind = "sqlite"\npath = "{path}"\n'
    if kind == "csv":
        path = work / "orders.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["order_id", "customer_id", "amount", "contract"])
            writer.writerows(orders)
        return f'[sources.shop]\nkind = "csv"\npath = "{path}"\n'
    import psycopg

    with psycopg.connect(f"{PG_DSN} dbname=postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {PG_ORDERS}")
        admin.execute(f"CREATE DATABASE {PG_ORDERS}")
    with psycopg.connect(f"{PG_DSN} dbname={PG_ORDERS}") as db:
        db.execute("CREATE TABLE orders (order_id TEXT, customer_id TEXT, amount REAL, "
                   "contract TEXT)")
        with db.cursor() as cur:
            cur.executemany("INSERT INTO orders VALUES (%s, %s, %s, %s)", orders)
    return f'[sources.shop]\nkind = "postgresql"\ndsn = "{PG_DSN} dbname={PG_ORDERS}"\n'


SHOP_DATASET = """
[datasets.orders]
source = "shop"
table = "orders"
subject_key = ["customer_id"]
row_key = ["order_id"]

[datasets.orders.columns]
amount = { type = "real", scope = "transaction", bounds = [0, 200] }
contract = { type = "text", scope = "transaction", index = true, public_keys = [
    "Month-to-month", "One year", "Two year"] }
"""


# What an intent model may read of the orders (step 10): will the customer stay month-to-month?
SHOP_FEATURES = """
[datasets.orders.features]
target = { column = "contract", positive = "Month-to-month" }
numeric = ["amount"]
"""


def set_toml(path: Path, table: str, **settings: object) -> None:
    """The operator edits a setting of node.toml or coordinator.toml."""
    import tomllib

    import tomli_w

    config = tomllib.loads(path.read_text())
    config[table].update(settings)
    path.write_text(tomli_w.dumps(config))


def shop_node(work: Path, env: dict[str, str], name: str, region: str, kind: str,
              customers: list[dict[str, str]], coordinator_ca: Path) -> Path:
    home = work / name
    work.mkdir(parents=True, exist_ok=True)
    run(["sov-node", "init", "--home", str(home), "--name", name, "--region", region,
         "--listen", "127.0.0.1:0"], env, quiet=True)
    (home / "datamap.toml").write_text(shop_source(work, kind, shop_orders(customers))
                                       + SHOP_DATASET + SHOP_FEATURES)
    set_toml(home / "node.toml", "node", coordinator_listen=f"127.0.0.1:{free_port()}",
             coordinator_ca=str(coordinator_ca))
    run(["sov-node", "sync", "--home", str(home)], env, quiet=True)
    print(f"  {name} ({region}): {len(customers)} customers' orders in {kind}")
    return home


def shop_customers_grant(home: Path, address: str, crm_did: str,
                         customers: list[dict[str, str]]) -> None:
    """Every customer of the shop grants the CRM (wallet keys and signed grants through the
    Python API; the shop's operator binds them in bulk)."""
    from agent_node.client import NodeClient
    from agent_node.home import load_home
    from agent_node.vault import Vault
    from consent.grants import issue_grant
    from consent.identity import Identity

    node = load_home(home, DEMO_PASSPHRASE)
    vault = Vault(node.vault_path, node.keys)
    ca = node.ca_pem()
    for row in customers:
        wallet = Identity.generate()
        vault.bind([row["customerID"]], wallet.did)
        with NodeClient(address, ca, wallet) as client:
            client.submit_grant(issue_grant(
                wallet, requester=crm_did, nodes=[node.identity.did],
                purpose="quote-generation", scopes=["transaction"], ttl=timedelta(hours=24)))


def network(work: Path, env: dict[str, str], crm_home: Path,
            customers: list[dict[str, str]], ledger: tuple[Path, str] | None = None) -> None:
    say("9. The network grows: a coordinator joins three shops' nodes (SQLite, CSV, "
        "PostgreSQL); it routes sealed questions it cannot read")
    env = {**env, "SOV_COORDINATOR_PASSPHRASE": DEMO_PASSPHRASE}
    coordinator_home = work / "coordinator"
    coordinator_addr = f"127.0.0.1:{free_port()}"
    run(["sov-coordinator", "init", "--home", str(coordinator_home), "--listen",
         coordinator_addr], env)
    coordinator_ca = coordinator_home / "tls" / "ca.pem"
    set_toml(coordinator_home / "coordinator.toml", "coordinator", health_interval_seconds=1.0)
    crm_did = requester_did(crm_home)  # the CRM of step 3 asks across the network
    fleet_addr = f"127.0.0.1:{free_port()}"  # where the shops' SuperNodes reach it (step 10)
    shops: dict[str, tuple[Path, str, list[dict[str, str]]]] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(background(
            ["sov-coordinator", "serve", "--home", str(coordinator_home), "--port-file",
             str(work / "coordinator.port")], env, work / "coordinator.port"))
        processes = {}
        for index, (name, region, kind) in enumerate(NETWORK_SOURCES):
            mine = customers[index * NETWORK_CUSTOMERS:(index + 1) * NETWORK_CUSTOMERS]
            home = shop_node(work / "shops", env, name, region, kind, mine, coordinator_ca)
            port_file = work / f"{name}.port"
            port = stack.enter_context(background(
                ["sov-node", "serve", "--home", str(home), "--port-file", str(port_file),
                 "--fl", fleet_addr, "--fl-min-customers", "10"],
                env, port_file, name=name, processes=processes))
            shop_customers_grant(home, f"127.0.0.1:{port}", crm_did, mine)
            shops[name] = (home, f"127.0.0.1:{port}", mine)
            run(["sov-node", "register", "--home", str(home), "--coordinator",
                 coordinator_addr, "--coordinator-ca", str(coordinator_ca)], env)
        time.sleep(1.5)  # one health check round, so the listing shows each node serving
        run(["sov-coordinator", "nodes", "--home", str(coordinator_home)], env)
        ask = ["sov-query", "ask-network", "--home", str(crm_home), "--coordinator",
               coordinator_addr, "--ca", str(coordinator_ca), "--dataset", "orders",
               "--purpose", "quote-generation", "--measure", "count", "--measure",
               "sum:amount", "--group-by", "contract", "--deadline-ms", "5000"]
        say("   The CRM asks all three at once: one envelope sealed per node, every answer "
            "verified, counts and sums added")
        run(ask, env)
        if ledger is not None:
            train_intent_model(work, env, coordinator_home, crm_home, shops, fleet_addr, ledger)
        say("   shop-csv stops in the middle of the day; the same question still gets the "
            "others' answers, and says which node is missing")
        stopped = processes["shop-csv"]
        stopped.terminate()
        stopped.wait(timeout=20)
        run(ask, env)
        run(["sov-coordinator", "status", "--home", str(coordinator_home)], env)


# -- 10. federated training: a model from all three shops, no row leaves a shop --------------

def train_intent_model(work: Path, env: dict[str, str], coordinator_home: Path,
                       crm_home: Path, shops: dict[str, tuple[Path, str, list[dict[str, str]]]],
                       fleet_addr: str, ledger: tuple[Path, str]) -> None:
    say("10. The shops train a churn-intent model together (Flower, DP-SGD per customer); "
        "only customers who granted intent-model-training take part")
    from consent.grants import issue_grant
    from consent.identity import Identity
    from consent.integrity import sign_document
    from consent.keystore import load_identity
    from coordinator.home import open_home
    from fl.models import ModelSpec
    from fl.protocol import plan_document
    from fl.train import DPConfig, TrainConfig

    env = {**env, "SOV_COORDINATOR_PASSPHRASE": DEMO_PASSPHRASE}
    crm = load_identity(crm_home / "requester.key", DEMO_PASSPHRASE)
    home, address, mine = shops["shop-sqlite"]
    carol = work / "carol"
    wallet = ["consent-wallet", "--home", str(carol)]
    run([*wallet, "init"], env, quiet=True)
    carol_did = json.loads(run([*wallet, "whoami", "--json"], env, quiet=True).stdout)["did"]
    run(["sov-node", "subjects", "bind", "--home", str(home), mine[0]["customerID"], carol_did],
        env, quiet=True)
    run([*wallet, "nodes", "add", address, "--ca", str(home / "tls" / "ca.pem")], env,
        quiet=True)
    run([*wallet, "grant", "--node", address, "--requester", crm.did, "--purpose",
         "intent-model-training", "--scope", "transaction", "--ttl", "24h",
         "--dp-epsilon", "10"], env)
    for name, (shop, shop_addr, rows) in shops.items():
        _training_grants(shop, shop_addr, crm.did, rows[1:] if name == "shop-sqlite" else rows,
                         issue_grant, Identity)
    print("  ... and every other shop customer grants it through the Python API")
    from agent_node.home import load_home

    declared = load_home(home, DEMO_PASSPHRASE).datamap().datasets["orders"].features
    plan = sign_document(plan_document(
        f"urn:uuid:{uuid.uuid4()}", crm.did, "orders", declared, ModelSpec("logreg"),
        TrainConfig(epochs=1, lr=0.3, batch_size=8, dp=DPConfig(1.0, 1e-3, 1.0)),
        stats_epsilon=0.5), crm)
    plan_file = work / "plan.json"
    plan_file.write_text(json.dumps(plan))
    print(f"  the CRM signed the run plan {plan['id']} (DP-SGD epsilon 1 per round)")
    ledger_home, ledger_addr = ledger
    coordinator_did = open_home(coordinator_home).identity(DEMO_PASSPHRASE).did
    run(["sov-ledger", "authors", "add", "--home", str(ledger_home), "--name",
         "network coordinator", "--role", "coordinator", coordinator_did], env)
    run(["sov-coordinator", "train", "--home", str(coordinator_home), "--plan",
         str(plan_file), "--fleet-listen", fleet_addr, "--rounds", "2", "--min-nodes", "3",
         "--ledger", ledger_addr, "--ledger-ca", str(ledger_home / "tls" / "ca.pem")], env,
        timeout=900)
    run(["sov-coordinator", "models", "--home", str(coordinator_home)], env)
    say("   Carol, a shop-sqlite customer, sees the training in her wallet")
    run([*wallet, "access-log"], env)
    score_with_model(env, coordinator_home, crm_home, home, address, ledger_home,
                     coordinator_did)


def score_with_model(env: dict[str, str], coordinator_home: Path, crm_home: Path,
                     shop: Path, address: str, ledger_home: Path, coordinator_did: str) -> None:
    """shop-sqlite installs the model its ledger entry names, and the CRM asks it for the
    distribution of intent scores (agent_node.scoring)."""
    say("   shop-sqlite installs the model (checked against its signed ledger entry); the CRM "
        "asks for the intent-score distribution, DP, over customers who granted it "
        "quote-generation")
    [*_, model] = json.loads(run(["sov-coordinator", "models", "--home", str(coordinator_home),
                                  "--json"], env, quiet=True).stdout)
    digest, models = model["digest"], coordinator_home / "models"
    run(["sov-node", "models", "install", "--home", str(shop), str(models / f"{digest}.json"),
         "--receipt", str(models / f"{digest}.receipt.json"), "--author", coordinator_did,
         "--log-key", str(ledger_home / "log-public.json")], env)
    run(["sov-query", "ask", "--home", str(crm_home), "--node", address, "--ca",
         str(shop / "tls" / "ca.pem"), "--dataset", "orders", "--purpose", "quote-generation",
         "--model", digest, "--measure", "count", "--group-by", "score_band"], env)


def _training_grants(home: Path, address: str, crm_did: str, rows: list[dict[str, str]],
                     issue_grant: Any, identity: Any) -> None:
    """Customers grant the CRM intent-model-training (keys bound by the operator in bulk)."""
    from agent_node.client import NodeClient
    from agent_node.home import load_home
    from agent_node.vault import Vault

    node = load_home(home, DEMO_PASSPHRASE)
    vault = Vault(node.vault_path, node.keys)
    for row in rows:
        customer = identity.generate()
        vault.bind([row["customerID"]], customer.did)
        with NodeClient(address, node.ca_pem(), customer) as client:
            client.submit_grant(issue_grant(
                customer, requester=crm_did, nodes=[node.identity.did],
                purpose="intent-model-training", scopes=["transaction"],
                ttl=timedelta(hours=24), dp_epsilon=10.0))


def requester_did(home: Path) -> str:
    from consent.keystore import load_identity

    return load_identity(home / "requester.key", DEMO_PASSPHRASE).did


if __name__ == "__main__":
    sys.exit(main())
