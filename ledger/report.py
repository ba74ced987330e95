"""The compliance report (``sov-audit report``): a self-contained HTML page (no scripts, no
external assets) a compliance officer can read, built from verified ledger receipts.

On top, a summary: entries by kind and by author, the accesses the nodes' heads summarise
(answered / nothing released / refused, and why), the chain anchors covering the entries and
each node's chain of access-log heads. Then a plot of entries per day by purpose (inline SVG
built here), and one row per entry: time, author, kind, node, requester, purpose, scopes,
outcome, and links between a grant, the access heads that used it and its revocation.
Digests are folded away (``<details>``).

The page holds only what the entries hold: organisations' DIDs, vocabulary words, digests
and salted commitments, never a customer's DID or data, so it can be shared. What an entry
does not record (a revoked grant whose own entry is not among the inputs, a head written
before heads carried summaries) is said in words, never guessed. Every value is escaped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from html import escape
from typing import Any

from ledger.models import Anchor, Receipt

KINDS = ("grant", "revocation", "access_head", "model", "erasure")
COLOURS = {
    "grant": "#2e7d32",
    "revocation": "#c62828",
    "access_head": "#1565c0",
    "model": "#6a1b9a",
    "erasure": "#ef6c00",
}
KIND_NAMES = {
    "grant": "grant",
    "revocation": "revocation",
    "access_head": "access head",
    "model": "model",
    "erasure": "erasure",
}
OUTCOME_NAMES = {"answered": "answered", "nothing-released": "nothing released",
                 "refused": "refused"}
# Colour-blind-safe palette (Okabe-Ito) for purposes; entries without one are grey.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442",
           "#000000")
NO_PURPOSE = "no purpose recorded"
LEGACY = "unauthenticated (legacy)"


@dataclass(frozen=True)
class ReportItem:
    """One verified entry: its time, kind, log index, the size of the tree that proves it,
    the event and the chain anchors its receipt carries."""

    time: datetime
    kind: str
    index: int
    tree_size: int
    event: dict[str, Any]
    anchors: tuple[Anchor, ...] = ()


def parse_time(text: str) -> datetime:
    # Event times may carry fractional seconds (ledger.events._TIME); fromisoformat reads both.
    return datetime.fromisoformat(text).astimezone(UTC)


def _mentions(event: dict[str, Any], commitment: str) -> bool:
    return event.get("subject_commitment") == commitment or commitment in event.get(
        "subject_commitments", []
    )


def select(
    receipts: Sequence[tuple[Receipt, int]],
    *,
    subject_commitment: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[ReportItem]:
    """Pick the (verified receipt, tree size) pairs of a subject and/or period (``since``
    inclusive, ``until`` exclusive), by time; one item per log entry (the same entry given
    twice, e.g. in a bundle and as a file, is listed once)."""
    items: dict[int, ReportItem] = {}
    for receipt, size in receipts:
        event = receipt.event
        moment = parse_time(event["time"])
        if subject_commitment and not _mentions(event, subject_commitment):
            continue
        if (since and moment < since) or (until and moment >= until):
            continue
        anchors = tuple(link.anchor for link in receipt.anchors)
        known = items.get(receipt.index)
        if known is not None:
            anchors = tuple({(a.chain_id, a.tx_hash): a for a in known.anchors + anchors}
                            .values())
            size = max(size, known.tree_size)
        items[receipt.index] = ReportItem(moment, event["type"], receipt.index, size, event,
                                          anchors)
    return sorted(items.values(), key=lambda i: (i.time, i.index))


# -- links between entries --------------------------------------------------------------------


@dataclass
class Links:
    """Grants by digest, the access heads that used each, its revocations, and erasures of
    the same subject, within the report's entries."""

    grants: dict[str, ReportItem] = field(default_factory=dict)
    uses: dict[str, list[ReportItem]] = field(default_factory=dict)
    revocations: dict[str, list[ReportItem]] = field(default_factory=dict)
    by_subject: dict[str, list[ReportItem]] = field(default_factory=dict)
    unlisted: int = 0  # access heads that do not list the grants they used
    #: Signed erasure proofs given with their receipts, by proof digest (ledger.erasure).
    proofs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, items: Iterable[ReportItem]) -> Links:
        links = cls()
        for item in items:
            event = item.event
            if item.kind == "grant":
                links.grants.setdefault(event["grant_digest"], item)
                links.by_subject.setdefault(event["subject_commitment"], []).append(item)
            elif item.kind == "revocation":
                links.revocations.setdefault(event["grant_digest"], []).append(item)
            elif item.kind == "access_head":
                links.unlisted += "grant_digests" not in event
                for digest in event.get("grant_digests", []):
                    links.uses.setdefault(digest, []).append(item)
        return links


