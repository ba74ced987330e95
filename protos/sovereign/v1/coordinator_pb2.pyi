from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("version", "registration", "rotations")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_FIELD_NUMBER: _ClassVar[int]
    ROTATIONS_FIELD_NUMBER: _ClassVar[int]
    version: int
    registration: bytes
    rotations: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, version: _Optional[int] = ..., registration: _Optional[bytes] = ..., rotations: _Optional[_Iterable[bytes]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("version", "did", "name", "registered_at", "rotated")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    ROTATED_FIELD_NUMBER: _ClassVar[int]
    version: int
    did: str
    name: str
    registered_at: str
    rotated: bool
    def __init__(self, version: _Optional[int] = ..., did: _Optional[str] = ..., name: _Optional[str] = ..., registered_at: _Optional[str] = ..., rotated: _Optional[bool] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ("version", "dataset", "regions")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    version: int
    dataset: str
    regions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., dataset: _Optional[str] = ..., regions: _Optional[_Iterable[str]] = ...) -> None: ...

class NodeEntry(_message.Message):
    __slots__ = ("registration", "health", "last_contact", "last_error")
    REGISTRATION_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    LAST_CONTACT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    registration: bytes
    health: str
    last_contact: str
    last_error: str
    def __init__(self, registration: _Optional[bytes] = ..., health: _Optional[str] = ..., last_contact: _Optional[str] = ..., last_error: _Optional[str] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("version", "nodes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    version: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeEntry]
    def __init__(self, version: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeEntry, _Mapping]]] = ...) -> None: ...

class RouteTarget(_message.Message):
    __slots__ = ("node_did", "envelope", "key_binding")
    NODE_DID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    KEY_BINDING_FIELD_NUMBER: _ClassVar[int]
    node_did: str
    envelope: bytes
    key_binding: bytes
    def __init__(self, node_did: _Optional[str] = ..., envelope: _Optional[bytes] = ..., key_binding: _Optional[bytes] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("version", "method", "targets", "deadline_ms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    version: int
    method: str
    targets: _containers.RepeatedCompositeFieldContainer[RouteTarget]
    deadline_ms: int
    def __init__(self, version: _Optional[int] = ..., method: _Optional[str] = ..., targets: _Optional[_Iterable[_Union[RouteTarget, _Mapping]]] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class RouteResult(_message.Message):
    __slots__ = ("node_did", "outcome", "code", "message", "envelope", "elapsed_ms")
    NODE_DID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    node_did: str
    outcome: str
    code: str
    message: str
    envelope: bytes
    elapsed_ms: float
    def __init__(self, node_did: _Optional[str] = ..., outcome: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., envelope: _Optional[bytes] = ..., elapsed_ms: _Optional[float] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("version", "results")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    results: _containers.RepeatedCompositeFieldContainer[RouteResult]
    def __init__(self, version: _Optional[int] = ..., results: _Optional[_Iterable[_Union[RouteResult, _Mapping]]] = ...) -> None: ...

class RelayRevocationRequest(_message.Message):
    __slots__ = ("version", "targets")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    version: int
    targets: _containers.RepeatedCompositeFieldContainer[RouteTarget]
    def __init__(self, version: _Optional[int] = ..., targets: _Optional[_Iterable[_Union[RouteTarget, _Mapping]]] = ...) -> None: ...

class RelayResult(_message.Message):
    __slots__ = ("node_did", "delivered", "message", "envelope", "state")
    NODE_DID_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    node_did: str
    delivered: bool
    message: str
    envelope: bytes
    state: str
    def __init__(self, node_did: _Optional[str] = ..., delivered: _Optional[bool] = ..., message: _Optional[str] = ..., envelope: _Optional[bytes] = ..., state: _Optional[str] = ...) -> None: ...

class RelayRevocationResponse(_message.Message):
    __slots__ = ("version", "relay_id", "results")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RELAY_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    relay_id: str
    results: _containers.RepeatedCompositeFieldContainer[RelayResult]
    def __init__(self, version: _Optional[int] = ..., relay_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[RelayResult, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("version", "document")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    version: int
    document: bytes
    def __init__(self, version: _Optional[int] = ..., document: _Optional[bytes] = ...) -> None: ...
