"""Anchoring with the operator's own key against a real anvil process: a key kept encrypted in
the ledger home, transactions built and signed locally, sent raw; unfunded accounts and wrong
chains give one clear sentence and leave the anchor queued."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from eth_account import Account

from ledger.anchor import AnchorKey, AnchorStore, rpc_web3, verify_on_chain
from ledger.audit_cli import main as audit
from ledger.cli import main as ledger_cli
from ledger.errors import AnchorError
from ledger.home import ANCHOR_KEY, ANCHORS, load_config, open_log

from .conftest import PASSPHRASE, customer_grant, grant_event
from .test_anchor import AnvilProcess

ENV = {"SOV_LEDGER_PASSPHRASE": PASSPHRASE}
ANVIL_CHAIN_ID = 31337


def _run(args: list[str], code: int = 0, cli=ledger_cli) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], env=ENV, catch_exceptions=False)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture()
def anvil(tmp_path: Path) -> Iterator[AnvilProcess]:
    node = AnvilProcess(tmp_path / "anvil-state.json")
    node.start()
    yield node
    node.stop()


def _home_with_entries(tmp_path: Path, *init_args: str) -> tuple[Path, str]:
    home = tmp_path / "home"
    output = _run(["init", "--home", home, "--origin", "anchor.test.example/log", *init_args])
    address = re.search(r"anchoring account (0x[0-9a-fA-F]{40})", output).group(1)
    with open_log(home, PASSPHRASE) as log:
        log.append([grant_event(i) for i in range(4)])
    return home, address


def _fund(url: str, address: str, wei: int) -> None:
    w3 = rpc_web3(url)
    # A legacy gas price: accepted before and after EIP-1559 (the berlin test needs it).
    tx = w3.eth.send_transaction(
        {"from": w3.eth.accounts[0], "to": address, "value": wei, "gasPrice": w3.eth.gas_price}
    )
    assert w3.eth.wait_for_transaction_receipt(tx)["status"] == 1


def test_operator_key_anchors_once_funded_and_waits_until_then(
    tmp_path: Path, anvil: AnvilProcess
) -> None:
    home, address = _home_with_entries(
        tmp_path, "--anchor-key", "generate", "--anchor-chain-id", str(ANVIL_CHAIN_ID)
    )
    keystore = home / ANCHOR_KEY
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    assert json.loads(keystore.read_text())["crypto"]["kdf"] == "scrypt"  # encrypted at rest
    assert AnchorKey(keystore).address() == address
    assert load_config(home).anchor_chain_id == ANVIL_CHAIN_ID

    # Unfunded: one sentence, exit 1, and the anchor stays queued.
    output = _run(["anchor", "--home", home, "--chain-rpc", anvil.url], code=1)
    assert f"the anchoring account {address} holds 0 wei" in output and "fund the account" in output
    assert "1 anchor(s) stay queued for retry" in output
    [(size, _, attempts, _)] = AnchorStore(home / ANCHORS).pending()
    assert (size, attempts) == (4, 1)

    _fund(anvil.url, address, 10**17)
    output = _run(["anchor", "--home", home, "--chain-rpc", anvil.url])
    assert "anchored tree size 4 on chain 31337" in output
    store = AnchorStore(home / ANCHORS)
    [anchor] = store.anchors()
    assert store.pending() == []
    w3 = rpc_web3(anvil.url)
    tx = w3.eth.get_transaction(anchor.tx_hash)
    assert tx["from"] == address and tx["to"] == address  # signed by the operator's key
    assert tx["type"] == 2  # EIP-1559 fees: anvil has a base fee
    verify_on_chain(anchor, w3, "anchor.test.example/log")

    # The second anchor takes the next nonce; an auditor checks it on the chain.
    with open_log(home, PASSPHRASE) as log:
        entry_hash = log.append([customer_grant(9)])[0].entry_hash  # signed: verify passes
    _run(["anchor", "--home", home, "--chain-rpc", anvil.url])
    assert w3.eth.get_transaction_count(address) == 2
    receipt = tmp_path / "receipt.json"
    _run(["receipt", "--home", home, entry_hash, "--with-anchors", "-o", receipt])
    output = _run(["verify", "--log-key", home / "log-public.json", "--chain-rpc", anvil.url,
                   receipt], cli=audit)
    assert "the chain carries tree heads covering entry 4" in output


def test_wrong_chain_id_is_refused_before_signing_and_the_anchor_stays_queued(
    tmp_path: Path, anvil: AnvilProcess
) -> None:
    home, address = _home_with_entries(tmp_path, "--anchor-key", "generate",
                                       "--anchor-chain-id", "1")
    _fund(anvil.url, address, 10**17)
    output = _run(["anchor", "--home", home, "--chain-rpc", anvil.url], code=1)
    assert "the RPC serves chain id 31337 but anchors are configured for chain id 1" in output
    assert len(AnchorStore(home / ANCHORS).pending()) == 1
    assert rpc_web3(anvil.url).eth.get_transaction_count(address) == 0  # nothing was sent


def test_import_a_v3_keystore_with_its_own_passphrase(tmp_path: Path, anvil: AnvilProcess) -> None:
    account = Account.create()
    source = tmp_path / "operator-keystore.json"
    source.write_text(json.dumps(Account.encrypt(account.key, "keystore pass", kdf="pbkdf2")))
    key_pass = tmp_path / "key-pass.txt"
    key_pass.write_text("keystore pass\n")
    home = tmp_path / "home"
    _run(["init", "--home", home])
    wrong = tmp_path / "wrong-pass.txt"
    wrong.write_text("not it\n")
    output = _run(["anchor-key", "--home", home, source, "--key-passphrase-file", wrong], code=1)
    assert "wrong passphrase" in output and not (home / ANCHOR_KEY).exists()

    output = _run(["anchor-key", "--home", home, source, "--key-passphrase-file", key_pass])
    assert f"anchoring account {account.address}" in output
    # Re-encrypted under the ledger's passphrase, never overwritten.
    assert AnchorKey(home / ANCHOR_KEY).load(PASSPHRASE).address == account.address
    with pytest.raises(AnchorError, match="wrong passphrase"):
        AnchorKey(home / ANCHOR_KEY).load("not the ledger passphrase")
    output = _run(["anchor-key", "--home", home, "generate"], code=1)
    assert "never overwritten" in output

    _fund(anvil.url, account.address, 10**17)
    with open_log(home, PASSPHRASE) as log:
        log.append([grant_event(1)])
    assert "anchored tree size 1" in _run(["anchor", "--home", home, "--chain-rpc", anvil.url])


def test_bad_key_files_get_one_sentence(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _run(["init", "--home", home])
    junk = tmp_path / "junk.txt"
    junk.write_text("not a key")
    output = _run(["anchor-key", "--home", home, junk], code=1)
    assert "neither a v3 keystore nor a 32-byte hex private key" in output
    output = _run(["anchor-key", "--home", home, tmp_path / "missing.json"], code=1)
    assert "cannot read the key file" in output
    output = _run(["anchor-key", "--home", home, "generate", "--chain-id", "0"], code=1)
    assert "positive integer" in output and not (home / ANCHOR_KEY).exists()


def test_chain_without_base_fee_gets_a_legacy_gas_price(tmp_path: Path) -> None:
    # Berlin predates EIP-1559: no base fee, so the anchor must carry a legacy gasPrice.
    node = AnvilProcess(tmp_path / "berlin-state.json", "--hardfork", "berlin")
    node.start()
    try:
        home, address = _home_with_entries(tmp_path, "--anchor-key", "generate")
        _fund(node.url, address, 10**17)
        assert "anchored tree size 4" in _run(["anchor", "--home", home, "--chain-rpc", node.url])
        [anchor] = AnchorStore(home / ANCHORS).anchors()
        tx = rpc_web3(node.url).eth.get_transaction(anchor.tx_hash)
        assert tx["from"] == address and tx["type"] == 0 and tx["gasPrice"] > 0
    finally:
        node.stop()