def _ref(item: ReportItem) -> str:
    return f'<a href="#entry-{item.index}">#{item.index}</a>'


def _refs(items: Iterable[ReportItem]) -> str:
    return ", ".join(_ref(i) for i in items)


def _short(did: str) -> str:
    """A did:key shortened for a table cell; the full DID is in the title (on hover)."""
    text = did if len(did) <= 24 else f"{did[:14]}…{did[-6:]}"
    return f'<code class="did" title="{escape(did)}">{escape(text)}</code>'


def _digest(value: str) -> str:
    return f'<code title="{escape(value)}">{escape(value[:12])}…</code>'


# -- per-entry cells --------------------------------------------------------------------------


def author_of(event: dict[str, Any]) -> str:
    """The author as plain text, for counting: the DID, "customer key (endorsed by DID)",
    or ``LEGACY`` for entries written before entries were signed."""
    author = event.get("author")
    if not author:
        return LEGACY
    endorser = event.get("endorser")
    return f"customer key, endorsed by {endorser}" if endorser else str(author)


def _author_label(text: str) -> str:
    """An ``author_of`` text with its DID shortened (full on hover)."""
    head, _, did = text.rpartition(" ")
    if not did.startswith("did:"):
        return escape(text)
    return f"{escape(head)} {_short(did)}" if head else _short(did)


def _author_cell(event: dict[str, Any]) -> str:
    author = event.get("author")
    if not author:
        return f'<span class="legacy">{LEGACY}</span>'
    endorser = event.get("endorser")
    if endorser:
        return (f"customer's per-grant key {_short(author)}<br>endorsed by node "
                f"{_short(endorser)}")
    who = _short(author)
    if author == event.get("node"):
        who += " (the node)"
    return who


def _node_cell(event: dict[str, Any]) -> str:
    nodes = [event["node"]] if event.get("node") else list(event.get("nodes", []))
    return "<br>".join(_short(n) for n in nodes) or '<span class="na">—</span>'


def _scopes(scopes: Sequence[str] | None) -> str:
    return escape(", ".join(scopes)) if scopes else '<span class="na">—</span>'


def _digest_only(what: str) -> str:
    return f'<span class="na">{escape(what)}</span>'


def _grant_cells(item: ReportItem, links: Links) -> list[str]:
    event = item.event
    digest = event["grant_digest"]
    requester = event.get("requester")
    outcome = "granted"
    if event.get("expires"):
        outcome += f", until {parse_time(event['expires']):%Y-%m-%d %H:%M}Z"
    uses = links.uses.get(digest, [])
    revoked = links.revocations.get(digest, [])
    unlisted = f" ({links.unlisted} head(s) do not list their grants)" if links.unlisted else ""
    link_parts = [f"used under {_refs(uses)}" if uses
                  else f"no access head in this report names it{unlisted}",
                  f"revoked by {_refs(revoked)}" if revoked else "not revoked in this report"]
    return [
        _short(requester) if requester else _digest_only("not recorded (digest only)"),
        escape(event["purpose"]),
        _scopes(event.get("scopes")) if "scopes" in event
        else _digest_only("not recorded (digest only)"),
        escape(outcome),
        "<br>".join(link_parts),
    ]


