"""The audit report of the known history (tests/ledger/report_history.py) in headless
Chromium (tests/wallet/cdp.py): the key elements are laid out and visible, the plot's bars
are drawn in their purpose's colour (read back from a screenshot), digests stay folded until
opened, links lead to their rows, and at a phone's width only the entries table scrolls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.log import Log
from ledger.models import LogPublicKey
from tests.ledger.report_history import write_report
from tests.wallet.cdp import Chromium, png_pixels

QUOTE_BLUE = (0x00, 0x72, 0xB2)  # ledger.report.PALETTE[0]: the first purpose by name


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    chromium = Chromium(tmp_path / "chromium-profile")
    yield chromium
    chromium.close()


def _open(browser: Chromium, page: Path, width: int) -> None:
    browser.resize(width, 900)
    browser.navigate(page.as_uri())
    browser.wait_for("document.readyState === 'complete' && !!document.getElementById('entries')")


def _box(browser: Chromium, selector: str) -> dict[str, float]:
    box = browser.evaluate(f"""(() => {{ const r = document.querySelector({json.dumps(selector)})
        .getBoundingClientRect(); return {{x: r.x + scrollX, y: r.y + scrollY,
        width: r.width, height: r.height}}; }})()""")
    assert box["width"] > 0 and box["height"] > 0, f"{selector} is not laid out"
    return box  # type: ignore[no-any-return]


def test_report_renders_its_key_elements(browser: Chromium, log: Log,
                                         ledger_home: tuple[Path, LogPublicKey],
                                         tmp_path: Path) -> None:
    _, page = write_report(log, ledger_home[1], tmp_path)
    _open(browser, page, 1280)
    shot = browser.screenshot(tmp_path / "report.png", full_page=True)
    width, height, _ = png_pixels(shot)
    assert 1200 <= width <= 1280 and height > 900  # the whole page, less a scrollbar
    for selector in ("h1", "#summary", "#anchors", "#heads", "#per-day", "#entries"):
        _box(browser, selector)
    assert browser.evaluate("document.getElementById('selection').textContent") == (
        "since 2026-03-01 (from 2026-03-01T00:00Z), until 2026-03-03 (whole day, up to "
        "2026-03-04T00:00Z)")
    assert browser.evaluate("document.getElementById('total').textContent") == "7"
    assert browser.evaluate("document.querySelectorAll('#entries tr[id^=entry-]').length") == 7
    assert browser.evaluate("document.querySelectorAll('#per-day rect.bar').length") == 5

    # The tallest quote-generation bar, cut out of a screenshot, is the purpose's colour.
    bar = _box(browser, '#per-day rect.bar[data-purpose="quote-generation"]')
    _, _, rows = png_pixels(browser.screenshot(clip=bar))
    middle = rows[len(rows) // 2]
    x = len(middle) // 8  # the middle pixel (4 bytes each)
    assert tuple(middle[x * 4:x * 4 + 3]) == QUOTE_BLUE

    # Digests are folded: the <details> is closed and its content takes no room until opened.
    row = "#entry-0 details"
    assert browser.evaluate(f"document.querySelector('{row}').open") is False
    closed = _box(browser, row)["height"]
    browser.evaluate(f"document.querySelector('{row} summary').click()")
    assert _box(browser, row)["height"] > closed
    # A grant's revocation link leads to the revocation's row.
    browser.evaluate("document.querySelector('#entry-0 a[href=\"#entry-4\"]').click()")
    browser.wait_for("location.hash === '#entry-4'")
    assert browser.evaluate("scrollY > 0 && (r => r.top >= 0 && r.bottom <= innerHeight)"
                            "(document.getElementById('entry-4').getBoundingClientRect())")


def test_report_fits_a_phone(browser: Chromium, log: Log,
                             ledger_home: tuple[Path, LogPublicKey], tmp_path: Path) -> None:
    _, page = write_report(log, ledger_home[1], tmp_path)
    _open(browser, page, 390)
    browser.screenshot(tmp_path / "report-phone.png", full_page=False)
    # The page itself does not scroll sideways; the wide entries table scrolls in its box.
    assert browser.evaluate("document.documentElement.scrollWidth") <= 390
    assert _box(browser, "#per-day")["width"] <= 390
    assert browser.evaluate("(s => s.scrollWidth > s.clientWidth)"
                            "(document.querySelector('.scroll'))") is True
