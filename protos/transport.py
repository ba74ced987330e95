"""gRPC transport shared by every service: TLS servers with health and reflection.

Servers speak TLS only (optionally mutual TLS), expose the standard gRPC health-checking
service (grpc.health.v1) and server reflection, and cap message sizes so that an oversized
request is refused by the transport with RESOURCE_EXHAUSTED before any handler runs.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass
class RunningServer:
    """A started server and the port it is bound to (useful with port 0)."""

    server: grpc.Server
    port: int
    health: health.HealthServicer

    def stop(self, grace: float | None = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()


def _message_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def _server_options(max_message_bytes: int, reuse_port: bool) -> list[tuple[str, int]]:
    # gRPC turns SO_REUSEPORT on by default, which lets a second server start silently on a
    # port that is already served; only deliberate worker processes may share a port.
    return [*_message_options(max_message_bytes), ("grpc.so_reuseport", int(reuse_port))]


def serve(
    services: Callable[[grpc.Server], None],
    service_names: list[str],
    *,
    address: str,
    cert_pem: bytes,
    key_pem: bytes,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    client_ca_pem: bytes | None = None,
    max_workers: int = 16,
    reuse_port: bool = False,
) -> RunningServer:
    """Start a TLS gRPC server with ``services`` registered, plus health and reflection.

    ``service_names`` are the full names (``sovereign.v1.AgentNode``) reported SERVING by the
    health service and listed by reflection. With ``client_ca_pem`` clients must present a
    certificate from that CA (mutual TLS). ``reuse_port`` lets several worker processes
    serve one port; otherwise binding a port in use fails.
    """
    if not reuse_port:
        check_bindable(address)  # before gRPC's C core tries it and prints its own lines
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=_server_options(max_message_bytes, reuse_port),
    )
    services(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    credentials = grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=client_ca_pem,
        require_client_auth=client_ca_pem is not None,
    )
    try:
        port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"could not bind {address}: is the port already in use?")
    server.start()
    return RunningServer(server=server, port=port, health=health_servicer)


def check_bindable(address: str) -> None:
    """Raise ``OSError`` with one sentence if ``address`` (``host:port``) cannot be bound now:
    the port is taken or the host is not this machine's."""
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") else host
    if not port.isdigit() or int(port) == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host or "0.0.0.0", int(port)))
        except OSError as exc:
            reason = (exc.strerror or "cannot bind").lower()
            raise OSError(f"cannot listen on {address}: {reason}; choose another address or "
                          "port, or stop what uses it") from None


NODE_PORT = 7443
"""A node's port when an address names none (the port ``sov-node init`` listens on)."""

_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9.])?|\[[0-9A-Fa-f:.]+\]")


def canonical_address(address: str, *, default_port: int | None = None) -> str:
    """One spelling of a ``host:port`` a client dials, so one node is one address: the host
    lower-cased, ``localhost`` and IPv4-mapped IPv6 as their IPv4 loopback / address, IPv6
    compressed in brackets, the port without leading zeros (``LOCALHOST:07443`` ->
    ``127.0.0.1:7443``); a bare host name gets ``default_port`` when one is given. Anything
    not of that shape is returned stripped, for the caller's own check to refuse in words."""
    text = address.strip()
    if default_port is not None and _HOST_NAME.fullmatch(text):
        text = f"{text}:{default_port}"
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        return text
    host = host.lower()
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare == "localhost":
        return f"127.0.0.1:{int(port)}"
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return f"{host.rstrip('.')}:{int(port)}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return f"[{ip.compressed}]:{int(port)}"
    v4 = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else ip
    return f"{v4}:{int(port)}"


def node_address(address: str) -> str:
    """A node's address as every client of the node spells it (the wallet's Python API and
    CLI, ``sov-query --node``): :func:`canonical_address` with the node's port, NODE_PORT,
    when none is written (``Node.ACME.example`` -> ``node.acme.example:7443``)."""
    return canonical_address(address, default_port=NODE_PORT)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` at this moment, for a child process to bind (another
    process may take it in between: prefer port 0 where the server reports its port)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def reserve_shared_port(address: str) -> tuple[socket.socket, str]:
    """Bind (not listen) ``address`` with SO_REUSEPORT, resolving port 0 to a free port.

    Worker processes forked after this call can all ``serve(..., reuse_port=True)`` on the
    returned address; close the socket once they are serving. ``OSError`` or ``ValueError``
    if the address cannot be bound.
    """
    host, _, port = address.rpartition(":")
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((bare, int(port)))
    except (OSError, ValueError):
        sock.close()
        raise
    return sock, f"{host}:{sock.getsockname()[1]}"


def secure_channel(
    address: str,
    ca_pem: bytes,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    client_cert: tuple[bytes, bytes] | None = None,
) -> grpc.Channel:
    """A TLS channel that trusts only ``ca_pem`` (and presents ``client_cert`` for mutual TLS)."""
    key_pem, cert_pem = client_cert if client_cert else (None, None)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )
    return grpc.secure_channel(address, credentials, options=_message_options(max_message_bytes))