def _revocation_cells(item: ReportItem, links: Links) -> list[str]:
    digest = item.event["grant_digest"]
    grant = links.grants.get(digest)
    if grant is None:
        unknown = _digest_only("only the digest is known")
        return [unknown, unknown, unknown, "revoked",
                f"revokes the grant {_digest(digest)}, whose entry is not in this report"]
    event = grant.event
    requester = event.get("requester")
    return [
        _short(requester) if requester else _digest_only("not recorded (digest only)"),
        escape(event["purpose"]),
        _scopes(event.get("scopes")),
        "revoked",
        f"revokes the grant {_ref(grant)} (requester, purpose and scopes from it)",
    ]


def _outcome_text(row: dict[str, Any]) -> str:
    outcome = OUTCOME_NAMES.get(row["outcome"], row["outcome"])
    reason = f": {row['reason']}" if row.get("reason") else ""
    return escape(f"{outcome}{reason}")


def _access_cells(item: ReportItem, links: Links) -> list[str]:
    event = item.event
    digests = event.get("grant_digests", [])
    known = [links.grants[d] for d in digests if d in links.grants]
    parts = [f"covers access-log events up to sequence {event['sequence']}"]
    if known:
        parts.append(f"under grants {_refs(known)}")
    if len(digests) > len(known):
        parts.append(f"{len(digests) - len(known)} grant(s) known only by digest")
    if "grant_digests" not in event:
        # A node lists at most 100 grants per head (agent_node.accesslog.MAX_LISTED).
        parts.append("the grants used are not listed in this head (none, or too many)")
    rows = event.get("accesses")
    if rows is None:
        summary = _digest_only(
            "not recorded: this head was written before heads summarised their accesses"
            + (f" (requester {event['requester']})" if event.get("requester") else "")
            + (f" (purpose {event['purpose']})" if event.get("purpose") else ""))
        return [f'<td colspan="4">{summary}</td>', "<br>".join(parts)]
    lines = "".join(
        f"<tr><td>{_short(r['requester']) if r.get('requester') else _digest_only('not named')}"
        f"</td><td>{escape(r.get('purpose', '—'))}</td><td>{_scopes(r.get('scopes'))}</td>"
        f'<td class="o-{escape(r["outcome"])}">{_outcome_text(r)}</td>'
        f'<td class="n">{r["count"]}</td></tr>'
        for r in rows)
    table = ('<table class="accesses"><tr><th>requester</th><th>purpose</th><th>scopes</th>'
             f'<th>outcome</th><th class="n">events</th></tr>{lines}</table>')
    return [f'<td colspan="4">{table}</td>', "<br>".join(parts)]


def _other_cells(item: ReportItem, links: Links) -> list[str]:
    event = item.event
    if item.kind == "model":
        return ["—", escape(event.get("purpose", "—")), "—",
                escape(f"model recorded (run {event['run_id']})"), ""]
    subject = links.by_subject.get(event.get("subject_commitment", ""), [])
    link = f"the subject of grants {_refs(subject)}" if subject else ""
    proof = links.proofs.get(event.get("proof_digest", ""))
    return ["—", "—", "—", _erasure_text(proof) if proof else "erased", link]


def _erasure_text(proof: dict[str, Any]) -> str:
    """What a signed erasure proof says (checked against this entry before it got here)."""
    rows = sum(int(loc.get("rows", 0)) for loc in proof.get("locations", []))
    files = proof.get("scan", {}).get("files", [])
    hits = sum(int(f.get("hits", 0)) for f in files)
    per_location = ", ".join(f"{loc['name']} {loc['rows']}" for loc in proof["locations"]
                             if loc.get("rows"))
    return (f"erased {_short(str(proof.get('customer', '')))}: {rows} row(s) "
            f"({escape(per_location)}), {len(proof.get('destroyed_keys', []))} data key(s) "
            f"destroyed, salt {'destroyed' if proof.get('salt_destroyed') else 'not held'}; "
            f"scan of {len(files)} file(s) for {proof.get('scan', {}).get('needles')} "
            f"value(s): {hits} hit(s) (signed proof checked)")


def _details(item: ReportItem) -> str:
    skip = {"type", "schema_version", "time", "signature", "endorsement", "accesses"}
    cells = [f"<b>log entry</b>: {item.index}, proven in the signed tree of size "
             f"{item.tree_size}"]
    if item.anchors:
        cells.append("<b>anchored</b>: tree sizes "
                     + ", ".join(str(a.size) for a in item.anchors))
    for key in sorted(set(item.event) - skip):
        value = item.event[key]
        text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        cells.append(f"<b>{escape(key)}</b>: <code>{escape(text)}</code>")
    return "<details><summary>digests</summary>" + "<br>".join(cells) + "</details>"


