"""The wallet dashboard: a local web page served on 127.0.0.1 by the standard library.

It shows every grant with its data location, expiry, status and purpose text, and the access
timeline, requesters by the display name they signed (wallet.requesters) with their DID on
hover, times in the reader's own time zone, laid out for a desktop or a phone (390 px), with an
empty state that says what will appear; read from the local store (the ``grants`` /
``access-log`` commands and ``dashboard --refresh`` update it). The one write is revoking a
grant, which needs the passphrase. Following the OWASP CSRF cheat sheet, that POST must
carry a per-server random token (synchronizer token pattern) in a custom header, a JSON body,
and a Host/Origin of this very server (which also defeats DNS rebinding); the page's
Content-Security-Policy only allows this page's own nonce-tagged script.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from consent import grantstate
from consent.errors import ConsentError
from wallet.errors import WalletError
from wallet.requesters import names as requester_names
from wallet.service import (
    Wallet,
    expected_errors,
    grant_views,
    grants_used,
    open_store,
    outcome_label,
    whoami,
)
from wallet.store import iso

BIND_HOST = "127.0.0.1"  # never reachable from another machine
MAX_BODY = 16 * 1024


def _page_template() -> str:
    return resources.files("wallet").joinpath("dashboard.html").read_text(encoding="utf-8")


def dashboard_state(home: Path) -> dict[str, Any]:
    """Everything the page shows, from the local store (no passphrase needed)."""
    who = whoami(home)
    store = open_store(home)
    try:
        views = grant_views(store)
        events = store.access_events()
        texts = {r.id: str(r.credential.get("credentialSubject", {}).get("purposeText") or "")
                 for r in store.grants()}
        known = requester_names(store)
    finally:
        store.close()
    rows = [_event_row(e, {v.id for v in views}) for e in reversed(events)]
    return {
        "did": who.did,
        "profile": who.profile,
        "grants": [{**v.to_json(), "purpose_text": texts.get(v.id, ""),
                    "requester_name": known.get(v.requester)} for v in views],
        "events": [{**row, "requester_name": known.get(row["requester"] or "")}
                   for row in rows],
        "revocable": list(grantstate.REVOCABLE),
    }


def _event_row(record: Any, mine: set[str]) -> dict[str, Any]:
    own, others = grants_used(record.event, mine)
    event = record.event
    return {"node": record.node_address, "seq": record.seq, "time": iso(record.time),
            "requester": event.get("requester"), "purpose": event.get("purpose"),
            "grant_ids": own, "other_grants": others, "outcome": event.get("outcome"),
            "shown_outcome": outcome_label(event), "epsilon": event.get("epsilon"),
            "left_out_grant_ids": event.get("own_left_out") or [],
            "verified": record.verified, "ledger_verified": record.ledger_verified,
            "ledger_status": record.ledger_status}


class _Handler(BaseHTTPRequestHandler):
    server: _DashboardHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logs: paths can carry grant ids, and nothing here needs them."""

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
              ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _host_ok(self) -> bool:
        expected = {f"{BIND_HOST}:{self.server.port}", f"localhost:{self.server.port}"}
        if self.headers.get("Host") not in expected:
            return False
        origin = self.headers.get("Origin")
        return origin is None or origin in {f"http://{h}" for h in expected}

    def do_GET(self) -> None:
        if not self._host_ok():
            self._json(HTTPStatus.FORBIDDEN, {"error": "wrong host: open the dashboard's own URL"})
            return
        if self.path in ("/", "/index.html"):
            nonce = secrets.token_urlsafe(16)
            page = (_page_template().replace("{{NONCE}}", nonce)
                    .replace("{{CSRF}}", self.server.csrf_token))
            csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                   "connect-src 'self'; img-src 'self'; form-action 'none'; "
                   "frame-ancestors 'none'; base-uri 'none'")
            self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8",
                       {"Content-Security-Policy": csp})
        elif self.path == "/api/state":
            try:
                self._json(HTTPStatus.OK, dashboard_state(self.server.home))
            except (WalletError, ConsentError) as exc:
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "no such page"})

    def do_POST(self) -> None:
        if self.path != "/api/revoke":
            self._json(HTTPStatus.NOT_FOUND, {"error": "no such action"})
            return
        token = self.headers.get("X-CSRF-Token", "")
        if not self._host_ok() or not hmac.compare_digest(token, self.server.csrf_token):
            self._json(HTTPStatus.FORBIDDEN,
                       {"error": "request refused: reload the dashboard page and try again"})
            return
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send JSON"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "empty or oversized request"})
            return
        try:
            body = json.loads(self.rfile.read(length))
            grant_id, passphrase = str(body["grant_id"]), str(body["passphrase"])
        except (ValueError, KeyError, TypeError):
            self._json(HTTPStatus.BAD_REQUEST, {"error": "send grant_id and passphrase"})
            return
        self._json(*revoke_from_dashboard(self.server.home, grant_id, passphrase,
                                          self.server.client_factory))


def revoke_from_dashboard(
    home: Path, grant_id: str, passphrase: str, client_factory: Any = None
) -> tuple[int, dict[str, Any]]:
    """Unlock the wallet, revoke, lock it again; (HTTP status, JSON body) for the page."""
    try:
        with Wallet.open(home, passphrase, client_factory) as wallet:
            outcome = wallet.revoke(grant_id)
    except expected_errors() as exc:
        return HTTPStatus.BAD_REQUEST, {"error": str(exc)}
    return HTTPStatus.OK, {"grant_id": outcome.grant_id, "revoked_at": iso(outcome.revoked_at),
                           "message": outcome.message}


class _DashboardHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, home: Path, port: int, client_factory: Any) -> None:
        super().__init__((BIND_HOST, port), _Handler)
        self.home = home
        self.port = int(self.server_address[1])
        self.csrf_token = secrets.token_urlsafe(32)
        self.client_factory = client_factory


@dataclass
class DashboardServer:
    """A running dashboard; ``url`` to open, ``stop()`` to end it."""

    httpd: _DashboardHTTPServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{BIND_HOST}:{self.httpd.port}/"

    def wait(self) -> None:
        self.thread.join()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def serve_dashboard(home: Path, *, port: int = 0, client_factory: Any = None) -> DashboardServer:
    """Start the dashboard on 127.0.0.1:``port`` (0 = any free port) in a background thread."""
    open_store(home).close()  # fail now, with a clear message, if there is no wallet
    httpd = _DashboardHTTPServer(Path(home), port, client_factory)
    thread = threading.Thread(target=httpd.serve_forever, name="wallet-dashboard", daemon=True)
    thread.start()
    return DashboardServer(httpd, thread)
