from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Anchor(_message.Message):
    __slots__ = ("chain_id", "tx_hash", "block_number", "size", "root", "checkpoint", "consistency_proof")
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    TX_HASH_FIELD_NUMBER: _ClassVar[int]
    BLOCK_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_PROOF_FIELD_NUMBER: _ClassVar[int]
    chain_id: int
    tx_hash: str
    block_number: int
    size: int
    root: bytes
    checkpoint: str
    consistency_proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, chain_id: _Optional[int] = ..., tx_hash: _Optional[str] = ..., block_number: _Optional[int] = ..., size: _Optional[int] = ..., root: _Optional[bytes] = ..., checkpoint: _Optional[str] = ..., consistency_proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("version", "origin", "hash_algorithm", "index", "entry", "checkpoint", "inclusion_proof", "anchors")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    HASH_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    INCLUSION_PROOF_FIELD_NUMBER: _ClassVar[int]
    ANCHORS_FIELD_NUMBER: _ClassVar[int]
    version: int
    origin: str
    hash_algorithm: str
    index: int
    entry: bytes
    checkpoint: str
    inclusion_proof: _containers.RepeatedScalarFieldContainer[bytes]
    anchors: _containers.RepeatedCompositeFieldContainer[Anchor]
    def __init__(self, version: _Optional[int] = ..., origin: _Optional[str] = ..., hash_algorithm: _Optional[str] = ..., index: _Optional[int] = ..., entry: _Optional[bytes] = ..., checkpoint: _Optional[str] = ..., inclusion_proof: _Optional[_Iterable[bytes]] = ..., anchors: _Optional[_Iterable[_Union[Anchor, _Mapping]]] = ...) -> None: ...

class AppendRequest(_message.Message):
    __slots__ = ("version", "events")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    events: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, version: _Optional[int] = ..., events: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("version", "receipts")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    receipts: _containers.RepeatedCompositeFieldContainer[Receipt]
    def __init__(self, version: _Optional[int] = ..., receipts: _Optional[_Iterable[_Union[Receipt, _Mapping]]] = ...) -> None: ...

class GetReceiptRequest(_message.Message):
    __slots__ = ("version", "entry_hash", "with_anchors")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTRY_HASH_FIELD_NUMBER: _ClassVar[int]
    WITH_ANCHORS_FIELD_NUMBER: _ClassVar[int]
    version: int
    entry_hash: bytes
    with_anchors: bool
    def __init__(self, version: _Optional[int] = ..., entry_hash: _Optional[bytes] = ..., with_anchors: _Optional[bool] = ...) -> None: ...

class GetConsistencyProofRequest(_message.Message):
    __slots__ = ("version", "old_size", "new_size")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    NEW_SIZE_FIELD_NUMBER: _ClassVar[int]
    version: int
    old_size: int
    new_size: int
    def __init__(self, version: _Optional[int] = ..., old_size: _Optional[int] = ..., new_size: _Optional[int] = ...) -> None: ...

class ConsistencyProof(_message.Message):
    __slots__ = ("version", "origin", "hash_algorithm", "old_checkpoint", "new_checkpoint", "proof")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    HASH_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    OLD_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    NEW_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    version: int
    origin: str
    hash_algorithm: str
    old_checkpoint: str
    new_checkpoint: str
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, version: _Optional[int] = ..., origin: _Optional[str] = ..., hash_algorithm: _Optional[str] = ..., old_checkpoint: _Optional[str] = ..., new_checkpoint: _Optional[str] = ..., proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetLatestTreeHeadRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class TreeHead(_message.Message):
    __slots__ = ("version", "checkpoint", "size")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    version: int
    checkpoint: str
    size: int
    def __init__(self, version: _Optional[int] = ..., checkpoint: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class GetAnchorsRequest(_message.Message):
    __slots__ = ("version", "min_size")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    version: int
    min_size: int
    def __init__(self, version: _Optional[int] = ..., min_size: _Optional[int] = ...) -> None: ...

class GetAnchorsResponse(_message.Message):
    __slots__ = ("version", "anchors")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ANCHORS_FIELD_NUMBER: _ClassVar[int]
    version: int
    anchors: _containers.RepeatedCompositeFieldContainer[Anchor]
    def __init__(self, version: _Optional[int] = ..., anchors: _Optional[_Iterable[_Union[Anchor, _Mapping]]] = ...) -> None: ...

class GetLogKeyRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class LogKey(_message.Message):
    __slots__ = ("version", "origin", "hash_algorithm", "verifier_keys")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    HASH_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_KEYS_FIELD_NUMBER: _ClassVar[int]
    version: int
    origin: str
    hash_algorithm: str
    verifier_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., origin: _Optional[str] = ..., hash_algorithm: _Optional[str] = ..., verifier_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class FindAccessHeadsRequest(_message.Message):
    __slots__ = ("version", "subject_commitment", "after_index", "limit")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    AFTER_INDEX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    version: int
    subject_commitment: bytes
    after_index: int
    limit: int
    def __init__(self, version: _Optional[int] = ..., subject_commitment: _Optional[bytes] = ..., after_index: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class FindAccessHeadsResponse(_message.Message):
    __slots__ = ("version", "receipts", "more")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    version: int
    receipts: _containers.RepeatedCompositeFieldContainer[Receipt]
    more: bool
    def __init__(self, version: _Optional[int] = ..., receipts: _Optional[_Iterable[_Union[Receipt, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...
