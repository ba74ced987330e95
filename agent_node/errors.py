"""Explicit error classes of the agent node.

Each request error carries the gRPC status code it maps to (gRPC status codes, grpc/doc
statuscodes.md), and ``str(error)`` is one sentence saying what was wrong and how to fix it.
Messages name datasets, columns, grant ids and operators, never a customer value or a secret.
"""

from __future__ import annotations

from typing import Any

import grpc


class AgentNodeError(Exception):
    """Base class of every error raised by ``agent_node``."""


class ConfigError(AgentNodeError):
    """The node home or its node.toml is missing, damaged or invalid."""


class DataMapError(ConfigError):
    """The data map TOML is invalid; the message names the offending key."""


class SourceError(AgentNodeError):
    """A data source cannot be read (missing file, unreachable database, missing column)."""


class VaultError(AgentNodeError):
    """The vault cannot be opened or its contents are inconsistent."""


class RequestError(AgentNodeError):
    """A caller's request is refused; ``code`` is the gRPC status to answer with."""

    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
    #: short machine-readable reason recorded in the access log (never customer data)
    reason: str = "invalid-request"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        #: set when the request was refused after its envelope opened: who sent it and the
        #: query it carried, so the refusal can be written to the access log
        self.caller: str | None = None
        self.query: Any = None


class InvalidRequest(RequestError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "invalid-request"


class Unauthenticated(RequestError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "unauthenticated"


class PermissionDenied(RequestError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "permission-denied"


class PreconditionFailed(RequestError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "failed-precondition"


class BudgetExhausted(RequestError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "budget-exhausted"


class NotFound(RequestError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "not-found"


class AlreadyExists(RequestError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "already-exists"
