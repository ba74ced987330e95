"""How fast could any Python agent node answer a small query? A lower bound for issue 3.

Serves the bench's vault with the least work per Query that the node's guarantees demand,
and nothing else: open the NaCl box, parse the request, refuse a replayed nonce, run the
small query's SQL (restricted to the consenting subjects), append a hash-chained access event
durably before answering (group commit, ``synchronous=FULL``), sign the answer (Ed25519 over
RFC 8785 bytes, Data Integrity) and seal it. No grant checks, no k or overlap control, no
validation, no metrics or logs: what is left is what Python, gRPC, SQLite and libsodium cost.
The client is the node's own (``NodeClient``: seals, opens, verifies the signature), so the
client side is identical too.

Run with ``bench/query.py``'s cached vault and the same harness (same TLS, worker processes
and threads, 32 client threads, echo baseline with the same message sizes)::

    .venv/bin/python bench/floor.py [--quick]

and compare its ``floor_vs_echo`` with ``bench/query.py``'s ``throughput_vs_echo``: when the
floor itself is below the 0.5 target, no Python node can meet it on this machine.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import query as bench

from agent_node.client import NodeClient
from agent_node.home import load_home
from agent_node.server import build_service
from agent_node.vault import iso
from consent.canonical import canonicalize
from consent.envelope import open_sealed, seal
from consent.identity import Identity
from consent.integrity import sign_document
from protos.sovereign.v1 import node_pb2

SQL = ('SELECT COUNT(*), COUNT(DISTINCT sid) FROM "ds_contacts" WHERE "c_age" = ? '
       "AND +sid IN (SELECT sid FROM temp._eligible)")


class FloorNode:
    """Query and GetNodeInfo of sovereign.v1.AgentNode, with the least work per query."""

    def __init__(self, home_dir: Path, requester_did: str) -> None:
        self.home = load_home(home_dir, bench.PASS)
        self.identity = Identity(self.home.identity.signing_key)
        self.info = canonicalize(build_service(self.home).node_info())
        self.requester = requester_did
        self.local = threading.local()
        # Its own file, as the node's access log (agent_node.activity): a commit to the file
        # the readers read would drop their page caches.
        self.writer = _GroupCommit(self.home.vault_path.with_name("floor-log.sqlite"))
        self.nonces: set[str] = set()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = sqlite3.connect(self.home.vault_path, isolation_level=None)
            conn.execute("CREATE TEMP TABLE _eligible (sid INTEGER PRIMARY KEY)")
            conn.execute("INSERT INTO temp._eligible SELECT sid FROM subjects")
        return conn

    def GetNodeInfo(self, request: Any, context: Any) -> node_pb2.NodeInfoResponse:
        return node_pb2.NodeInfoResponse(version=1, document=self.info)

    def Query(self, request: node_pb2.SealedRequest, context: grpc.ServicerContext
              ) -> node_pb2.SealedResponse:
        opened = open_sealed(request.envelope, self.identity)
        message = orjson.loads(opened.plaintext)
        nonce = message["nonce"]
        if nonce in self.nonces:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "replayed")
        self.nonces.add(nonce)
        value = message["body"]["query"]["filters"][0]["value"]
        rows, subjects = self._conn().execute(SQL, (value,)).fetchone()
        now = iso(datetime.now(UTC))
        self.writer.append(nonce, {"time": now, "requester": opened.sender_did,
                                   "purpose": message["body"]["query"]["purpose"],
                                   "outcome": "answered", "subject_count": subjects})
        answer = {"dataset": "contacts", "groups": [{"key": [], "values": {"count": rows}}],
                  "answered_at": now}
        document = sign_document({"v": 1, "method": "Query", "in_reply_to": nonce,
                                  "issued": now, "body": {"answer": answer}}, self.identity)
        return node_pb2.SealedResponse(version=1, envelope=seal(
            orjson.dumps(document), self.identity, opened.sender_did))


class _GroupCommit:
    """Events and nonces chained and committed durably in batches; ``append`` returns once
    its batch is on disk."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.conn.execute("CREATE TABLE IF NOT EXISTS floor_log (seq INTEGER PRIMARY KEY, "
                          "body TEXT, hash TEXT, nonce TEXT UNIQUE)")
        self.lock = threading.Condition()
        self.queue: list[tuple[str, dict[str, Any], threading.Event]] = []
        self.lock_file = os.open(f"{path}.floor-lock", os.O_RDWR | os.O_CREAT, 0o600)
        threading.Thread(target=self._run, daemon=True).start()

    def append(self, nonce: str, body: dict[str, Any]) -> None:
        done = threading.Event()
        with self.lock:
            self.queue.append((nonce, body, done))
            self.lock.notify()
        done.wait()

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self.queue:
                    self.lock.wait()
                batch, self.queue = self.queue, []
            # Worker processes share the chain: take turns on a file lock (as the node's
            # writers do) and continue from the head on disk.
            fcntl.flock(self.lock_file, fcntl.LOCK_EX)
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                seq, head = self.conn.execute(
                    "SELECT seq, hash FROM floor_log ORDER BY seq DESC LIMIT 1").fetchone() \
                    or (0, "00" * 32)
                rows = []
                for nonce, body, _ in batch:
                    seq += 1
                    text = canonicalize({**body, "seq": seq})
                    head = hashlib.sha256(bytes.fromhex(head)
                                          + hashlib.sha256(text).digest()).hexdigest()
                    rows.append((seq, text.decode(), head, nonce))
                self.conn.executemany("INSERT INTO floor_log VALUES (?, ?, ?, ?)", rows)
                self.conn.execute("COMMIT")
            finally:
                fcntl.flock(self.lock_file, fcntl.LOCK_UN)
            for _, _, done in batch:
                done.set()