def _row(item: ReportItem, links: Links) -> str:
    cells = {
        "grant": _grant_cells,
        "revocation": _revocation_cells,
        "access_head": _access_cells,
    }.get(item.kind, _other_cells)(item, links)
    middle, link = cells[:-1], cells[-1]
    if not (middle and middle[0].startswith("<td")):
        middle = [f"<td>{c}</td>" for c in middle]
    return (
        f'<tr id="entry-{item.index}" class="k-{item.kind}">'
        f"<td>{item.time:%Y-%m-%d %H:%M:%S}Z</td>"
        f"<td>{_author_cell(item.event)}</td>"
        f'<td><span style="color:{COLOURS[item.kind]}">&#9679;</span> '
        f"{escape(KIND_NAMES[item.kind])} #{item.index}</td>"
        f"<td>{_node_cell(item.event)}</td>{''.join(middle)}"
        f"<td>{link}</td><td>{_details(item)}</td></tr>"
    )


# -- summary ----------------------------------------------------------------------------------


def _access_totals(items: Sequence[ReportItem]) -> tuple[Counter[str], Counter[str], int]:
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    unsummarised = 0
    for item in items:
        if item.kind != "access_head":
            continue
        if "accesses" not in item.event:
            unsummarised += 1
        for row in item.event.get("accesses", []):
            outcomes[row["outcome"]] += row["count"]
            if row["outcome"] == "refused":
                reasons[row.get("reason", "not recorded")] += row["count"]
    return outcomes, reasons, unsummarised


def _summary(items: Sequence[ReportItem]) -> str:
    kinds = Counter(i.kind for i in items)
    kind_rows = "".join(
        f'<tr><td><span style="color:{COLOURS[k]}">&#9679;</span> {escape(KIND_NAMES[k])}'
        f'</td><td class="n" data-kind="{k}">{kinds.get(k, 0)}</td></tr>' for k in KINDS)
    outcomes, reasons, unsummarised = _access_totals(items)
    outcome_rows = "".join(
        f'<tr><td>{escape(OUTCOME_NAMES.get(o, o))}</td><td class="n" data-outcome="{escape(o)}">'
        f"{outcomes.get(o, 0)}</td></tr>"
        for o in [*OUTCOME_NAMES, *sorted(set(outcomes) - set(OUTCOME_NAMES))])
    reason_rows = "".join(f"<li>{escape(r)}: {n}</li>" for r, n in reasons.most_common())
    refusals = (f"<p>Refusals by reason:</p><ul class=\"reasons\">{reason_rows}</ul>"
                if reasons else "<p>No refusal in the selected heads.</p>")
    missing = (f"<p class=\"na\">{unsummarised} access head(s) carry no summary (written "
               "before heads summarised their accesses): their accesses are not counted "
               "here.</p>" if unsummarised else "")
    authors = Counter(author_of(i.event) for i in items)
    author_rows = "".join(f"<li>{_author_label(a)}: {n}</li>" for a, n in authors.most_common())
    return f"""<section id="summary"><h2>Summary</h2>
<div class="cards">
<div class="card"><h3>Entries by kind</h3><table class="small">{kind_rows}
<tr><th>total</th><th class="n" id="total">{len(items)}</th></tr></table></div>
<div class="card"><h3>Accesses under the access heads</h3>
<table class="small">{outcome_rows}</table>{refusals}{missing}</div>
<div class="card"><h3>Entries by author</h3><ul>{author_rows or "<li>none</li>"}</ul></div>
</div>
{_anchors(items)}
{_head_chains(items)}
</section>"""


