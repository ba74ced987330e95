"""``consent-wallet credential GRANT_ID -o FILE``: a customer's signed grant for a compliance
officer's ``sov-audit verify --grant`` (docs/audit.md). The written file is checked where the
guides are replayed (tests/test_docs_guides_run.py); here, its refusals: one sentence each,
nothing written."""

from __future__ import annotations

from pathlib import Path

from tests.wallet.wallet_helpers import WalletCLI, assert_clean_error
from wallet.service import KEYSTORE_FILE


def test_an_unknown_grant_is_one_sentence(initialised: WalletCLI, tmp_path: Path) -> None:
    out = tmp_path / "grant.json"
    result = initialised("credential", "urn:uuid:00000000-0000-4000-8000-000000000000",
                         "-o", str(out))
    assert_clean_error(result, "no grant urn:uuid:00000000-0000-4000-8000-000000000000 in "
                       "this wallet", exit_code=1)
    assert not out.exists()


def test_it_never_writes_over_a_wallet_file(initialised: WalletCLI) -> None:
    keystore = initialised.home / KEYSTORE_FILE
    before = keystore.read_bytes()
    result = initialised("credential", "urn:uuid:00000000-0000-4000-8000-000000000000",
                         "-o", str(keystore))
    assert_clean_error(result, f"is your wallet's own {KEYSTORE_FILE}", exit_code=1)
    assert keystore.read_bytes() == before
