"""Regenerate the committed Python code for every ``protos/sovereign/v1/*.proto``.

The import root is the repository root, so generated modules import each other as
``protos.sovereign.v1.x_pb2``. ``generate(out_dir)`` is also used by the drift test, which
compiles into a temporary folder and compares byte for byte.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "protos" / "sovereign" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Compile every proto into ``out_dir`` (mirroring ``protos/sovereign/v1``)."""
    sources = [str(p.relative_to(REPO)) for p in proto_files()]
    if not sources:
        return []
    well_known = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{REPO}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *sources,
        ]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    target = out_dir / "protos" / "sovereign" / "v1"
    return sorted(p for p in target.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            shutil.copyfile(path, PROTO_DIR / path.name)
            print(f"wrote {(PROTO_DIR / path.name).relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