def _anchors(items: Sequence[ReportItem]) -> str:
    anchors = {(a.chain_id, a.tx_hash): a for i in items for a in i.anchors}
    if not anchors:
        return ('<h3>Chain anchors</h3><p class="na" id="anchors">No receipt carries a chain '
                "anchor: ask the ledger operator for receipts with anchors "
                "(<code>sov-ledger receipt --with-anchors</code>).</p>")
    ordered = sorted(anchors.values(), key=lambda a: (a.size, a.chain_id, a.block_number))
    rows = "".join(
        f"<tr><td class=\"n\">{a.size}</td><td>{a.chain_id}</td><td>{a.block_number}</td>"
        f"<td>{_digest(a.tx_hash)}</td>"
        f"<td>{sum(1 for i in items if i.index < a.size)}</td></tr>" for a in ordered)
    uncovered = sum(1 for i in items if not i.anchors)
    return (f'<h3>Chain anchors</h3><table class="small" id="anchors"><tr><th>tree size</th>'
            "<th>chain</th><th>block</th><th>transaction</th><th>entries covered</th></tr>"
            f"{rows}</table><p>Each anchor's tree head is signed by the log and proven "
            "consistent with the receipts' tree heads (checked offline); "
            "<code>sov-audit verify --chain-rpc</code> checks the transactions on chain. "
            f"{uncovered} entr{'y' if uncovered == 1 else 'ies'} of this report "
            f"{'is' if uncovered == 1 else 'are'} not yet covered by an anchor.</p>")


def _head_chains(items: Sequence[ReportItem]) -> str:
    chains: dict[str, list[ReportItem]] = {}
    for item in items:
        if item.kind == "access_head":
            chains.setdefault(item.event["node"], []).append(item)
    if not chains:
        return ""
    rows = "".join(
        f"<tr><td>{_short(node)}</td><td>{len(heads)}</td><td>"
        + " → ".join(f'<a href="#entry-{h.index}">{h.event["sequence"]}</a>'
                     for h in sorted(heads, key=lambda h: h.event["sequence"]))
        + "</td></tr>" for node, heads in sorted(chains.items()))
    return ('<h3>Access-log heads by node</h3><table class="small" id="heads"><tr><th>node</th>'
            "<th>heads</th><th>sequences (each head's hash commits to every event up to it)"
            f"</th></tr>{rows}</table>")


# -- plot: entries per day by purpose ---------------------------------------------------------


def _purposes(item: ReportItem, links: Links) -> list[str]:
    event = item.event
    if item.kind == "access_head":
        found = sorted({r["purpose"] for r in event.get("accesses", []) if r.get("purpose")})
        return found or ([event["purpose"]] if event.get("purpose") else [NO_PURPOSE])
    if item.kind == "revocation":
        grant = links.grants.get(event["grant_digest"])
        return [grant.event["purpose"]] if grant else [NO_PURPOSE]
    return [event["purpose"]] if event.get("purpose") else [NO_PURPOSE]


PLOT_W, PLOT_H, LEFT, BOTTOM, TOP = 900, 260, 44, 46, 16


def _plot(items: Sequence[ReportItem], links: Links) -> str:
    if not items:
        return "<p>No entries in the selection.</p>"
    days: dict[date, Counter[str]] = {}
    for item in items:
        for purpose in _purposes(item, links):
            days.setdefault(item.time.date(), Counter())[purpose] += 1
    first, last = min(days), max(days)
    span = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    purposes = sorted({p for c in days.values() for p in c} - {NO_PURPOSE})
    colour = {p: PALETTE[n % len(PALETTE)] for n, p in enumerate(purposes)}
    colour[NO_PURPOSE] = "#9e9e9e"
    order = [*purposes, NO_PURPOSE]
    peak = max(sum(c.values()) for c in days.values())
    inner_w, inner_h = PLOT_W - LEFT - 10, PLOT_H - BOTTOM - TOP
    slot = inner_w / len(span)
    bar = max(min(slot * 0.7, 60), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {PLOT_W} {PLOT_H}" '
             f'width="100%" style="max-width:{PLOT_W}px" role="img" id="per-day" '
             'aria-label="entries per day by purpose">']
    for tick in _ticks(peak):
        y = TOP + inner_h * (1 - tick / peak)
        parts.append(f'<line x1="{LEFT}" x2="{PLOT_W - 10}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#e0e0e0"/><text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{tick}</text>')
    label_every = max(1, len(span) // 12)
    for n, day in enumerate(span):
        x = LEFT + slot * n + (slot - bar) / 2
        y = TOP + inner_h
        for purpose in order:
            count = days.get(day, Counter()).get(purpose, 0)
            if not count:
                continue
            h = inner_h * count / peak
            y -= h
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                         f'height="{h:.1f}" fill="{colour[purpose]}" data-day="{day}" '
                         f'data-purpose="{escape(purpose)}" data-count="{count}">'
                         f"<title>{day}: {escape(purpose)}, {count} entr"
                         f"{'y' if count == 1 else 'ies'}</title></rect>")
        if n % label_every == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{TOP + inner_h + 16}" '
                         f'font-size="11" text-anchor="middle">{day:%m-%d}</text>')
    legend_x = LEFT
    for purpose in order:
        if purpose == NO_PURPOSE and not any(c.get(NO_PURPOSE) for c in days.values()):
            continue
        parts.append(f'<rect x="{legend_x}" y="{PLOT_H - 14}" width="10" height="10" '
                     f'fill="{colour[purpose]}"/><text x="{legend_x + 14}" y="{PLOT_H - 5}" '
                     f'font-size="11">{escape(purpose)}</text>')
        legend_x += 24 + 7 * len(purpose)
    parts.append("</svg>")
    return "".join(parts)


