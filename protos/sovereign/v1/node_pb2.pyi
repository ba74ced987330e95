from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class NodeInfoRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class NodeInfoResponse(_message.Message):
    __slots__ = ("version", "document")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    version: int
    document: bytes
    def __init__(self, version: _Optional[int] = ..., document: _Optional[bytes] = ...) -> None: ...

class SealedRequest(_message.Message):
    __slots__ = ("version", "envelope", "key_binding")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    KEY_BINDING_FIELD_NUMBER: _ClassVar[int]
    version: int
    envelope: bytes
    key_binding: bytes
    def __init__(self, version: _Optional[int] = ..., envelope: _Optional[bytes] = ..., key_binding: _Optional[bytes] = ...) -> None: ...

class SealedResponse(_message.Message):
    __slots__ = ("version", "envelope")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    version: int
    envelope: bytes
    def __init__(self, version: _Optional[int] = ..., envelope: _Optional[bytes] = ...) -> None: ...
