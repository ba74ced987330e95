"""The wire contract: ``.proto`` sources under ``sovereign/v1`` and their generated Python.

Generated modules import as ``protos.sovereign.v1.<name>_pb2``; regenerate them with
``make protos`` (``python -m protos.build``). ``tests/test_protos_drift.py`` fails when the
committed code is stale. ``protos.transport`` and ``protos.tls`` hold the gRPC/TLS plumbing
shared by every service.
"""

# The modules other packages may import (tests/test_public_names.py).
__all__ = ["sovereign", "tls", "transport"]