def run_server(home_dir: Path, requester_did: str, port_file: Path, workers: int) -> None:
    home = load_home(home_dir, bench.PASS)

    def start(address: str, reuse_port: bool) -> Any:
        node = FloorNode(home_dir, requester_did)
        handler = grpc.method_handlers_generic_handler("sovereign.v1.AgentNode", {
            "GetNodeInfo": grpc.unary_unary_rpc_method_handler(
                node.GetNodeInfo, request_deserializer=node_pb2.NodeInfoRequest.FromString,
                response_serializer=node_pb2.NodeInfoResponse.SerializeToString),
            "Query": grpc.unary_unary_rpc_method_handler(
                node.Query, request_deserializer=node_pb2.SealedRequest.FromString,
                response_serializer=node_pb2.SealedResponse.SerializeToString)})
        return bench.serve_like_the_node(home, handler, "sovereign.v1.AgentNode", address,
                                         reuse_port)

    bench.serve_forked(start, workers, port_file)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--serve", nargs=3, metavar=("HOME", "REQUESTER", "PORT_FILE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_server(Path(args.serve[0]), args.serve[1], Path(args.serve[2]), args.workers)
        return
    rows, subjects = (100_000, 100) if args.quick else (1_000_000, 400)
    seconds = 4.0 if args.quick else 8.0
    cached, _ = bench.synced_home(rows, subjects)
    with tempfile.TemporaryDirectory() as tmp:
        home_dir = Path(tmp) / "node"
        shutil.copytree(cached, home_dir)
        requester = Identity.generate()
        port_file = home_dir / "floor-port"
        proc = bench.subprocess.Popen(
            [sys.executable, __file__, "--serve", str(home_dir), requester.did, str(port_file),
             "--workers", str(args.workers)],
            stdout=bench.subprocess.DEVNULL, stderr=bench.subprocess.DEVNULL)
        try:
            port = bench.wait_for_port(proc, port_file)
            home = load_home(home_dir, bench.PASS)
            small = {"dataset": "contacts", "purpose": "marketing-analytics",
                     "measures": ["count"],
                     "filters": [{"column": "age", "op": "eq", "value": bench.SMALL_AGE}]}
            clients = [NodeClient(f"127.0.0.1:{port}", home.ca_pem(), requester, timeout=60)
                       for _ in range(bench.CLIENTS)]
            for client in clients:
                client.query(small)
            envelope, _ = clients[0].sealed_request("Query", {"query": small})
            reply = clients[0].query(small)
            floor = bench.measured_load(lambda i: clients[i].query(small), bench.CLIENTS,
                                        seconds, proc.pid)
        finally:
            bench.stop(proc)
        echo = bench.echo_load(home_dir, len(envelope),
                               bench.ENVELOPE_OVERHEAD + len(canonicalize(reply)), seconds,
                               args.workers)
    print(f"floor node {floor.qps:.0f}/s vs echo {echo.qps:.0f}/s; CPU per call: floor server "
          f"{floor.server_ms:.2f} ms + client {floor.client_ms:.2f} ms, echo server "
          f"{echo.server_ms:.2f} ms + client {echo.client_ms:.2f} ms")
    print(json.dumps({"bench": "floor", "rows": rows, "workers": args.workers,
                      "floor_vs_echo": round(floor.qps / echo.qps, 3), "target": 0.5,
                      "floor_server_cpu_ms": round(floor.server_ms, 2),
                      "floor_client_cpu_ms": round(floor.client_ms, 2),
                      "echo_server_cpu_ms": round(echo.server_ms, 2),
                      "echo_client_cpu_ms": round(echo.client_ms, 2)}))


if __name__ == "__main__":
    main()
