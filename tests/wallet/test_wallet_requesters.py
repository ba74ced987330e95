"""A requester's display name, as the customer sees it: signed by the requester
(``sov-query profile``), checked by the wallet (``consent-wallet requesters add``); a profile
whose name was changed, or signed by another key, is refused and nothing is stored."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from agent_node.requester_cli import main as sov_query
from consent.identity import Identity
from consent.profile import issue_profile
from tests.wallet.wallet_helpers import WalletCLI, assert_clean_error

PASS = "requester passphrase, long"


def test_profile_signed_by_the_requester_names_it_in_the_wallet(
        initialised: WalletCLI, tmp_path: Path) -> None:
    runner = CliRunner(env={"SOV_QUERY_PASSPHRASE": PASS})
    home = tmp_path / "crm"
    assert runner.invoke(sov_query, ["init", "--home", str(home)]).exit_code == 0
    did = json.loads(runner.invoke(sov_query, ["whoami", "--home", str(home), "--json"]
                                   ).stdout)["did"]
    profile = tmp_path / "acme.json"
    made = runner.invoke(sov_query, ["profile", "--home", str(home), "--name", "Acme CRM",
                                     "-o", str(profile)])
    assert made.exit_code == 0, made.output

    added = json.loads(initialised.ok("requesters", "add", str(profile), "--json").output)
    assert added == {"did": did, "name": "Acme CRM"}
    listed = json.loads(initialised.ok("requesters", "list", "--json").output)
    assert listed == [{"did": did, "name": "Acme CRM"}]

    forged = json.loads(profile.read_text())
    forged["name"] = "Your Bank"
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    assert_clean_error(initialised("requesters", "add", str(tmp_path / "forged.json")),
                       "the profile's proof does not verify")
    other = issue_profile(Identity.generate(), "Acme CRM")
    other["did"] = did
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert_clean_error(initialised("requesters", "add", str(tmp_path / "other.json")))
    bidi = issue_profile(Identity.generate(), "x")
    bidi["name"] = "Acme\u202eMRC"
    (tmp_path / "bidi.json").write_text(json.dumps(bidi))
    assert_clean_error(initialised("requesters", "add", str(tmp_path / "bidi.json")),
                       "control or direction characters")
    assert json.loads(initialised.ok("requesters", "list", "--json").output) == listed
