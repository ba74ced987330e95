"""End to end against a real ``sov-node serve`` process: wallet grant -> node -> sealed query
-> aggregate answer -> access log, for SQLite, CSV, PostgreSQL and MariaDB sources."""

from __future__ import annotations

import csv
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from agent_node.requester import Requester
from consent.identity import Identity
from tests.agent_node.conftest import (
    COLUMNS,
    SUBJECTS,
    NodeProcess,
    bind_all,
    grant_all,
    make_home,
    run_cli,
    serve,
    sqlite_source,
    stop,
)

K = 5


def expected_by_job(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What the node must answer: groups of >= k distinct customers, exact aggregates."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["job"]].append(row)
    return {job: {"count": len(g), "sum:duration": sum(r["duration"] for r in g),
                  "avg:age": sum(r["age"] for r in g) / len(g)}
            for job, g in groups.items() if len({r["customer_id"] for r in g}) >= K}


def _csv_source(tmp: Path, rows: list[dict[str, Any]]) -> Iterator[str]:
    path = tmp / "contacts.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, delimiter=";")
        writer.writeheader()
        writer.writerows(rows)
    yield f'[sources.crm]\nkind = "csv"\npath = "{path}"\ndelimiter = ";"\n'


def _sqlite_source(tmp: Path, rows: list[dict[str, Any]]) -> Iterator[str]:
    yield sqlite_source(tmp, rows)


CREATE = ("CREATE TABLE contacts (customer_id VARCHAR(16), contact_id INTEGER, age INTEGER, "
          "job VARCHAR(32), duration INTEGER, education VARCHAR(32), y VARCHAR(8))")


def _postgres_source(tmp: Path, rows: list[dict[str, Any]]) -> Iterator[str]:
    name = f"sov_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={name}"
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute(CREATE)
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO contacts VALUES (%s, %s, %s, %s, %s, %s, %s)",
                                [tuple(r[c] for c in COLUMNS) for r in rows])
        yield f'[sources.crm]\nkind = "postgresql"\ndsn = "{dsn}"\n'
    finally:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                             autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _mariadb_source(tmp: Path, rows: list[dict[str, Any]]) -> Iterator[str]:
    name = f"sov_test_{uuid.uuid4().hex[:12]}"
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                            autocommit=True)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    try:
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                               database=name, autocommit=True)
        with conn.cursor() as cur:
            cur.execute(CREATE)
            cur.executemany("INSERT INTO contacts VALUES (%s, %s, %s, %s, %s, %s, %s)",
                            [tuple(r[c] for c in COLUMNS) for r in rows])
        conn.close()
        yield (f'[sources.crm]\nkind = "mariadb"\nhost = "127.0.0.1"\nport = 3306\n'
               f'user = "root"\ndatabase = "{name}"\n')
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


SOURCES = {"sqlite": _sqlite_source, "csv": _csv_source, "postgresql": _postgres_source,
           "mariadb": _mariadb_source}


@pytest.fixture(params=list(SOURCES))
def node(request: pytest.FixtureRequest, tmp_path: Path, bank_rows: list[dict[str, Any]]
         ) -> Iterator[NodeProcess]:
    source = SOURCES[request.param](tmp_path, bank_rows)
    # Threshold mode: this test checks each source's exact aggregates (dp answers are
    # tested against a real node in test_privacy_*.py).
    home = make_home(tmp_path, next(source), privacy="threshold")
    synced = run_cli("sov-node", "sync", "--home", str(home))
    assert f"contacts: {len(bank_rows)} added" in synced.stdout
    wallets = [Identity.generate() for _ in range(SUBJECTS)]
    bind_all(home, wallets)
    served = serve(home)
    served.wallets = wallets
    try:
        yield served
    finally:
        stop(served)
        source.close()


def test_grant_query_answer_and_access_log(node: NodeProcess,
                                           bank_rows: list[dict[str, Any]]) -> None:
    requester = Identity.generate()
    # Only 40 of the 50 customers consent: the answer must cover exactly those.
    consenting = node.wallets[:40]
    grant_all(node, requester, consenting, scopes=("transaction", "sentiment"))
    rows = [r for r in bank_rows if int(r["customer_id"][1:]) < 40]

    answer = Requester(requester).ask(node.address, node.ca_pem, {
        "dataset": "contacts", "purpose": "marketing-analytics",
        "measures": ["count", "sum:duration", "avg:age"], "group_by": ["job"]})

    expected = expected_by_job(rows)
    got = {g["key"][0]: g["values"] for g in answer.groups}
    assert set(got) == set(expected)
    for job, values in expected.items():
        assert got[job]["count"] == values["count"]
        assert got[job]["sum:duration"] == values["sum:duration"]
        assert got[job]["avg:age"] == pytest.approx(values["avg:age"])
    assert answer.mode == "threshold" and answer.dp is None
    assert "suppressed_groups" not in answer.document["body"]["answer"]  # no withheld count
    assert all(set(g) == {"key", "values"} for g in answer.groups)  # aggregates only

    # An encrypted (sentiment) column is decrypted inside the node and aggregated.
    by_y = Requester(requester).ask(node.address, node.ca_pem, {
        "dataset": "contacts", "purpose": "marketing-analytics", "measures": ["count"],
        "group_by": ["y"]})
    counts = {g["key"][0]: g["values"]["count"] for g in by_y.groups}
    for label, value in counts.items():
        assert value == sum(1 for r in rows if r["y"] == label)

    # The customer sees both accesses, each verified against the signed chain head.
    with node.client(consenting[0]) as client:
        log = client.access_events()
    answered = [e for e in log.events if e["outcome"] == "answered"]
    assert len(answered) == 2
    assert all(e["verified"] for e in log.events) and log.chain_intact
    assert answered[0]["requester"] == requester.did
    assert answered[0]["purpose"] == "marketing-analytics"
    assert all(e["mode"] == "threshold" and e["released"] for e in answered)
    # A non-consenting customer's data was not used.
    with node.client(node.wallets[45]) as client:
        assert client.access_events().events == []
