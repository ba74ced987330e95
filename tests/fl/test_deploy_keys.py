"""SuperNode keys travel in the node's signed registration (fl.deploy, consent.registration),
and the Flower app and node config are written as Flower reads them."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from consent.identity import Identity
from consent.registration import RegistrationError, issue_registration, verify_registration
from fl.deploy import (
    RUN_CONFIG,
    FlowerKeyError,
    check_public_key,
    new_node_key,
    node_config_arg,
    public_key_of,
    public_line,
    write_app,
)
from protos.tls import create_ca


def _registration(key: str | None) -> dict[str, object]:
    return issue_registration(Identity.generate(), name="n", endpoint="127.0.0.1:1",
                              region="eu", residency="EU", datasets={},
                              tls_ca_pem=create_ca("n").cert_pem, flower_key=key)


def test_the_flower_key_is_signed_into_the_registration() -> None:
    private, public = new_node_key()
    assert public_key_of(private) == public and check_public_key(public) == public
    found = verify_registration(_registration(public))
    assert found.flower_key == public
    assert verify_registration(_registration(None)).flower_key is None
    # Swapping the key after signing breaks the signature.
    forged = {**_registration(public), "flower_key": new_node_key()[1]}
    with pytest.raises(RegistrationError, match="signature"):
        verify_registration(forged)


def test_keys_flower_cannot_use_are_refused() -> None:
    p256 = public_line(ec.generate_private_key(ec.SECP256R1()).public_key())
    for bad in (p256, "ssh-ed25519 AAAA", "ecdsa-sha2-nistp384 not-base64", 7):
        with pytest.raises(FlowerKeyError):
            check_public_key(bad)
    with pytest.raises(RegistrationError, match="nistp384"):
        _registration(p256)


def test_the_app_and_node_config_are_what_flower_reads(tmp_path: Path) -> None:
    project = tomllib.loads((write_app(tmp_path) / "pyproject.toml").read_text())
    app = project["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "coordinator.training:app",
                                 "clientapp": "agent_node.training:app"}
    assert app["config"] == RUN_CONFIG
    arg = node_config_arg({"home": "/srv/node's", "min-customers": 20})
    assert arg == "home=\"/srv/node's\" min-customers=20"
