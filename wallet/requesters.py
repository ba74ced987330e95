"""The requesters a customer knows by name: their signed profiles (consent.profile), kept in
the wallet's settings as ``requester-profile:<did>`` -> the verified document.

``consent-wallet requesters add FILE`` stores one; the grants listing and the dashboard show
the name beside the DID (the DID stays the identity: a name is only what its holder signed).
"""

from __future__ import annotations

import json
from typing import Any

from consent.profile import verify_profile
from wallet.store import WalletStore

PREFIX = "requester-profile:"


def add_profile(store: WalletStore, document: Any) -> tuple[str, str]:
    """Verify ``document`` and remember the name it gives its DID; (DID, name)."""
    did, name = verify_profile(document)
    store.set_setting(PREFIX + did, json.dumps(document, sort_keys=True))
    return did, name


def names(store: WalletStore) -> dict[str, str]:
    """DID -> display name of every stored profile (each re-verified as it is read)."""
    with store.transaction() as db:
        rows = db.execute("SELECT key, value FROM settings WHERE key LIKE ?",
                          (PREFIX + "%",)).fetchall()
    found = {}
    for row in rows:
        did, name = verify_profile(json.loads(row[1]))
        if PREFIX + did == row[0]:
            found[did] = name
    return found


__all__ = ["add_profile", "names"]
