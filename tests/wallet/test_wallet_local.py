"""The wallet's local behaviour, no node needed: init, whoami, keystore protection, input checks.

Every bad input must fail with one sentence, a non-zero exit, and leave the wallet unchanged.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from consent.grants import issue_grant, verify_grant
from consent.identity import Identity
from consent.keystore import load_identity
from tests.wallet.wallet_helpers import PASSPHRASE, WalletCLI, assert_clean_error
from wallet.service import Wallet, grant_views
from wallet.store import WalletStore


def test_init_creates_encrypted_keystore_and_whoami(wallet_cli: WalletCLI, home: Path) -> None:
    created = json.loads(wallet_cli.ok("init", "--json").output)
    assert created["did"].startswith("did:key:z6Mk")
    keystore = home / "keystore.json"
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "wallet.db").stat().st_mode) == 0o600
    # The private seed is not readable from the file, only through the passphrase.
    identity = load_identity(keystore, PASSPHRASE)
    assert identity.did == created["did"]
    assert identity.signing_key.encode().hex() not in keystore.read_text()
    who = json.loads(wallet_cli.ok("whoami", "--json").output)
    assert who == {"did": created["did"], "profile": "intl", "home": str(home)}
    assert created["did"] in wallet_cli.ok("whoami").output


def test_init_gm_profile(wallet_cli: WalletCLI) -> None:
    created = json.loads(wallet_cli.ok("init", "--profile", "gm", "--json").output)
    assert created["profile"] == "gm"
    wallet = Wallet.open(wallet_cli.home, PASSPHRASE)
    with wallet:
        assert wallet.identity.sm2 is not None


def test_init_refuses_to_overwrite(initialised: WalletCLI, home: Path) -> None:
    before = (home / "keystore.json").read_bytes()
    result = initialised("init")
    assert_clean_error(result, "already exists")
    assert (home / "keystore.json").read_bytes() == before


def test_init_prompts_for_passphrase_twice(home: Path, monkeypatch) -> None:
    monkeypatch.delenv("CONSENT_WALLET_PASSPHRASE")
    cli = WalletCLI(home)
    result = cli("init", input="s3cret-passphrase\ns3cret-passphrase\n")
    assert result.exit_code == 0, result.output
    assert "s3cret-pass" not in result.output
    assert load_identity(home / "keystore.json", "s3cret-passphrase").did in result.output


def test_init_refuses_a_short_passphrase_like_every_tool(home: Path, monkeypatch) -> None:
    """One passphrase policy (consent.passphrase.MIN_LENGTH) for the wallet and the node."""
    monkeypatch.delenv("CONSENT_WALLET_PASSPHRASE")
    result = WalletCLI(home)("init", input="s3cret-pass\ns3cret-pass\n")
    assert result.exit_code == 1
    assert "error: the passphrase must be at least 12 characters" in result.output
    assert not (home / "keystore.json").exists()


def test_wrong_passphrase(initialised: WalletCLI) -> None:
    result = initialised("grants", env={"CONSENT_WALLET_PASSPHRASE": "not it"})
    assert_clean_error(result, "wrong passphrase")


def test_tampered_keystore(initialised: WalletCLI, home: Path) -> None:
    keystore = home / "keystore.json"
    document = json.loads(keystore.read_text())
    ciphertext = bytearray(document["ciphertext"].encode())
    ciphertext[40] = ord("A") if ciphertext[40] != ord("A") else ord("B")
    document["ciphertext"] = ciphertext.decode()
    keystore.write_text(json.dumps(document))
    assert_clean_error(initialised("grants"), "tampered")
    keystore.write_text("{not json")
    assert_clean_error(initialised("grants"), "not readable JSON")


def test_no_wallet_yet(wallet_cli: WalletCLI) -> None:
    assert_clean_error(wallet_cli("whoami"), "consent-wallet init")
    assert_clean_error(wallet_cli("grants"), "consent-wallet init")


def test_grant_input_checks_before_anything_is_signed(initialised: WalletCLI, home: Path) -> None:
    requester = Identity.generate().did
    base = ["grant", "--node", "127.0.0.1:1", "--requester", requester, "--scope", "transaction"]
    assert_clean_error(initialised(*base, "--purpose", "quote-generation", "--ttl", "73h"),
                       "at most 72 hours")
    assert_clean_error(initialised(*base, "--purpose", "quote-generation", "--ttl", "4d"),
                       "at most 72 hours")
    assert_clean_error(initialised(*base, "--purpose", "quote-generation", "--ttl", "soon"),
                       "24h, 90m or 3d")
    assert_clean_error(initialised(*base, "--purpose", "renewal-warn", "--ttl", "24h"),
                       "did you mean 'renewal-warning'")
    bad_requester = ["grant", "--node", "127.0.0.1:1", "--requester", "did:web:crm.example",
                     "--scope", "transaction", "--purpose", "quote-generation", "--ttl", "24h"]
    assert_clean_error(initialised(*bad_requester), "--requester is not a valid did:key")
    assert_clean_error(
        initialised(*base[:-2], "--scope", "everything", "--purpose", "quote-generation",
                    "--ttl", "24h"), "not a scope tier")
    # No node CA known for that address: a clear pointer, and nothing signed or saved.
    assert_clean_error(initialised(*base, "--purpose", "quote-generation", "--ttl", "24h"),
                       "--node-ca FILE")
    assert_clean_error(initialised(*base, "--purpose", "quote-generation", "--ttl", "24h",
                                   "--node-ca", str(home / "keystore.json")),
                       "not a PEM certificate")
    assert_clean_error(initialised("grant", "--node", "127.0.0.1:1"), "missing --requester")
    store = WalletStore(home)
    assert store.grants() == []
    store.close()


def test_unknown_grant_ids(initialised: WalletCLI) -> None:
    assert_clean_error(initialised("revoke", "urn:uuid:00000000-0000-4000-8000-000000000000"),
                       "holds no grant")
    assert_clean_error(initialised("grant", "--retry", "urn:uuid:nope"), "holds no grant")


def test_retry_refuses_options_it_cannot_honour(initialised: WalletCLI, home: Path) -> None:
    """``grant --retry ID --ttl 5h`` ignored --ttl: the grant is re-delivered as signed, so
    any option that would change it is a usage error and nothing is sent or stored."""
    grant_id = _store_grant(home, timedelta(hours=24))
    before = (home / "wallet.db").read_bytes()
    result = initialised("grant", "--retry", grant_id, "--ttl", "5h", "--scope", "identity")
    assert_clean_error(result, f"--retry re-delivers grant {grant_id} exactly as it was "
                       "signed, so it takes no --scope, --ttl", exit_code=2)
    assert (home / "wallet.db").read_bytes() == before


def _store_grant(home: Path, ttl: timedelta, *, expired: bool = False) -> str:
    """Save a signed grant straight into the store, as `grant` would before delivering it."""
    with Wallet.open(home, PASSPHRASE) as wallet:
        node = Identity.generate()
        credential = issue_grant(
            wallet.identity, requester=Identity.generate().did, nodes=[node.did],
            purpose="quote-generation", scopes=["transaction"], ttl=ttl,
        )
        grant = verify_grant(credential)
        wallet.store.add_grant(grant, "127.0.0.1:9")
        if expired:
            with wallet.store.transaction() as db:
                db.execute("UPDATE grants SET expires = '2000-01-01T00:00:00.000000Z'")
        return grant.id


def test_revoke_pending_grant_cancels_it_locally(initialised: WalletCLI, home: Path) -> None:
    grant_id = _store_grant(home, timedelta(hours=2))
    listed = json.loads(initialised.ok("grants", "--offline", "--json").output)
    assert [g["status"] for g in listed] == ["pending-delivery"]
    out = json.loads(initialised.ok("revoke", grant_id, "--json").output)
    assert out["grant_id"] == grant_id and out["confirmed"] is True
    listed = json.loads(initialised.ok("grants", "--offline", "--json").output)
    assert [g["status"] for g in listed] == ["revoked"]
    assert_clean_error(initialised("revoke", grant_id), "already revoked")
    assert_clean_error(initialised("grant", "--retry", grant_id), "was revoked")


def test_revoke_expired_grant(initialised: WalletCLI, home: Path) -> None:
    grant_id = _store_grant(home, timedelta(hours=1), expired=True)
    assert_clean_error(initialised("revoke", grant_id), "already expired")
    store = WalletStore(home)
    assert [v.status for v in grant_views(store)] == ["expired"]
    assert store.revocations() == []
    store.close()


def test_errors_have_no_traceback_in_a_real_process(tmp_path: Path) -> None:
    """The installed entry point, as a customer runs it: one line on stderr, exit 1."""
    env = {"CONSENT_WALLET_PASSPHRASE": "x", "PATH": "/usr/bin:/bin",
           "CONSENT_WALLET_HOME": str(tmp_path / "nowhere")}
    proc = subprocess.run([sys.executable, "-m", "wallet.cli", "grants"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: no wallet in {tmp_path / 'nowhere'}: run `consent-wallet init` first "
        "(or pass --home)"
    ]
