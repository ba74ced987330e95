"""Writer process for the crash test: appends batches forever, reporting each step.

Prints ``BEGIN <n>`` before a batch and ``ACK <size> <entry hash>... END`` after the batch was
acknowledged (receipts returned), flushing each line so the parent sees it at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ledger.events import make_event
from ledger.home import open_log


def main(home: str, passphrase: str, start: int, batch: int) -> None:
    log = open_log(Path(home), passphrase)
    n = start
    while True:
        events = [
            make_event("grant", grant_digest=f"{i:064x}", subject_commitment="ab" * 32,
                       purpose="quote-generation")
            for i in range(n, n + batch)
        ]
        print(f"BEGIN {n}", flush=True)
        receipts = log.append(events)
        size = receipts[-1].index + 1
        # The line is ~200 KB: a kill can cut it, so it ends with a marker the parent checks.
        print("ACK", size, " ".join(r.entry_hash for r in receipts), "END", flush=True)
        n += batch


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
