"""Explicit error classes of the coordinator.

Each request error carries the gRPC status it maps to; ``str(error)`` is one sentence saying
what was wrong and how to fix it. Messages name nodes, DIDs and settings, never envelope bytes.
"""

from __future__ import annotations

import grpc


class CoordinatorError(Exception):
    """Base class of every error raised by ``coordinator``."""


class ConfigError(CoordinatorError):
    """The coordinator home or its coordinator.toml is missing, damaged or invalid."""


class RegistryError(CoordinatorError):
    """The registry database cannot be reached or holds inconsistent rows."""


class RequestError(CoordinatorError):
    """A caller's request is refused; ``code`` is the gRPC status to answer with."""

    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT


class InvalidRequest(RequestError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class UnknownNode(RequestError):
    code = grpc.StatusCode.NOT_FOUND


class RegistrationRefused(RequestError):
    """A registration is forged, stale, or takes a name another key holds."""

    code = grpc.StatusCode.PERMISSION_DENIED


class RegistrationConflict(RequestError):
    """Another registration of the same name or DID committed first (retry)."""

    code = grpc.StatusCode.ABORTED


class NodeCheckFailed(RequestError):
    """The node at the registered endpoint does not answer as the registering DID."""

    code = grpc.StatusCode.FAILED_PRECONDITION
