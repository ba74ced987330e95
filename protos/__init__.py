"""The wire contract: ``.proto`` sources under ``sovereign/v1`` and their generated Python.

Generated modules import as ``protos.sovereign.v1.<name>_pb2``; regenerate them with
``make protos`` (``python -m protos.build``). ``tests/test_protos_drift.py`` fails when the
committed code is stale. ``protos.transport`` and ``protos.tls`` hold the gRPC/TLS plumbing
shared by every service.
"""
