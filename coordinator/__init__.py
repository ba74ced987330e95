"""The coordinator: one network of agent nodes without reading their data.

It keeps the registry of nodes (``coordinator.registry``, SQLite or PostgreSQL), forwards
sealed envelopes it cannot open to the nodes named (``coordinator.router``), relays sealed
revocations and serves ``sovereign.v1.Coordinator`` (``coordinator.service``) with mutual TLS
toward nodes. It never imports sealing code: it is trusted for availability and routing only.
"""

# No other package imports the coordinator: it is reached over gRPC only
# (tests/test_public_names.py).
__all__: list[str] = []
