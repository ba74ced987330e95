"""The committed generated code must match what ``make protos`` produces from the sources."""

from __future__ import annotations

from pathlib import Path

from protos import build


def test_every_proto_has_committed_generated_code(tmp_path: Path) -> None:
    generated = build.generate(tmp_path)
    assert build.proto_files(), "no .proto sources found under protos/sovereign/v1"
    for fresh in generated:
        committed = build.PROTO_DIR / fresh.name
        assert committed.exists(), f"{committed.name} missing: run `make protos` and commit it"
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"{committed.name} is stale: run `make protos` and commit the result"
        )


def test_no_orphaned_generated_files(tmp_path: Path) -> None:
    expected = {p.name for p in build.generate(tmp_path)}
    present = {
        p.name for p in build.PROTO_DIR.iterdir() if p.name.endswith(build.GENERATED_SUFFIXES)
    }
    assert present <= expected, f"generated files without a .proto source: {present - expected}"
