"""Review finding on the wire contract (issue 2, "Wire contract"): sealed payloads are
``bytes`` fields "whose envelope format is documented in the .proto comments".

``protos/sovereign/v1/node.proto`` documents only the ``intl`` envelope (NaCl box). The ``gm``
envelope of ``consent/envelope_gm.py`` (SM2-encrypted SM4 session key, signed once per session
with SM2, then SM4-GCM per message) is not described there, and no RPC says how a ``gm`` caller
opens or resumes a session. This test pins the missing documentation.
"""

from __future__ import annotations

from pathlib import Path

PROTO = Path(__file__).resolve().parents[2] / "protos" / "sovereign" / "v1" / "node.proto"


def _comments(text: str) -> str:
    return "\n".join(line.split("//", 1)[1] for line in text.splitlines() if "//" in line)


def test_node_proto_documents_both_envelope_profiles() -> None:
    comments = _comments(PROTO.read_text(encoding="utf-8"))
    assert "NaCl" in comments  # the intl envelope is documented
    for term in ("gm", "SM2", "SM4"):
        assert term in comments, f"node.proto does not document the gm envelope ({term})"
