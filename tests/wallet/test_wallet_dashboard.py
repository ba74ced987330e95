"""The dashboard in headless Chromium, driven over the DevTools protocol, on a local store.

The page must show each grant with its data location, expiry and status, the access timeline,
and revoke a grant after asking for the passphrase; the POST is refused without the CSRF token
or from a foreign Host. Customer-grade (issue 16): requesters by the name they signed with the
DID on hover, the purpose text, local readable times, a layout that fits a 390 px phone with
Revoke on screen (checked in screenshots), and an empty state saying what will appear.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from consent.grants import issue_grant, verify_grant
from consent.identity import Identity
from consent.profile import issue_profile
from tests.wallet.cdp import Chromium, png_pixels
from tests.wallet.conftest import NodeProcess
from tests.wallet.wallet_helpers import PASSPHRASE, WalletCLI
from wallet.dashboard import DashboardServer, serve_dashboard
from wallet.requesters import add_profile
from wallet.service import Wallet
from wallet.store import AccessRecord, from_iso

NODE_ADDRESS = "127.0.0.1:9"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    chromium = Chromium(tmp_path / "chromium-profile")
    yield chromium
    chromium.close()


@pytest.fixture
def populated(initialised: WalletCLI, home: Path) -> dict[str, str]:
    """Two grants (one revocable, one cancelled), a known node, two access events, and the
    requester's signed profile ("Acme CRM")."""
    crm = Identity.generate()
    requester = crm.did
    node = Identity.generate()
    ids = {}
    with Wallet.open(home, PASSPHRASE) as wallet:
        wallet.store.put_node(NODE_ADDRESS, b"-----BEGIN CERTIFICATE-----\n")
        wallet.store.put_node_info(NODE_ADDRESS, SimpleNamespace(
            did=node.did, name="distributor-eu", region="eu-west", residency="Frankfurt, DE",
            profile="intl", k_threshold=5, max_ttl_hours=72.0))
        for name, purpose in (("keep", "quote-generation"), ("drop", "renewal-warning")):
            grant = verify_grant(issue_grant(
                wallet.identity, requester=requester, nodes=[node.did], purpose=purpose,
                scopes=["transaction"], ttl=timedelta(hours=24), max_queries=10,
                purpose_text="Quotes for your contract renewal" if name == "keep" else ""))
            wallet.store.add_grant(grant, NODE_ADDRESS)
            ids[name] = grant.id
        wallet.store.put_access_events(NODE_ADDRESS, [AccessRecord(
            NODE_ADDRESS, 1, from_iso("2025-01-01T10:00:00Z"),
            {"seq": 1, "time": "2025-01-01T10:00:00Z", "requester": requester,
             "purpose": "quote-generation", "grant_ids": [ids["keep"]], "outcome": "answered"},
            verified=True, ledger_verified=None), AccessRecord(
            NODE_ADDRESS, 2, from_iso("2025-01-01T11:00:00Z"),
            {"v": 2, "seq": 2, "time": "2025-01-01T11:00:00Z", "requester": requester,
             "purpose": "quote-generation", "grant_count": 5, "grants_root": "ab" * 32,
             "own_grants": [ids["keep"]], "outcome": "answered"},
            verified=True, ledger_verified=None)])
        add_profile(wallet.store, issue_profile(crm, "Acme CRM"))
    ids["requester"] = requester
    return ids


@pytest.fixture
def dashboard(populated: dict[str, str], home: Path) -> Iterator[DashboardServer]:
    server = serve_dashboard(home)
    yield server
    server.stop()


def _rows(browser: Chromium) -> dict[str, list[str]]:
    return json.loads(browser.evaluate("""JSON.stringify(Object.fromEntries(
        [...document.querySelectorAll('#grants tbody tr')].map(
            tr => [tr.dataset.grantId, [...tr.cells].map(td => td.textContent)])))"""))


