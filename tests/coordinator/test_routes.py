"""The coordinator's routing snapshot (``Registry.routes``): a routed call reads no database,
yet a write of this process is seen at once, a node registered at another coordinator is
routable at once, and another coordinator's other writes are seen within ROUTES_MAX_AGE."""

from __future__ import annotations

from pathlib import Path

import pytest

from consent.identity import Identity
from consent.registration import issue_registration, verify_registration
from coordinator import registry as registry_module
from coordinator.registry import Registry

# Routing state only: no channel is opened in this test, so any certificate-shaped text does.
CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_routes_follow_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "registry.sqlite")
    here, other = Registry(path), Registry(path)  # two coordinators sharing one registry
    node = Identity.generate()
    statement = issue_registration(node, name="shop", endpoint="127.0.0.1:7001",
                                   region="eu-west", residency="on premises",
                                   datasets={"orders": ["transaction"]},
                                   tls_ca_pem=CA)
    try:
        assert here.routes([node.did]) == {}
        other.register(verify_registration(statement))
        assert here.routes([node.did])[node.did].registration.endpoint == "127.0.0.1:7001"

        monkeypatch.setattr(registry_module, "ROUTES_MAX_AGE", 3600.0)
        here.set_health(node.did, "unreachable", "connection refused")
        assert here.routes([node.did])[node.did].health == "unreachable"  # its own: at once
        other.set_health(node.did, "serving")
        assert here.routes([node.did])[node.did].health == "unreachable"  # the snapshot
        assert here.by_did([node.did])[node.did].health == "serving"  # the database
        monkeypatch.setattr(registry_module, "ROUTES_MAX_AGE", 0.0)
        assert here.routes([node.did])[node.did].health == "serving"  # once it is too old
    finally:
        here.close()
        other.close()
