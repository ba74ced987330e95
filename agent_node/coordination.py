"""The node's side of joining a coordinator: sign a NodeRegistration and send it.

The statement (``consent.registration``) names the node's coordinator-facing endpoint (the
mutual-TLS port of node.toml ``coordinator_listen``), its region and residency, the datasets of
its data map with the scope tiers their columns use, and its TLS CA, so the coordinator can
dial it. A name moves to a new node key only along the rotations the previous keys signed
(``sov-node rotate-key``), which travel with every registration.
"""

from __future__ import annotations

import grpc

from agent_node.errors import ConfigError
from agent_node.home import NodeHome, rotations
from consent.canonical import canonicalize
from consent.registration import issue_registration
from protos.sovereign.v1 import coordinator_pb2, coordinator_pb2_grpc
from protos.transport import secure_channel


class RegistrationFailed(ConfigError):
    """The coordinator refused the registration or could not be reached."""


def offered_datasets(home: NodeHome) -> dict[str, list[str]]:
    """Each dataset of the data map with the scope tiers its columns belong to."""
    return {name: sorted({c.scope for c in ds.columns.values()})
            for name, ds in home.datamap().datasets.items()}


def registration_statement(home: NodeHome, endpoint: str | None = None) -> dict[str, object]:
    endpoint = endpoint or home.config.coordinator_listen
    if not endpoint:
        raise ConfigError("the node has no coordinator port: set node.toml coordinator_listen "
                          "and coordinator_ca (the coordinator's CA), or pass --endpoint")
    from agent_node.flnode import node_key  # the SuperNode key the coordinator will admit

    config = home.config
    return issue_registration(home.identity, name=config.name, endpoint=endpoint,
                              region=config.region, residency=config.residency,
                              datasets=offered_datasets(home), tls_ca_pem=home.ca_pem(),
                              flower_key=node_key(home.path)[1])


def register(home: NodeHome, coordinator: str, coordinator_ca: bytes, *,
             endpoint: str | None = None,
             timeout: float = 15.0) -> coordinator_pb2.RegisterResponse:
    """Register ``home`` with the coordinator at ``coordinator``, with the node's key
    rotations (so a name registered under an older key moves to this one)."""
    statement = registration_statement(home, endpoint)
    chain = [canonicalize(s) for s in rotations(home.path)]
    channel = secure_channel(coordinator, coordinator_ca)
    try:
        return coordinator_pb2_grpc.CoordinatorStub(channel).Register(
            coordinator_pb2.RegisterRequest(version=1, registration=canonicalize(statement),
                                            rotations=chain), timeout=timeout)
    except grpc.RpcError as exc:
        raise RegistrationFailed(f"the coordinator at {coordinator} refused the registration "
                                 f"({exc.code().name}): {exc.details()}") from None
    finally:
        channel.close()
