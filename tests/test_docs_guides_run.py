"""The operator's guide (docs/operator.md) and the compliance officer's guide (docs/audit.md)
replayed as real processes, command by command in the order the guides give them (issue 16:
the docs' command examples for every tool run, not only the wallet's).

One world for both, in a temporary folder: a real node home (``sov-node init`` as written)
whose data map is the guide's own (section 2) over a SQLite ``sales.db`` built from
../shared/datasets (Telco customer churn: customer, monthly charge, payment method,
contract), a real ledger (``sov-ledger init`` + ``serve``) the node anchors in through the
guide's ``node.toml`` keys (section 6), a requester (``sov-query``) and a customer's wallet
(``consent-wallet``) that grants it. The guides' placeholders are made real: ``/srv/sov-node``
and ``/var/lib/sov-ledger`` are the temporary homes, ``node.acme.example:7443`` and
``ledger.example:7444`` the served ports, ``did:key:z6Mk...`` the DID the line needs,
``[optional parts]`` left out, globs expanded as a shell would. Each command must exit as
the guide says (0, or the documented 1) with its key output; the few lines that need what
this world cannot hold (a chain node, a composite-key data map) are listed with the reason,
and a test checks that the list still matches the guides.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import secrets
import shlex
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from consent.identity import Identity
from protos.transport import free_port
from tests.test_docs_examples import _join_continuations, blocks

REPO = Path(__file__).resolve().parent.parent
OPERATOR = REPO / "docs" / "operator.md"
AUDIT = REPO / "docs" / "audit.md"
BIN = Path(sys.executable).parent
TELCO = REPO.parent / "shared" / "datasets" / "telco_churn" / "WA_Fn-UseC_-Telco-Customer-Churn.csv"
TOOLS = ("sov-node", "sov-query", "sov-ledger", "sov-audit", "consent-wallet")
OPTIONAL = re.compile(r"\s\[[^\]]*\]")
PASSPHRASE = "a long passphrase for the guide"
ROWS = 300
REGIONS = ("north", "south", "east", "west")

# Lines this world does not run, and why (checked against the guides, so the list stays true).
NOT_RUN = {
    # A second data map, with a two-column subject key: this one keys customers by one id.
    "sov-node subjects bind --home /srv/sov-node '[\"acme\", \"1042\"]' did:key:z6Mk...":
        "composite key",
    # An Ethereum node and an anchoring account on it: tests/ledger/test_anchor.py runs anvil.
    "sov-audit verify --log-key log-public.json --chain-rpc http://127.0.0.1:8545 "
    "receipt-1.json": "chain",
    # Node-signed head events written by hand: what `sov-node log push` does, run above.
    "sov-ledger submit --ledger ledger.example:7444 --ca ca.pem --log-key log-public.json "
    "heads.json": "signed events",
}


def guide_lines(path: Path) -> list[str]:
    """The tool invocations and ``export`` lines of a guide's sh blocks, in order, each on
    one line, comments and ``[optional]`` parts left out."""
    found = []
    for _lang, body in blocks(path, "sh"):
        for line in _join_continuations(body.splitlines()):
            text = line.strip()
            if text.split(" ", 1)[0] not in (*TOOLS, "export"):
                continue
            text = re.sub(r"\s+#.*$", "", text)
            found.append(re.sub(r"\s+", " ", OPTIONAL.sub("", text)).strip())
    return found


@dataclass
class World:
    root: Path
    node_home: Path
    ledger_home: Path
    node_port: int
    ledger_port: int
    env: dict[str, str]
    node_did: str = ""
    customer_did: str = ""
    requester_did: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    def words(self, line: str, did: str = "") -> list[str]:
        """The line with its placeholders made real, split as a shell would."""
        text = (line.replace("/srv/sov-node", str(self.node_home))
                .replace("/var/lib/sov-ledger", str(self.ledger_home))
                .replace("0.0.0.0:7443", f"127.0.0.1:{self.node_port}")
                .replace("node.acme.example:7443", f"127.0.0.1:{self.node_port}")
                .replace("ledger.example:7444", f"127.0.0.1:{self.ledger_port}")
                .replace("~/.sov-query", str(self.root / "requester")))
        if did:
            text = text.replace("did:key:z6Mk...", did)
        words = []
        for word in shlex.split(text):
            if word == "log-public.json":
                word = str(self.ledger_home / "log-public.json")
            elif word == "ca.pem":
                word = str(self.node_home / "tls" / "ca.pem")
            if "*" in word:
                words += sorted(glob.glob(str(self.root / word)))
            else:
                words.append(word)
        return words

    def run(self, line: str, *, did: str = "", status: int = 0) -> str:
        """Run a guide's line; it must exit with ``status`` (stdout returned, remembered)."""
        words = self.words(line, did)
        if words[0] == "export":
            name, value = words[1].split("=", 1)
            self.env[name] = PASSPHRASE if name.endswith("PASSPHRASE") else value
            return ""
        proc = subprocess.run([str(BIN / words[0]), *words[1:]], env=self.env, cwd=self.root,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == status, (line, proc.stdout, proc.stderr)
        if status == 0:  # stderr holds at most warnings and notes, never an error
            assert "error" not in proc.stderr.lower() and "Traceback" not in proc.stderr, \
                (line, proc.stderr)
        self.outputs[line] = proc.stdout + proc.stderr
        return proc.stdout

    def serve(self, words: list[str], ready: str) -> str:
        """Start a server the guide runs; its first line (it must say ``ready``)."""
        proc = subprocess.Popen([str(BIN / words[0]), *words[1:]], env=self.env, cwd=self.root,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.servers.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert ready in line, (words, line)
        return line

    def stop(self) -> None:
        for proc in self.servers:
            proc.send_signal(signal.SIGTERM)
        for proc in self.servers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _sales_db(path: Path) -> None:
    """The guide's ``orders`` table, from the Telco churn data: one order per customer,
    the monthly charge as the amount, the payment method as the channel; the guide's
    customer C-1042 holds the first three orders."""
    with TELCO.open(newline="") as handle:
        people = [row for _, row in zip(range(ROWS), csv.DictReader(handle), strict=False)]
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (order_id INTEGER, customer_id TEXT, amount REAL, "
                   "channel TEXT, email TEXT, chat_mood TEXT, region TEXT)")
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?)", [
            (i, "C-1042" if i < 3 else row["customerID"], float(row["MonthlyCharges"]),
             row["PaymentMethod"], f"{row['customerID'].lower()}@example.com",
             row["Contract"], REGIONS[i % 4]) for i, row in enumerate(people)])