def _ticks(peak: int) -> list[int]:
    step = max(1, -(-peak // 4))
    return list(range(0, peak + 1, step))


# -- page -------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; font-size: 13px; }
#entries { width: 100%; }
td, th { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; text-align: left; }
table.small td, table.small th { padding: 2px 8px; }
table.accesses { width: 100%; font-size: 12px; }
table.accesses td, table.accesses th { border-color: #e3e3e3; }
.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 12px; word-break: break-all; }
.good { color: #2e7d32; } .bad { color: #c62828; font-weight: bold; }
.na, .legacy { color: #777; font-style: italic; }
.o-refused { color: #c62828; } .o-nothing-released { color: #8d6e00; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0 1em 1em; min-width: 220px;
        max-width: 420px; flex: 1; }
code.did { white-space: nowrap; }
.scroll { overflow-x: auto; }
details summary { cursor: pointer; color: #555; }
"""


def render(
    items: Sequence[ReportItem],
    *,
    title: str,
    origin: str,
    selection: str,
    failures: Sequence[str] = (),
    proofs: dict[str, dict[str, Any]] | None = None,
) -> str:
    links = Links.of(items)
    links.proofs = dict(proofs or {})
    rows = "".join(_row(i, links) for i in items)
    failed = "".join(f"<li>{escape(f)}</li>" for f in failures)
    status = (
        f'<p class="bad" id="status">{len(failures)} item(s) FAILED verification and are not '
        f"listed:</p><ul>{failed}</ul>"
        if failures
        else '<p class="good" id="status">Every listed entry was verified: tree-head signature, '
        "inclusion proof and its author's signature (entries written before entries were "
        "signed are marked unauthenticated (legacy)).</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{STYLE}</style></head><body>
<h1>{escape(title)}</h1>
<p>Log: <code>{escape(origin)}</code> &middot;
Selection: <span id="selection">{escape(selection)}</span> &middot;
Generated {datetime.now(UTC):%Y-%m-%d %H:%M}Z</p>
{status}
{_summary(items)}
<h2>Entries per day by purpose</h2>
{_plot(items, links)}
<p class="na">An access head covering several purposes counts once under each; a revocation
counts under its grant's purpose when the grant's entry is in this report.</p>
<h2>Entries</h2>
<div class="scroll"><table id="entries"><tr><th>time (UTC)</th><th>author</th><th>kind</th>
<th>node</th><th>requester</th><th>purpose</th><th>scopes</th><th>outcome</th><th>links</th>
<th>details</th></tr>{rows}</table></div>
<p>The log holds organisations' DIDs, vocabulary words, digests and salted subject
commitments only, never a customer's DID or data. Requester, purpose and scopes of a grant
come from its own entry; where only its digest is known (its entry is not among the inputs),
the report says so.</p>
</body></html>
"""
