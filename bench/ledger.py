"""Benchmark of the hash ledger (RFC 9162 log in SQLite) against baselines measured in the
same run, with the PyPI package pymerkle as a peer.

1. The service path ÷ the authenticated floor (issue 15). Every entry the gRPC service
   takes is parsed, validated, canonicalised, its author's Ed25519 signature verified,
   hashed and stored; ``ledger.service.append_events`` is that path after the wire, and is
   what is timed here, in batches, on signed ``access_head`` entries by 8 registered nodes.
   Floor: per entry one Ed25519 verification (PyNaCl/libsodium, keys and signing inputs
   prepared beforehand) plus the leaf and node hashes with hashlib and a bare
   ``executemany`` of the rows into SQLite, one transaction per batch. Target >= 0.5.
2. Batched append throughput of pre-encoded entries ÷ the hash+insert floor (no signature):
   ``Log.append_entries`` (target >= 0.5), and pymerkle's bare appends beside it.
   Both floors use a connection from ``ledger.log.connect`` (the log's own page size, WAL,
   synchronous=FULL and cache size).
3. Inclusion-proof generation + verification rate ÷ the raw hashlib cost of the hashes in
   those proofs. Target >= 0.2.

Medians of --runs passes. Usage: python bench/ledger.py [--quick]
(quick: 100,000 entries; full: 1,000,000). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# This file is called ledger.py: drop bench/ from the import path so that ``ledger`` is the
# package, not this script.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import nacl.signing  # noqa: E402

from consent.did import resolve  # noqa: E402
from consent.identity import Identity  # noqa: E402
from ledger.authority import sign_entry, signing_input_of_entry  # noqa: E402
from ledger.authors import Author  # noqa: E402
from ledger.events import encode_event, make_event  # noqa: E402
from ledger.home import init_home, open_log  # noqa: E402
from ledger.log import connect  # noqa: E402
from ledger.merkle import SHA256, verify_inclusion  # noqa: E402
from ledger.service import append_events  # noqa: E402

BATCH = 10_000
NODE = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"


def make_events(n: int) -> list[dict]:
    return [
        make_event("access_head", node=NODE, head=hashlib.sha256(i.to_bytes(8, "big")).hexdigest(),
                   sequence=i)
        for i in range(n)
    ]


def signed_events(n: int) -> tuple[list[bytes], dict[str, Author]]:
    """``n`` access heads signed by 8 registered nodes, as the wire carries them (RFC 8785
    bytes, ``ledger.client``), and the authors registry that admits them."""
    nodes = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(8)]
    authors = {
        node.did: Author(node.did, f"node {i}", "node", frozenset({"access_head"}),
                         "2026-01-01T00:00:00Z")
        for i, node in enumerate(nodes)
    }
    raw = []
    for i in range(n):
        node = nodes[i % len(nodes)]
        event = make_event("access_head", node=node.did,
                           head=hashlib.sha256(i.to_bytes(8, "big")).hexdigest(), sequence=i)
        raw.append(encode_event(sign_entry(event, node)))
    return raw, authors


def floor_authenticated(path: Path, raw: list[bytes]) -> float:
    """The authenticated floor: one Ed25519 verification per entry, then exactly the work of
    ``floor_append``. The verify keys and signing inputs are prepared before the clock."""
    keys: dict[str, nacl.signing.VerifyKey] = {}
    checks = []
    for entry in raw:
        event = json.loads(entry)
        if event["author"] not in keys:
            # A fresh VerifyKey from the raw bytes: no cache of the service's is shared.
            raw_key = bytes(resolve(event["author"]).ed25519)
            keys[event["author"]] = nacl.signing.VerifyKey(raw_key)
        checks.append((keys[event["author"]], signing_input_of_entry(entry),
                       bytes.fromhex(event["signature"])))
    start = time.perf_counter()
    for key, message, signature in checks:
        key.verify(message, signature)
    verified = time.perf_counter() - start
    return verified + floor_append(path, raw)


def service_append(home: Path, raw: list[bytes], authors: dict[str, Author]) -> float:
    """Seconds for ``ledger.service.append_events`` (the gRPC Append path after the wire)
    over ``raw`` in batches."""
    log = open_log(home, "bench")
    start = time.perf_counter()
    for b in range(0, len(raw), BATCH):
        append_events(log, raw[b : b + BATCH], authors)
    elapsed = time.perf_counter() - start
    log.close()
    return elapsed


def floor_append(path: Path, entries: list[bytes]) -> float:
    """hashlib leaf + node hashes and one executemany per batch, one commit per batch.

    The connection comes from ``ledger.log.connect``, so the floor runs with exactly the
    log's settings (page size, WAL, synchronous=FULL, cache size) and writes the same rows as
    the log's ``entries`` table: neither side gets pragmas the other lacks.
    """
    db = connect(path)
    db.execute("CREATE TABLE entries (idx INTEGER PRIMARY KEY, leaf_hash BLOB, entry BLOB)")
    sha = hashlib.sha256
    start = time.perf_counter()
    frontier: list[bytes] = []  # the same node hashes the log computes (one per merge)
    for b in range(0, len(entries), BATCH):
        chunk = entries[b : b + BATCH]
        leaves = [sha(b"\x00" + e).digest() for e in chunk]
        for i, leaf in enumerate(leaves, start=b):
            h, index = leaf, i
            while index & 1:
                h = sha(b"\x01" + frontier.pop() + h).digest()
                index >>= 1
            frontier.append(h)
        db.execute("BEGIN IMMEDIATE")
        rows = zip(range(b, b + len(chunk)), leaves, chunk, strict=True)
        db.executemany("INSERT INTO entries VALUES (?, ?, ?)", rows)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def log_append(home: Path, items: list[Any], *, encoded: bool = True) -> float:
    """Seconds to append ``items`` in batches: pre-encoded entries (``append_entries``, the
    floor's work) or event dicts validated and encoded first (``append_batch``)."""
    log = open_log(home, "bench")
    append = log.append_entries if encoded else log.append_batch
    start = time.perf_counter()
    for b in range(0, len(items), BATCH):
        append(items[b : b + BATCH])
    elapsed = time.perf_counter() - start
    log.close()
    return elapsed


def proofs(home: Path, indexes: list[int]) -> tuple[float, float]:
    """(time to generate + verify every proof, raw hashlib time of their node hashes)."""
    log = open_log(home, "bench")
    tree, size = log.tree, log.size
    root = tree.root()
    leaves = [tree.complete(0, i) for i in indexes]
    start = time.perf_counter()
    made = []
    for i, leaf in zip(indexes, leaves, strict=True):
        proof = tree.inclusion_proof(i, size)
        verify_inclusion(SHA256, i, size, leaf, proof, root)
        made.append(proof)
    ours = time.perf_counter() - start
    sha = hashlib.sha256
    start = time.perf_counter()
    for leaf, proof in zip(leaves, made, strict=True):
        h = leaf
        for p in proof:
            h = sha(b"\x01" + p + h).digest()
    raw = time.perf_counter() - start
    log.close()
    return ours, raw


def pymerkle_peer(path: Path, entries: list[bytes], indexes: list[int]) -> tuple[float, float]:
    from pymerkle import SqliteTree
    from pymerkle import verify_inclusion as pm_verify

    tree = SqliteTree(str(path), algorithm="sha256")
    start = time.perf_counter()
    for b in range(0, len(entries), BATCH):
        tree.append_entries(entries[b : b + BATCH])
    append = time.perf_counter() - start
    size = tree.get_size()
    root = tree.get_root(size)
    start = time.perf_counter()
    for i in indexes:
        proof = tree.prove_inclusion(i + 1, size)
        pm_verify(tree.get_leaf(i + 1), root, proof)
    return append, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 entries instead of 1,000,000")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    n = 100_000 if args.quick else 1_000_000
    events = make_events(n)
    entries = [encode_event(e) for e in events]
    raw, authors = signed_events(n)
    rng = random.Random(7)
    indexes = [rng.randrange(n) for _ in range(20_000 if args.quick else 50_000)]
    auth_floors, services, floors, appends, ours_p, raw_p = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for run in range(args.runs):
            # Interleaved, so that a load change on a shared machine hits both sides alike.
            auth_floors.append(floor_authenticated(root / f"afloor{run}.db", raw))
            home = root / f"service{run}"
            init_home(home, origin="bench.example/log", passphrase="bench")
            services.append(service_append(home, raw, authors))
            floors.append(floor_append(root / f"floor{run}.db", entries))
            home = root / f"log{run}"
            init_home(home, origin="bench.example/log", passphrase="bench")
            appends.append(log_append(home, entries))
            if run == 0:
                proof_home = home
        for _ in range(args.runs):
            o, r = proofs(proof_home, indexes)
            ours_p.append(o)
            raw_p.append(r)
        pm_append, pm_proofs = pymerkle_peer(root / "pymerkle.db", entries, indexes[:5000])
    auth_t, service_t = statistics.median(auth_floors), statistics.median(services)
    floor_t, append_t = statistics.median(floors), statistics.median(appends)
    ours_t, raw_t = statistics.median(ours_p), statistics.median(raw_p)
    print(f"entries: {n:,}, batch {BATCH:,}, proofs: {len(indexes):,}, runs: {args.runs}")
    print(f"floor, authenticated (Ed25519 verify + hashlib + executemany): "
          f"{n / auth_t:,.0f} entries/s (median {auth_t:.2f} s)")
    print(f"ledger service path (parse, validate, encode, verify, append): "
          f"{n / service_t:,.0f} entries/s (median {service_t:.2f} s)  "
          f"ratio {auth_t / service_t:.3f}")
    print(f"floor (hashlib + executemany):  {n / floor_t:,.0f} entries/s (median {floor_t:.2f} s)")
    print(f"ledger append_entries:          {n / append_t:,.0f} entries/s (median {append_t:.2f} s)"
          f"  ratio {floor_t / append_t:.3f}")
    print(f"pymerkle SqliteTree append:     {n / pm_append:,.0f} entries/s"
          f"  ratio {floor_t / pm_append:.3f} (no signatures, no validation)")
    print(f"inclusion proof gen+verify:     {len(indexes) / ours_t:,.0f} proofs/s")
    print(f"raw hashlib of those hashes:    {len(indexes) / raw_t:,.0f} proofs/s")
    print(f"pymerkle prove+verify:          {5000 / pm_proofs:,.0f} proofs/s")
    print(json.dumps({
        "bench": "ledger",
        "entries": n,
        "runs": args.runs,
        "service_vs_authenticated_floor": round(auth_t / service_t, 3),
        "append_vs_floor": round(floor_t / append_t, 3),
        "pymerkle_append_vs_floor": round(floor_t / pm_append, 3),
        "pymerkle_append_vs_authenticated_floor": round(auth_t / pm_append, 3),
        "proof_vs_raw_hash": round(raw_t / ours_t, 3),
        "pymerkle_proof_vs_raw_hash": round((raw_t / len(indexes)) / (pm_proofs / 5000), 3),
        "target": {"service_vs_authenticated_floor": 0.5, "append_vs_floor": 0.5,
                   "proof_vs_raw_hash": 0.2},
    }))


if __name__ == "__main__":
    main()
