"""protos.transport: a served port is not silently shared unless worker processes ask for it."""

from __future__ import annotations

import pytest

from protos.tls import create_ca, issue_server_certificate
from protos.transport import serve


def _nothing(_server: object) -> None:
    return None


def test_a_port_in_use_is_refused_unless_reuse_is_asked() -> None:
    leaf = issue_server_certificate(create_ca("test CA"), ["localhost"])
    first = serve(_nothing, [], address="127.0.0.1:0", cert_pem=leaf.cert_pem,
                  key_pem=leaf.key_pem)
    try:
        with pytest.raises(OSError, match="already in use"):
            serve(_nothing, [], address=f"127.0.0.1:{first.port}", cert_pem=leaf.cert_pem,
                  key_pem=leaf.key_pem)
    finally:
        first.stop(0)
    shared = serve(_nothing, [], address="127.0.0.1:0", cert_pem=leaf.cert_pem,
                   key_pem=leaf.key_pem, reuse_port=True)
    try:
        second = serve(_nothing, [], address=f"127.0.0.1:{shared.port}",
                       cert_pem=leaf.cert_pem, key_pem=leaf.key_pem, reuse_port=True)
        assert second.port == shared.port
        second.stop(0)
    finally:
        shared.stop(0)