def test_dashboard_shows_grants_and_revokes_with_passphrase(
    browser: Chromium, dashboard: DashboardServer, populated: dict[str, str], home: Path
) -> None:
    assert dashboard.url.startswith("http://127.0.0.1:")
    browser.navigate(dashboard.url)
    browser.wait_for("document.body && document.body.dataset.loaded === 'true'")
    rows = _rows(browser)
    keep = rows[populated["keep"]]
    assert keep[0] == "pending-delivery"
    assert "quote-generation [transaction]" in keep[1]
    assert "distributor-eu" in keep[3] and "eu-west" in keep[3] and "Frankfurt, DE" in keep[3]
    assert "Quotes for your contract renewal" in keep[1]
    assert keep[2].startswith("Acme CRM")
    assert not keep[4].endswith("Z") and "T" not in keep[4] and "(in 2" in keep[4]
    assert keep[5].startswith("10/10 queries")
    timeline = browser.evaluate(
        "[...document.querySelectorAll('#events tbody td')].map(td => td.textContent)")
    assert "quote-generation" in timeline and "answered" in timeline and "verified" in timeline
    # Your own grant by id, other customers' only as a count (events of either format).
    assert f"{populated['keep']} (+4 other customers' grants)" in timeline
    assert populated["keep"] in timeline

    def revoke(grant_id: str, passphrase: str) -> str:
        browser.evaluate(f"document.querySelector('tr[data-grant-id=\"{grant_id}\"] "
                         "button.revoke').click()")
        assert browser.evaluate("document.getElementById('revoke-dialog').open") is True
        browser.evaluate(f"document.getElementById('passphrase').value = {json.dumps(passphrase)};"
                         "document.getElementById('revoke-form').requestSubmit()")
        return browser.wait_for("(m => m.textContent.startsWith('Revoking') ? '' : m.textContent)"
                                "(document.getElementById('message'))")

    # A wrong passphrase is refused, and the grant stays as it was.
    message = revoke(populated["drop"], "wrong passphrase")
    assert "wrong passphrase" in message
    assert _rows(browser)[populated["drop"]][0] == "pending-delivery"
    # The right one revokes it; the page reloads the state from the store.
    message = revoke(populated["drop"], PASSPHRASE)
    assert message.startswith(f"Revoked {populated['drop']}")
    browser.wait_for(f"document.querySelector('tr[data-grant-id=\"{populated['drop']}\"] "
                     "td').textContent === 'revoked'")
    rows = _rows(browser)
    assert rows[populated["keep"]][0] == "pending-delivery"
    with Wallet.open(home, PASSPHRASE) as wallet:
        assert wallet.store.revocation(populated["drop"]) is not None
        assert wallet.store.revocation(populated["keep"]) is None


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_revoke_post_needs_csrf_token_and_own_host(
    dashboard: DashboardServer, populated: dict[str, str], home: Path
) -> None:
    body = json.dumps({"grant_id": populated["keep"], "passphrase": PASSPHRASE}).encode()
    url = dashboard.url + "api/revoke"
    status, reply = _post(url, body, {"Content-Type": "application/json"})
    assert status == 403 and "reload the dashboard" in reply["error"]
    token = dashboard.httpd.csrf_token
    status, _ = _post(url, body, {"Content-Type": "application/json", "X-CSRF-Token": token,
                                  "Host": "evil.example:80"})
    assert status == 403
    status, _ = _post(url, body, {"Content-Type": "application/json", "X-CSRF-Token": token,
                                  "Origin": "http://evil.example"})
    assert status == 403
    status, _ = _post(url, body, {"Content-Type": "text/plain", "X-CSRF-Token": token})
    assert status == 415
    with Wallet.open(home, PASSPHRASE) as wallet:
        assert wallet.store.revocations() == []
    # The page carries the token the server expects, and a strict CSP.
    with urllib.request.urlopen(dashboard.url, timeout=10) as response:
        page = response.read().decode()
        csp = response.headers["Content-Security-Policy"]
    assert f'content="{token}"' in page
    assert "default-src 'none'" in csp and "script-src 'nonce-" in csp
    status, reply = _post(url, body, {"Content-Type": "application/json", "X-CSRF-Token": token})
    assert status == 200 and reply["grant_id"] == populated["keep"]


