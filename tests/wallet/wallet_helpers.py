"""Helpers shared by the wallet tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from wallet.cli import cli

PASSPHRASE = "correct horse battery staple"


class WalletCLI:
    """Runs ``consent-wallet`` in-process against one home and returns click's Result."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.runner = CliRunner()

    def __call__(self, *args: str, env: dict[str, str] | None = None, input: str | None = None
                 ) -> Result:
        return self.runner.invoke(cli, ["--home", str(self.home), *args], env=env, input=input,
                                  catch_exceptions=True)

    def ok(self, *args: str, **kwargs: Any) -> Result:
        result = self(*args, **kwargs)
        assert result.exit_code == 0, (result.output, result.exception)
        return result

    def grant(self, address: str, requester: str, purpose: str = "quote-generation",
              scope: str = "transaction") -> str:
        """A 24 h grant delivered to the node at ``address`` (already added); its id."""
        granted = json.loads(self.ok(
            "grant", "--node", address, "--requester", requester, "--purpose", purpose,
            "--scope", scope, "--ttl", "24h", "--json").output)
        assert granted["delivered"] is True
        return str(granted["grant_id"])


def assert_clean_error(result: Result, *fragments: str, exit_code: int | None = None) -> None:
    """A failed command: non-zero exit, one sentence naming the problem, no traceback."""
    assert result.exit_code != 0, result.output
    if exit_code is not None:
        assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