def _toml_block(path: Path, heading: str) -> str:
    section = path.read_text(encoding="utf-8").split(heading, 1)[1]
    return re.search(r"```toml\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("guides")
    made = World(root=root, node_home=root / "sov-node", ledger_home=root / "sov-ledger",
                 node_port=free_port(), ledger_port=free_port(),
                 env={**os.environ, "SOV_LEDGER_PASSPHRASE": PASSPHRASE,
                      "CONSENT_WALLET_PASSPHRASE": PASSPHRASE,
                      "CONSENT_WALLET_HOME": str(root / "wallet")})
    made.env.pop("SOV_NODE_HOME", None)
    try:
        yield made
    finally:
        made.stop()


def _wallet(world: World, *args: str) -> str:
    """The customer's side (docs/wallet.md is replayed by tests/test_docs_examples.py)."""
    proc = subprocess.run([str(BIN / "consent-wallet"), *args], env=world.env, cwd=world.root,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, (args, proc.stderr)
    return proc.stdout


def test_not_run_lines_are_in_the_guides() -> None:
    lines = set(guide_lines(OPERATOR)) | set(guide_lines(AUDIT))
    assert set(NOT_RUN) <= lines, set(NOT_RUN) - lines


@pytest.fixture(scope="module")
def operated(world: World) -> World:
    """The world after the operator's guide ran through."""
    _operator_guide(world)
    return world


def _operator_guide(world: World) -> None:
    lines = guide_lines(OPERATOR)
    assert len(lines) >= 20
    ledger_home = world.ledger_home
    subprocess.run([str(BIN / "sov-ledger"), "init", "--home", str(ledger_home)],
                   env=world.env, capture_output=True, check=True, timeout=120)
    world.serve([str(BIN / "sov-ledger"), "serve", "--home", str(ledger_home), "--listen",
                 f"127.0.0.1:{world.ledger_port}"], "serving on")
    _wallet(world, "init")
    world.customer_did = json.loads(_wallet(world, "whoami", "--json"))["did"]
    asked = False
    # Section 6's "on demand" anchoring runs once the node has answered something (section 7
    # below): a node that answered nothing yet has nothing to anchor, as the guide says.
    later = [line for line in lines if line.startswith(("sov-node log push",
                                                        "sov-node log receipts",
                                                        "sov-audit verify"))]
    for line in [*(x for x in lines if x not in later), *later]:
        if line in NOT_RUN:
            continue
        words = line.split()
        if words[:2] == ["sov-node", "init"]:
            out = world.run(line)
            world.node_did = re.search(r"DID: (did:key:\S+)", out).group(1)  # type: ignore[union-attr]
            # Section 2: the guide's data map, over the Telco-based sales.db.
            datamap = _toml_block(OPERATOR, "## 2. Sources and the data map")
            _sales_db(world.root / "sales.db")
            (world.node_home / "datamap.toml").write_text(
                datamap.replace("/srv/erp/sales.db", str(world.root / "sales.db")))
        elif words[:2] == ["sov-node", "serve"]:
            world.serve(world.words(line), "serving acme-eu (did:key:")
        elif words[:3] == ["sov-node", "subjects", "bind"]:
            world.run(line, did=world.customer_did)
        elif words[:3] == ["sov-node", "subjects", "unbind"]:
            world.run(line, did=world.customer_did)
            # Bound again, for the customer's grant the requester asks under below.
            world.run("sov-node subjects bind --home /srv/sov-node C-1042 did:key:z6Mk...",
                      did=world.customer_did)
        elif words[:3] == ["sov-ledger", "authors", "add"]:
            world.run(line, did=world.node_did)
            _anchor_in_the_ledger(world)
        elif words[:2] == ["sov-query", "ask"]:
            if not asked:
                _customer_grants(world)
                (world.root / "questions.json").write_text(json.dumps([
                    {"dataset": "orders", "purpose": "quote-generation", "measures": ["count"]},
                    {"dataset": "orders", "purpose": "quote-generation",
                     "measures": ["sum:amount"], "group_by": ["region"]}]))
                asked = True
            world.run(line)
        else:
            out = world.run(line)
            if words[:2] == ["sov-query", "init"]:
                world.requester_did = re.search(r"did:key:\S+", out).group(0)  # type: ignore[union-attr]


def test_the_operator_guide_runs(operated: World) -> None:
    world = operated
    out = world.outputs
    assert "orders:" in out["sov-node sync --home /srv/sov-node"]
    assert world.customer_did in out["sov-node subjects list --home /srv/sov-node"]
    assert '"seq"' in out["sov-node log head --home /srv/sov-node"]
    push = out["sov-node log push --home /srv/sov-node"]
    assert "pushed" in push or "anchored" in push, push
    assert list((world.root / "receipts").glob("receipt-*.json"))
    assert "ok" in out["sov-audit verify --log-key log-public.json receipts/*.json"].lower()
    assert world.requester_did in out["sov-query whoami --home ~/.sov-query"]
    assert (world.root / "acme-crm-profile.json").exists()
    asks = [text for line, text in out.items() if line.startswith("sov-query ask")]
    assert len(asks) == 3 and all("differentially private per customer" in a for a in asks)
    assert "question 3:" in asks[1] and "question 2:" in asks[2]  # reports: every question


def test_the_audit_guide_runs(operated: World) -> None:
    world = operated
    lines = guide_lines(AUDIT)
    assert len(lines) >= 20
    ledger_ca = str(world.ledger_home / "tls" / "ca.pem")
    log_key = str(world.ledger_home / "log-public.json")
    node = f"127.0.0.1:{world.node_port}"
    # The customer's wallet anchors its grants: five more entries, so that the log's size 5
    # (the guide's consistency proof) is a tree head a receipt holds.
    _wallet(world, "ledger", "set", f"127.0.0.1:{world.ledger_port}", "--ca", ledger_ca,
            "--log-key", log_key)
    for purpose in ("quote-generation", "renewal-warning", "churn-analysis",
                    "service-improvement", "marketing-analytics"):
        _wallet(world, "grant", "--node", node, "--requester", world.requester_did,
                "--purpose", purpose, "--scope", "transaction", "--ttl", "24h")
    _wallet(world, "receipts", "--out", str(world.root / "my-receipts"))
    mine = sorted((world.root / "my-receipts").glob("grant-*.json"))
    heads = sorted((world.root / "receipts").glob("receipt-*.json"))
    sized = {_size(path): path for path in [*heads, *mine]}
    assert 5 in sized and max(sized) > 5, sorted(sized)
    # One of the customer's anchored grants (`consent-wallet credential` writes it below).
    grant = next(g for g in json.loads(_wallet(world, "grants", "--offline", "--json"))
                 if g["ledger_anchored"])
    receipt = next(p for p in mine if grant["id"].rsplit(":", 1)[1] in p.name)
    files = {"receipt-0.json": heads[0], "receipt-1.json": receipt,
             "old-receipt.json": sized[5], "new-receipt.json": sized[max(sized)],
             "my-receipts/grant-1.json": receipt}
    key = json.loads(_wallet(world, "audit-key", "--yes", "--json"))
    other_node, coordinator = Identity.generate().did, Identity.generate().did
    for line in lines:
        if line in NOT_RUN:
            continue
        text = line
        for placeholder, path in files.items():
            text = text.replace(f" {placeholder}", f" {path}")
        text = (text.replace("<64 hex characters>", key["salt"]).replace("--salt <hex>",
                f"--salt {key['salt']}").replace("<hex>", key["subject_commitment"])
                .replace("did:key:z6Mkw...", other_node).replace("did:key:z6Mkc...", coordinator)
                .replace("did:key:z6Mk...", key["did"]).replace("urn:uuid:...", grant["id"]))
        if text.startswith("sov-audit report") and "node-receipts/" in text:
            (world.root / "node-receipts").mkdir(exist_ok=True)
            for head in heads:
                (world.root / "node-receipts" / head.name).write_bytes(head.read_bytes())
        if "operator-keystore.json" in text:
            # The other way to give a ledger its account (the guide's "or"): an account the
            # operator has, as a v3 keystore, on a ledger without one yet.
            _keystore(world.root)
            second = world.root / "sov-ledger-2"
            subprocess.run([str(BIN / "sov-ledger"), "init", "--home", str(second)],
                           env=world.env, capture_output=True, check=True, timeout=120)
            text = text.replace("/var/lib/sov-ledger", str(second))
        if text.startswith("consent-wallet audit-key"):
            text += " --yes"  # it asks first; the guide's reader answers y
        printed = world.run(text)
        if line.startswith("sov-ledger authors list") and "--json" in line:
            (world.root / "authors.json").write_text(printed)  # "saved as authors.json"
        world.outputs[line] = world.outputs.pop(text)
    out = world.outputs
    for line in lines:
        if line.startswith("sov-audit verify") and line not in NOT_RUN:
            assert re.search(r"^OK: all \d+ check\(s\) passed", out[line], re.M), out[line]
    authors = out["sov-audit verify --log-key log-public.json --authors authors.json "
                  "receipt-0.json receipt-1.json"]
    assert "(node 'acme-eu')" in authors and "endorsed by" in authors
    assert "tree size 5 is a prefix of tree size 6" in out[next(
        x for x in lines if x.startswith("sov-audit consistency"))]
    credential = json.loads((world.root / "grant.json").read_text())
    assert credential["id"] == grant["id"] and "proof" in credential
    for html in ("march.html", "last-week.html", "subject.html", "me.html"):
        assert "<html" in (world.root / html).read_text(encoding="utf-8").lower()
    anchoring = [text for line, text in out.items() if line.startswith("sov-ledger anchor-key")]
    assert len(anchoring) == 2 and all("anchoring account 0x" in a for a in anchoring)
    assert "removed" in out["sov-ledger authors remove --home /var/lib/sov-ledger "
                           "did:key:z6Mkw..."].lower()


def _keystore(folder: Path) -> None:
    """An Ethereum v3 keystore and its passphrase file, as geth or MetaMask export them."""
    from eth_account import Account

    passphrase = "keystore passphrase"
    keystore = Account.encrypt("0x" + secrets.token_hex(32), passphrase)
    (folder / "operator-keystore.json").write_text(json.dumps(keystore))
    (folder / "keystore-pass.txt").write_text(passphrase + "\n")


def _size(receipt: Path) -> int:
    """The tree size of the signed head a receipt holds (its checkpoint's second line)."""
    document = json.loads(receipt.read_text())
    return int(document["checkpoint"].splitlines()[1])


def _anchor_in_the_ledger(world: World) -> None:
    """Section 6's node.toml keys, as written, with the ledger's CA and log key beside."""
    block = _toml_block(OPERATOR, "### Anchoring the chain in the ledger")
    block = block.replace("ledger.example:7444", f"127.0.0.1:{world.ledger_port}")
    for name, source in (("ledger-ca.pem", world.ledger_home / "tls" / "ca.pem"),
                         ("log-public.json", world.ledger_home / "log-public.json")):
        (world.node_home / name).write_bytes(source.read_bytes())
    config = world.node_home / "node.toml"
    text = config.read_text()
    for line in block.split("[node]", 1)[1].strip().splitlines():
        key = line.split("=", 1)[0].strip()
        # node.toml lists every key with its default: the guide's value takes its place.
        text, found = re.subn(rf"(?m)^{key}\s*=.*$", line, text)
        if not found:
            text = text.replace("[node]\n", f"[node]\n{line}\n", 1)
    config.write_text(text)


def _customer_grants(world: World) -> None:
    """The customer lets the requester ask about their orders (docs/wallet.md)."""
    node = f"127.0.0.1:{world.node_port}"
    _wallet(world, "nodes", "add", node, "--ca", str(world.node_home / "tls" / "ca.pem"))
    _wallet(world, "grant", "--node", node, "--requester", world.requester_did, "--purpose",
            "quote-generation", "--scope", "transaction", "--ttl", "24h")