def test_dashboard_revokes_at_a_real_node(
    browser: Chromium, initialised: WalletCLI, node: NodeProcess, home: Path
) -> None:
    """One click + passphrase in the page, and the node itself reports the grant revoked."""
    did = json.loads(initialised.ok("whoami", "--json").output)["did"]
    node.bind(did)
    granted = json.loads(initialised.ok(
        "grant", "--node", node.address, "--node-ca", str(node.ca_path), "--requester",
        Identity.generate().did, "--purpose", "quote-generation", "--scope", "transaction",
        "--ttl", "24h", "--json").output)
    grant_id = granted["grant_id"]
    server = serve_dashboard(home)
    try:
        browser.navigate(server.url)
        browser.wait_for("document.body && document.body.dataset.loaded === 'true'")
        assert _rows(browser)[grant_id][0] == "active"
        browser.evaluate(f"document.querySelector('tr[data-grant-id=\"{grant_id}\"] "
                         "button.revoke').click()")
        browser.evaluate(f"document.getElementById('passphrase').value = {json.dumps(PASSPHRASE)};"
                         "document.getElementById('revoke-form').requestSubmit()")
        message = browser.wait_for("(m => m.textContent.startsWith('Revoking') ? '' : "
                                   "m.textContent)(document.getElementById('message'))")
        assert "confirmed by the node's signed ack" in message
    finally:
        server.stop()
    fresh = json.loads(initialised.ok("grants", "--json").output)
    assert fresh[0]["status"] == "revoked" and fresh[0]["status_fresh"] is True


REVOKE_RED = (0xB4, 0x23, 0x18)


def _revoke_drawn(browser: Chromium, grant_id: str, width: int, tmp_path: Path) -> None:
    """The Revoke button lies inside the screen and a screenshot of the screen shows it
    there, in its colour."""
    rect = browser.evaluate(
        f"(r => [r.left, r.top, r.width, r.height])(document.querySelector("
        f"'tr[data-grant-id=\"{grant_id}\"] button.revoke').getBoundingClientRect())")
    left, top, w, h = rect
    assert left >= 0 and left + w <= width and w > 0 and h > 0, rect
    browser.evaluate(f"window.scrollTo(0, {max(0, top - 100)})")
    top = browser.evaluate(
        f"document.querySelector('tr[data-grant-id=\"{grant_id}\"] button.revoke')"
        ".getBoundingClientRect().top")
    shot = browser.screenshot(tmp_path / f"dashboard-{width}.png")
    shot_width, _, rows = png_pixels(shot)
    assert shot_width == width  # nothing wider than the screen
    y = int(top + h / 2)
    reds = [x for x in range(int(left), int(left + w))
            if tuple(rows[y][4 * x:4 * x + 3]) == REVOKE_RED]
    assert len(reds) > w / 3, (left, w, len(reds))


@pytest.mark.parametrize(("width", "height", "mobile"), [(1280, 900, False), (390, 844, True)])
def test_dashboard_fits_desktop_and_phone(
    browser: Chromium, dashboard: DashboardServer, populated: dict[str, str], tmp_path: Path,
    width: int, height: int, mobile: bool
) -> None:
    browser.resize(width, height, mobile=mobile)
    browser.navigate(dashboard.url)
    browser.wait_for("document.body && document.body.dataset.loaded === 'true'")
    assert browser.evaluate("document.documentElement.scrollWidth") <= width
    # The requester by its signed name, the DID on hover.
    who = browser.evaluate(
        f"(e => [e.textContent, e.title])(document.querySelector('tr[data-grant-id="
        f"\"{populated['keep']}\"] .who'))")
    assert who == ["Acme CRM", populated["requester"]]
    times = browser.evaluate(
        "[...document.querySelectorAll('#events tbody tr td:first-child')]"
        ".map(td => [td.textContent, td.title])")
    assert times[0][1].startswith("2025-01-01T11:00:00")  # the exact UTC time on hover
    assert "2025" in times[0][0] and "T11:00" not in times[0][0]
    if mobile:  # cells are labelled when the table becomes cards
        labels = browser.evaluate(
            "[...document.querySelectorAll('#grants tbody tr:first-child td')]"
            ".map(td => getComputedStyle(td, '::before').content)")
        assert '"Requester: "' in labels
    _revoke_drawn(browser, populated["keep"], width, tmp_path)


def test_dashboard_empty_state(browser: Chromium, initialised: WalletCLI, home: Path) -> None:
    server = serve_dashboard(home)
    try:
        browser.resize(390, 844, mobile=True)
        browser.navigate(server.url)
        browser.wait_for("document.body && document.body.dataset.loaded === 'true'")
        shown = browser.evaluate(
            "[...document.querySelectorAll('.empty')].filter(p => p.offsetHeight > 0)"
            ".map(p => p.textContent.replace(/\\s+/g, ' ').trim())")
        assert len(shown) == 2
        assert shown[0].startswith("No grants yet.") and "revoke" in shown[0]
        assert shown[1].startswith("No use of your data yet.")
        assert browser.evaluate("document.querySelector('#grants').offsetHeight") == 0
    finally:
        server.stop()
