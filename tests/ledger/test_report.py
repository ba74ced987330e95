"""``sov-audit report`` on a known history (tests/ledger/report_history.py): the rendered text
says who asked what and what came of it, links each grant to its uses and its revocation,
says when only a digest is known, folds digests away, summarises (kinds, outcomes, refusals,
anchors, head chain) and plots entries per day by purpose; --until a day includes that day.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ledger.log import Log
from ledger.models import LogPublicKey
from ledger.report import ReportItem, render
from tests.ledger.report_history import CRM, G1, NODE, PURPOSE, write_report


class _Text(HTMLParser):
    """Visible text of a page, without what is folded into <details> (except its summary)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.folded = 0
        self.in_summary = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.folded += tag == "details"
        self.in_summary = self.in_summary or tag == "summary"
        if tag in ("tr", "li", "p", "br", "h2", "h3"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        self.folded -= tag == "details"
        self.in_summary = self.in_summary and tag != "summary"
        if tag == "td":
            self.parts.append(" | ")

    def handle_data(self, data: str) -> None:
        if not self.folded or self.in_summary:
            self.parts.append(data)


def visible(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return re.sub(r"[ \t]+", " ", "".join(parser.parts))


def _row(html: str, index: int) -> str:
    match = re.search(rf'<tr id="entry-{index}".*?</tr>(?=<tr id="entry-|</table></div>)', html,
                      re.S)
    assert match, f"no row for entry {index}"
    return visible(match.group(0))


@pytest.fixture()
def report(log: Log, ledger_home: tuple[Path, LogPublicKey], tmp_path: Path) -> tuple[str, str]:
    output, out = write_report(log, ledger_home[1], tmp_path)
    return output, out.read_text(encoding="utf-8")


def test_the_selection_says_the_whole_day_is_included(report: tuple[str, str]) -> None:
    output, html = report
    words = ("since 2026-03-01 (from 2026-03-01T00:00Z), "
             "until 2026-03-03 (whole day, up to 2026-03-04T00:00Z)")
    assert f"7 event(s) ({words})" in output  # the head at 23:59:59 in, the grant at 00:00 out
    assert f"Selection: {words}" in visible(html)


def test_summary_counts(report: tuple[str, str]) -> None:
    html = report[1]
    kinds = dict(re.findall(r'data-kind="(\w+)">(\d+)<', html))
    assert kinds == {"grant": "2", "revocation": "2", "access_head": "3", "model": "0",
                     "erasure": "0"}
    outcomes = dict(re.findall(r'data-outcome="([\w-]+)">(\d+)<', html))
    assert outcomes == {"answered": "3", "nothing-released": "1", "refused": "2"}
    text = visible(html)
    assert "Refusals by reason:\nno-grant: 1\nscope: 1" in text
    assert "1 access head(s) carry no summary" in text
    assert "unauthenticated (legacy): 7" in text
    anchors = visible(re.search(r'<table class="small" id="anchors">.*?</table>', html,
                                re.S).group(0))
    assert "4 | 31337 | 12 | 0x7e7e7e7e7e… | 4 |" in anchors  # size, chain, block, tx, covered
    assert "3 entries of this report are not yet covered by an anchor" in text
    heads = re.search(r'<table class="small" id="heads">.*?</table>', html, re.S).group(0)
    assert "3 → 5 → 6" in visible(heads)


def test_each_entry_says_who_what_and_what_came_of_it(report: tuple[str, str]) -> None:
    html = report[1]
    grant = _row(html, 0)
    assert "grant #0" in grant and PURPOSE in grant and "transaction" in grant
    assert "granted, until 2026-03-02 09:00Z" in grant and "unauthenticated (legacy)" in grant
    head = _row(html, 3)
    assert "answered | 1" in head and "nothing released | 1" in head
    assert "refused: scope | 1" in head and "covers access-log events up to sequence 5" in head
    legacy = _row(html, 6)
    assert "not recorded: this head was written before heads summarised" in legacy
    # Organisations' DIDs are shown shortened, in full on hover.
    assert f'title="{CRM}"' in html and f'title="{NODE}"' in html


def test_links_between_a_grant_its_uses_and_its_revocation(report: tuple[str, str]) -> None:
    html = report[1]
    assert "used under #2, #3\nrevoked by #4" in _row(html, 0)
    assert "used under #3, #6\nnot revoked in this report" in _row(html, 1)
    assert "under grants #0, #1\n1 grant(s) known only by digest" in _row(html, 3)
    revocation = _row(html, 4)
    assert "revokes the grant #0 (requester, purpose and scopes from it)" in revocation
    assert PURPOSE in revocation and "transaction" in revocation
    unknown = _row(html, 5)
    assert unknown.count("only the digest is known") == 3 and "whose entry is not in" in unknown
    assert '<a href="#entry-4">#4</a>' in html  # a real link to the row


def test_digests_are_folded_away(report: tuple[str, str]) -> None:
    html = report[1]
    assert html.count("<details><summary>digests</summary>") == 7
    assert G1 in html  # in the folded details
    assert not re.search(r"[0-9a-f]{64}", visible(html))  # never in the visible text


def test_plot_of_entries_per_day_by_purpose(report: tuple[str, str]) -> None:
    html = report[1]
    bars = {(d, p): int(n) for d, p, n in re.findall(
        r'data-day="([\d-]+)" data-purpose="([^"]+)" data-count="(\d+)"', html)}
    # 03-01: both grants and the head covering both purposes; 03-02: the head (both) and the
    # revocation of the quote-generation grant; 03-03: the revocation of a grant not in the
    # report and the head without a summary.
    assert bars == {("2026-03-01", "quote-generation"): 2, ("2026-03-01", "renewal-warning"): 2,
                    ("2026-03-02", "quote-generation"): 2, ("2026-03-02", "renewal-warning"): 1,
                    ("2026-03-03", "no purpose recorded"): 2}
    assert 'aria-label="entries per day by purpose"' in html


def test_authors_are_shown_when_entries_carry_them() -> None:
    """Entries signed by their author (ledger.authority): a node's own, a customer's per-grant
    key endorsed by the node; the report shows each and counts entries by author."""
    moment = datetime(2026, 3, 1, 9, tzinfo=UTC)
    key = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    items = [
        ReportItem(moment, "access_head", 0, 2, {
            "type": "access_head", "time": "2026-03-01T09:00:00Z", "node": NODE, "author": NODE,
            "head": "ab" * 32, "sequence": 1, "signature": "cd" * 64}),
        ReportItem(moment, "grant", 1, 2, {
            "type": "grant", "time": "2026-03-01T09:00:00Z", "grant_digest": G1,
            "subject_commitment": "ef" * 32, "purpose": PURPOSE, "author": key,
            "endorser": NODE, "signature": "cd" * 64, "endorsement": "cd" * 64}),
    ]
    html = render(items, title="t", origin="o", selection="all events")
    assert "(the node)" in _row(html, 0)
    assert "customer's per-grant key" in _row(html, 1) and "endorsed by node" in _row(html, 1)
    # Entries by author, DIDs shortened with the full DID on hover.
    assert re.search(rf'<li><code class="did" title="{NODE}">[^<]+</code>: 1</li>', html)
    assert re.search(rf'<li>customer key, endorsed by <code class="did" title="{NODE}">'
                     r"[^<]+</code>: 1</li>", html)
    assert "cd" * 64 not in html  # signatures are not shown, not even folded


def test_models_erasures_and_an_empty_selection() -> None:
    moment = datetime(2026, 3, 5, 9, tzinfo=UTC)
    subject = "ef" * 32
    items = [
        ReportItem(moment, "grant", 0, 3, {
            "type": "grant", "time": "2026-03-05T09:00:00Z", "grant_digest": G1,
            "subject_commitment": subject, "purpose": PURPOSE}),
        ReportItem(moment, "model", 1, 3, {
            "type": "model", "time": "2026-03-05T09:00:00Z", "model_digest": "ab" * 32,
            "run_id": "run-7", "purpose": "intent-model-training", "nodes": [NODE]}),
        ReportItem(moment, "erasure", 2, 4, {
            "type": "erasure", "time": "2026-03-05T09:00:00Z", "proof_digest": "cd" * 32,
            "subject_commitment": subject, "node": NODE}),
        ReportItem(moment, "access_head", 3, 4, {  # used more grants than a head lists
            "type": "access_head", "time": "2026-03-05T09:00:00Z", "node": NODE,
            "head": "ab" * 32, "sequence": 9, "accesses": [{"outcome": "answered", "count": 1}]}),
    ]
    html = render(items, title="t", origin="o", selection="all events")
    # A grant anchored without requester or scopes (an older wallet): said, not guessed.
    assert _row(html, 0).count("not recorded (digest only)") == 2
    assert "no access head in this report names it (1 head(s) do not list their grants)" in \
        _row(html, 0)
    assert "the grants used are not listed in this head" in _row(html, 3)
    assert "model recorded (run run-7)" in _row(html, 1)
    assert "erased" in _row(html, 2) and "the subject of grants #0" in _row(html, 2)
    assert "No receipt carries a chain anchor" in visible(html)
    empty = render([], title="t", origin="o", selection="all events")
    assert "No entries in the selection." in visible(empty) and 'id="total">0<' in empty
