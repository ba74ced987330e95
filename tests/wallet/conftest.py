"""Fixtures of the wallet tests: a fresh wallet home and the CLI runner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from wallet_helpers import PASSPHRASE, WalletCLI


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty wallet home; the passphrase comes from the environment, as scripts do."""
    monkeypatch.setenv("CONSENT_WALLET_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("CONSENT_WALLET_HOME", raising=False)
    return tmp_path / "wallet-home"


@pytest.fixture
def wallet_cli(home: Path) -> WalletCLI:
    return WalletCLI(home)


@pytest.fixture
def initialised(wallet_cli: WalletCLI) -> Iterator[WalletCLI]:
    wallet_cli.ok("init")
    yield wallet_cli
