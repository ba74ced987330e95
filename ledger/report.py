"""The compliance report: a self-contained HTML page (no scripts, no external assets) listing
the verified grants, revocations, accesses, models and erasures of one subject or one period,
with an inline SVG timeline. Every value is HTML-escaped; the page holds only what the log
holds (digests and commitments), so it can be shared without exposing customer data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any

from ledger.models import Receipt

COLOURS = {
    "grant": "#2e7d32",
    "revocation": "#c62828",
    "access_head": "#1565c0",
    "model": "#6a1b9a",
    "erasure": "#ef6c00",
}
WIDTH, HEIGHT, MARGIN = 900, 190, 40


@dataclass(frozen=True)
class ReportItem:
    time: datetime
    kind: str
    index: int
    tree_size: int
    event: dict[str, Any]


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
    inclusive, ``until`` exclusive), by time."""
    items = []
    for receipt, size in receipts:
        event = receipt.event
        moment = parse_time(event["time"])
        if subject_commitment and not _mentions(event, subject_commitment):
            continue
        if (since and moment < since) or (until and moment >= until):
            continue
        items.append(ReportItem(moment, event["type"], receipt.index, size, event))
    return sorted(items, key=lambda i: (i.time, i.index))


def _timeline(items: Sequence[ReportItem]) -> str:
    if not items:
        return "<p>No events in the selection.</p>"
    start, end = items[0].time.timestamp(), items[-1].time.timestamp()
    span = max(end - start, 1.0)
    lanes = list(COLOURS)
    lane_h = (HEIGHT - 2 * MARGIN) / len(lanes)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="timeline of ledger events">'
    ]
    for n, kind in enumerate(lanes):
        y = MARGIN + lane_h * (n + 0.5)
        parts.append(
            f'<text x="4" y="{y + 4:.1f}" font-size="11">{escape(kind)}</text>'
            f'<line x1="{MARGIN * 2}" x2="{WIDTH - MARGIN}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#ddd"/>'
        )
    for item in items:
        x = MARGIN * 2 + (WIDTH - MARGIN * 3) * (item.time.timestamp() - start) / span
        y = MARGIN + lane_h * (lanes.index(item.kind) + 0.5)
        label = f"{item.kind} at {item.time:%Y-%m-%d %H:%M:%S}Z (entry {item.index})"
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{COLOURS[item.kind]}">'
            f"<title>{escape(label)}</title></circle>"
        )
    parts.append(
        f'<text x="{MARGIN * 2}" y="{HEIGHT - 8}" font-size="11">'
        f"{items[0].time:%Y-%m-%d %H:%M}Z</text>"
        f'<text x="{WIDTH - MARGIN}" y="{HEIGHT - 8}" font-size="11" text-anchor="end">'
        f"{items[-1].time:%Y-%m-%d %H:%M}Z</text></svg>"
    )
    return "".join(parts)


def _details(event: dict[str, Any]) -> str:
    skip = {"type", "schema_version", "time"}
    cells = []
    for key in sorted(set(event) - skip):
        value = event[key]
        text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        cells.append(f"<b>{escape(key)}</b>: <code>{escape(text)}</code>")
    return "<br>".join(cells)


def render(
    items: Sequence[ReportItem],
    *,
    title: str,
    origin: str,
    selection: str,
    failures: Sequence[str] = (),
) -> str:
    counts = {kind: sum(1 for i in items if i.kind == kind) for kind in COLOURS}
    rows = "".join(
        f"<tr><td>{i.time:%Y-%m-%d %H:%M:%S}Z</td>"
        f'<td><span style="color:{COLOURS[i.kind]}">&#9679;</span> {escape(i.kind)}</td>'
        f"<td>{i.index}</td><td>{i.tree_size}</td><td>{_details(i.event)}</td></tr>"
        for i in items
    )
    failed = "".join(f"<li>{escape(f)}</li>" for f in failures)
    summary = ", ".join(f"{n} {escape(k)}" for k, n in counts.items())
    status = (
        f'<p class="bad">{len(failures)} item(s) FAILED verification and are not listed:</p>'
        f"<ul>{failed}</ul>"
        if failures
        else '<p class="good">Every listed event was verified: tree-head signature and '
        "inclusion proof.</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; width: 100%; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; text-align: left; }}
code {{ font-size: 12px; word-break: break-all; }}
.good {{ color: #2e7d32; }} .bad {{ color: #c62828; font-weight: bold; }}
</style></head><body>
<h1>{escape(title)}</h1>
<p>Log: <code>{escape(origin)}</code> &middot; Selection: {escape(selection)}
&middot; Generated {datetime.now(UTC):%Y-%m-%d %H:%M}Z</p>
{status}
<p>{len(items)} event(s): {summary}.</p>
<h2>Timeline</h2>
{_timeline(items)}
<h2>Events</h2>
<table><tr><th>time (UTC)</th><th>type</th><th>log entry</th><th>tree size</th>
<th>recorded digests and commitments</th></tr>{rows}</table>
<p>The log holds digests and salted subject commitments only, never personal data.</p>
</body></html>
"""
