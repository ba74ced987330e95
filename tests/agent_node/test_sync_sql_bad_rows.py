"""Bad-row reporting against the real SQL servers (issue 16): a malformed row of a PostgreSQL
or MariaDB table is named by its table, row number and row key, with the column and the
value (redacted for identity columns); the sync is refused and nothing changes, or, with the
data map's ``on_bad_row = "skip"``, the row is reported and left out, never altered.

The SQLite and CSV cases are tests/agent_node/test_sync_reporting.py. Each test creates its
own database on the local servers (PostgreSQL 127.0.0.1:5432, trust auth, user postgres;
MariaDB 127.0.0.1:3306, root without a password) and drops it afterwards. Source columns are
text, as in many real sources, so a value the data map types as real can be malformed.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from agent_node.home import load_home
from agent_node.vault import Vault, table_name
from tests.agent_node.conftest import PASSPHRASE, run_cli

CREATE = ("CREATE TABLE orders (customer_id VARCHAR(16), order_id INTEGER, amount VARCHAR(16), "
          "units VARCHAR(16), phone VARCHAR(32))")
INSERT = "INSERT INTO orders VALUES (%s, %s, %s, %s, %s)"
GOOD = [(f"C{i:03d}", i, f"{i}.5", str(i % 7), f"55501{i:02d}") for i in range(1, 9)]
BAD = [
    ("C101", 101, "12.5x", "1", "5550101"),          # amount is not a number
    ("C102", 102, "3.0", "3.7", "5550102"),          # units 3.7 is not an integer (never rounded)
    ("C105", 105, "6.0", "2", "call-me-maybe"),      # an identity column's value: redacted
    ("", 106, "7.0", "2", "5550106"),                # no subject
]
DATAMAP = """
{source}
[datasets.orders]
source = "shop"
table = "orders"
subject_key = ["customer_id"]
row_key = ["order_id"]
{policy}

[datasets.orders.columns]
amount = {{ type = "real", scope = "transaction" }}
units = {{ type = "integer", scope = "transaction" }}
phone = {{ type = "integer", scope = "identity" }}
"""


def _run(cursor: Any, statement: str, rows: list[tuple[object, ...]] | None) -> None:
    if rows:
        cursor.executemany(statement, rows)
    else:
        cursor.execute(statement)


class SqlTable:
    """One throw-away database with an ``orders`` table on a local server."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = f"sov_test_{uuid.uuid4().hex[:12]}"
        if kind == "postgresql":
            with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                                 autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{self.name}"')
            self.source = (f'[sources.shop]\nkind = "postgresql"\n'
                           f'dsn = "host=127.0.0.1 port=5432 user=postgres dbname={self.name}"\n')
        else:
            with pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                                 autocommit=True) as admin, admin.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{self.name}`")
            self.source = (f'[sources.shop]\nkind = "mariadb"\nhost = "127.0.0.1"\n'
                           f'port = 3306\nuser = "root"\ndatabase = "{self.name}"\n')
        self.execute(CREATE)

    def execute(self, statement: str, rows: list[tuple[object, ...]] | None = None) -> None:
        if self.kind == "postgresql":
            with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={self.name}") as conn, \
                    conn.cursor() as cur:
                _run(cur, statement, rows)
        else:
            with pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                                 database=self.name, autocommit=True) as conn, \
                    conn.cursor() as cur:
                _run(cur, statement, rows)

    def fill(self, rows: list[tuple[object, ...]]) -> None:
        self.execute("DELETE FROM orders")
        self.execute(INSERT, rows)

    def drop(self) -> None:
        if self.kind == "postgresql":
            with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                                 autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        else:
            with pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                                 autocommit=True) as admin, admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{self.name}`")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlbad") / "node"
    run_cli("sov-node", "init", "--home", str(path))
    return path


@pytest.fixture(params=["postgresql", "mariadb"])
def table(request: pytest.FixtureRequest) -> Iterator[SqlTable]:
    created = SqlTable(request.param)
    try:
        yield created
    finally:
        created.drop()


def _sync(home: Path, table: SqlTable, policy: str = "", *args: str
          ) -> subprocess.CompletedProcess[str]:
    (home / "datamap.toml").write_text(DATAMAP.format(source=table.source, policy=policy))
    return run_cli("sov-node", "sync", "--home", str(home), *args, check=False)


def _stored(home: Path) -> list[tuple[float, int]]:
    node = load_home(home, PASSPHRASE)
    with Vault(node.vault_path, node.keys).connection() as conn:
        return sorted(conn.execute(
            f'SELECT c_amount, c_units FROM "{table_name("orders")}"').fetchall())


ROW = r"table orders row \d+ \(order_id=1\d\d\)"


def test_a_malformed_sql_row_refuses_the_sync_and_changes_nothing(home: Path,
                                                                   table: SqlTable) -> None:
    table.fill(GOOD)
    assert _sync(home, table).returncode == 0
    before = _stored(home)
    assert before == sorted((i + 0.5, i % 7) for i in range(1, 9))

    table.fill([*GOOD, BAD[0]])
    refused = _sync(home, table)
    assert refused.returncode == 1
    lines = refused.stderr.splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r"error: dataset 'orders', table orders row \d+ \(order_id=101\): column 'amount': "
        r"'12\.5x' is not of type real; nothing was synced: fix the source, or set "
        r"on_bad_row = \"skip\" for this dataset in the data map to leave such rows out",
        lines[0]), lines[0]
    assert _stored(home) == before


def test_skip_reports_every_bad_sql_row_and_stores_only_good_ones(home: Path,
                                                                   table: SqlTable) -> None:
    table.fill([*GOOD, *BAD])
    done = _sync(home, table, 'on_bad_row = "skip"')
    assert done.returncode == 0, done.stderr
    assert f"{len(BAD)} malformed row(s) left out" in done.stdout
    warnings = done.stderr.splitlines()
    expected = [
        ROW + r": column 'amount': '12\.5x' is not of type real",
        ROW + r": column 'units': '3\.7' is not of type integer",
        ROW + r": column 'phone': \(redacted: identity column\) is not of type integer",
        ROW + r": the subject key \(customer_id\) is empty",
    ]
    assert len(warnings) == len(expected), warnings
    by_key = sorted(warnings, key=lambda line: line.split("order_id=", 1)[-1])
    for line, pattern in zip(by_key, expected, strict=True):
        assert re.fullmatch(r"warning: orders: left out " + pattern, line), line
    assert "call-me-maybe" not in done.stderr + done.stdout
    assert _stored(home) == sorted((i + 0.5, i % 7) for i in range(1, 9))  # nothing altered

    as_json = json.loads(_sync(home, table, 'on_bad_row = "skip"', "--json").stdout)
    assert as_json["datasets"][0]["skipped"] == len(BAD)
    assert all(re.match(ROW, p) for p in as_json["datasets"][0]["problems"])
