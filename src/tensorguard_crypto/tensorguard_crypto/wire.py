"""Signed msgpack wire records: updates, round configs, models and the aggregator <-> key service exchange.

Every record is a frozen dataclass whose fields each carry a type check and a limit. On the wire a
record is the msgpack map {"schema": SCHEMA_VERSION, "kind": <record name>, "record": {fields in
declaration order}}. Decoding is strict: the total size is checked first, then a header walk
(no allocation) admits only canonical, minimal msgpack encodings whose declared lengths are backed
by real bytes and whose decoded footprint fits the cap, and only then does the msgpack unpacker run
(with hard per-object limits as a second fence). The field set and order must match exactly and
every value is checked, so two different byte strings never decode to the same record. Any failure
raises a subclass of `WireFormatError` with a `reason` code.

Signatures (Ed25519, see identity.py) cover the canonical bytes: the same map without the signature.
For updates, the bodies and key ciphertext enter the signed bytes as SHA-256 digests, so the key
service can verify a robot's signature from a `ContributionRecord` without ever seeing its bodies.
An update's bodies travel sealed to the round's aggregator transport key (hybrid.py) and its key
ciphertext is encrypted under the round's key-service lattice key, which the key service announces
in a signed `RoundKeyAnnouncement` carried inside the round config.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import msgpack

from .identity import ID_PATTERN, MAX_ID_CHARS, SIGNATURE_BYTES, Signer, verify_signature

SCHEMA_VERSION = 2
DEFAULT_MAX_PACKAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_MODEL_BYTES = 256 * 1024 * 1024
SEED_BYTES = 32
DIGEST_BYTES = 32
MAX_U63 = 2 ** 63 - 1
MAX_UNIX_SECONDS = float(2 ** 40)
MAX_COORDINATES = 2 ** 40
MAX_EXPERTS = 4096
MAX_CONTRIBUTIONS = 100_000
MAX_BODY_CHUNKS = 2 ** 20
MAX_BODIES_BYTES = 256 * 1024 * 1024
MAX_KEY_CIPHERTEXT_BYTES = 16 * 1024 * 1024
MAX_SERVICE_PUBLIC_KEY_BYTES = 8 * 1024 * 1024
MAX_ROUND_KEY_BYTES = MAX_SERVICE_PUBLIC_KEY_BYTES + 4096
TRANSPORT_KEY_BYTES = 32
MAX_PARAMETERS_BYTES = 1024 * 1024 * 1024
MAX_SITES = 1024
MAX_SITE_ROBOTS = 4096
# Hard limits handed to the msgpack unpacker (checked before it allocates a container or string).
_MAX_WIRE_STR = 4 * MAX_ID_CHARS
_MAX_WIRE_ARRAY = MAX_CONTRIBUTIONS
_MAX_WIRE_MAP = 32
_WORD_PATTERN = re.compile(r'[a-z][a-z0-9_]*')
_ENVELOPE_KEYS = ['schema', 'kind', 'record']


class WireFormatError(Exception):
    """Base of every wire decoding/validation failure; `reason` is a machine-readable code."""

    reason = 'wire_format_error'


class PackageTooLarge(WireFormatError):
    """The serialized record exceeds the size cap (checked before decoding)."""

    reason = 'package_too_large'


class MalformedEncoding(WireFormatError):
    """The bytes are not a single well-formed msgpack object within the unpacker limits."""

    reason = 'malformed_msgpack'


class UnsupportedSchemaVersion(WireFormatError):
    """The envelope names a schema version this code does not speak."""

    reason = 'unsupported_schema_version'


class WrongRecordKind(WireFormatError):
    """The envelope holds a different kind of record than the one requested."""

    reason = 'wrong_record_kind'


class FieldSetMismatch(WireFormatError):
    """A record map has missing, unknown or reordered fields."""

    reason = 'field_set_mismatch'


class FieldTypeError(WireFormatError):
    """A field has the wrong type."""

    reason = 'field_type'


class FieldTooLarge(WireFormatError):
    """A field exceeds its size limit (bytes, characters or items)."""

    reason = 'field_too_large'


class FieldValueError(WireFormatError):
    """A field has the right type but a value outside its allowed range or pattern."""

    reason = 'field_value'


class UnsignedRecord(WireFormatError):
    """A record on the wire carries no signature."""

    reason = 'unsigned_record'


def _type_name(value: Any) -> str:
    return type(value).__name__


@dataclass(frozen=True)
class _Int:
    lo: int = 0
    hi: int = MAX_U63

    def check(self, path: str, value: Any) -> int:
        if type(value) is not int:
            raise FieldTypeError(f'{path}: expected int, got {_type_name(value)}')
        if not self.lo <= value <= self.hi:
            raise FieldValueError(f'{path}: {value} outside [{self.lo}, {self.hi}]')
        return value

    def encode(self, value: int) -> int:
        return value

    def decode(self, path: str, value: Any) -> int:
        return self.check(path, value)


@dataclass(frozen=True)
class _Float:
    lo: float = 0.0
    hi: float = 1e30
    strictly_positive: bool = False

    def check(self, path: str, value: Any) -> float:
        if type(value) is int and not isinstance(value, bool):
            value = float(value)
        if type(value) is not float:
            raise FieldTypeError(f'{path}: expected float, got {_type_name(value)}')
        if not math.isfinite(value) or not self.lo <= value <= self.hi:
            raise FieldValueError(f'{path}: value outside [{self.lo}, {self.hi}] or not finite')
        if self.strictly_positive and value <= 0.0:
            raise FieldValueError(f'{path}: must be > 0')
        return value

    def encode(self, value: float) -> float:
        return value

    def decode(self, path: str, value: Any) -> float:
        if type(value) is not float:
            raise FieldTypeError(f'{path}: expected float on the wire, got {_type_name(value)}')
        return self.check(path, value)


@dataclass(frozen=True)
class _Bytes:
    min_len: int = 0
    max_len: int = 0
    allowed_lengths: tuple[int, ...] = ()

    def check(self, path: str, value: Any) -> bytes:
        if type(value) is not bytes:
            raise FieldTypeError(f'{path}: expected bytes, got {_type_name(value)}')
        if len(value) > self.max_len:
            raise FieldTooLarge(f'{path}: {len(value)} bytes exceeds the limit of {self.max_len}')
        if len(value) < self.min_len or (self.allowed_lengths and len(value) not in self.allowed_lengths):
            raise FieldValueError(f'{path}: length {len(value)} is not allowed')
        return value

    def encode(self, value: bytes) -> bytes:
        return value

    def decode(self, path: str, value: Any) -> bytes:
        return self.check(path, value)


@dataclass(frozen=True)
class _Str:
    max_chars: int = MAX_ID_CHARS
    pattern: re.Pattern[str] = ID_PATTERN

    def check(self, path: str, value: Any) -> str:
        if type(value) is not str:
            raise FieldTypeError(f'{path}: expected str, got {_type_name(value)}')
        if len(value) > self.max_chars:
            raise FieldTooLarge(f'{path}: {len(value)} characters exceeds the limit of {self.max_chars}')
        if not self.pattern.fullmatch(value):
            raise FieldValueError(f'{path}: does not match {self.pattern.pattern}')
        return value

    def encode(self, value: str) -> str:
        return value

    def decode(self, path: str, value: Any) -> str:
        return self.check(path, value)


@dataclass(frozen=True)
class _List:
    item: Any
    max_items: int

    def check(self, path: str, value: Any) -> tuple:
        if type(value) not in (list, tuple):
            raise FieldTypeError(f'{path}: expected a list, got {_type_name(value)}')
        if len(value) > self.max_items:
            raise FieldTooLarge(f'{path}: {len(value)} items exceeds the limit of {self.max_items}')
        return tuple(self.item.check(f'{path}[{i}]', v) for i, v in enumerate(value))

    def encode(self, value: tuple) -> list:
        return [self.item.encode(v) for v in value]

    def decode(self, path: str, value: Any) -> tuple:
        if type(value) is not list:
            raise FieldTypeError(f'{path}: expected a list, got {_type_name(value)}')
        if len(value) > self.max_items:
            raise FieldTooLarge(f'{path}: {len(value)} items exceeds the limit of {self.max_items}')
        return tuple(self.item.decode(f'{path}[{i}]', v) for i, v in enumerate(value))


@dataclass(frozen=True)
class _Nested:
    record_type: type

    def check(self, path: str, value: Any) -> Any:
        if type(value) is not self.record_type:
            raise FieldTypeError(f'{path}: expected {self.record_type.__name__}, got {_type_name(value)}')
        return value

    def encode(self, value: Any) -> dict:
        return value.to_wire()

    def decode(self, path: str, value: Any) -> Any:
        return self.record_type.from_wire(path, value)


def _f(spec: Any, **kwargs: Any) -> Any:
    return field(metadata={'spec': spec}, **kwargs)


R = TypeVar('R', bound='WireRecord')


class WireRecord:
    """Base of all records: validates every field on construction and maps to/from wire maps."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            path = f'{type(self).__name__}.{f.name}'
            object.__setattr__(self, f.name, f.metadata['spec'].check(path, getattr(self, f.name)))

    def to_wire(self) -> dict:
        """The record as a msgpack-ready map with fields in declaration order."""
        return {f.name: f.metadata['spec'].encode(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_wire(cls: type[R], path: str, obj: Any) -> R:
        """Strictly rebuild a record from a decoded msgpack map (exact field set and order)."""
        if type(obj) is not _MapPairs:
            raise FieldTypeError(f'{path}: expected a map, got {_type_name(obj)}')
        specs = {f.name: f.metadata['spec'] for f in dataclasses.fields(cls)}
        if [key for key, _ in obj] != list(specs):
            missing = sorted(set(specs) - {key for key, _ in obj})
            raise FieldSetMismatch(f'{path}: field set differs (missing {missing[:5]}, {len(obj)} present)')
        return cls(**{name: specs[name].decode(f'{path}.{name}', value) for name, value in obj})


@dataclass(frozen=True)
class ExpertSlice(WireRecord):
    """Where one expert's coordinates sit inside the packed bodies."""

    expert_id: int = _f(_Int(0, MAX_EXPERTS - 1))
    num_coordinates: int = _f(_Int(0, MAX_COORDINATES))
    offset: int = _f(_Int(0, MAX_COORDINATES))


@dataclass(frozen=True)
class SafetyStats(WireRecord):
    """Per-update privacy and clipping statistics the robot reports alongside its ciphertexts."""

    dp_epsilon_consumed: float = _f(_Float(0.0, 1e6))
    dp_delta: float = _f(_Float(0.0, 1.0))
    clip_fraction: float = _f(_Float(0.0, 1.0))
    update_norm_before_clip: float = _f(_Float(0.0, 1e30))
    num_episodes: int = _f(_Int(0, 2 ** 32))
    num_frames: int = _f(_Int(0, 2 ** 40))


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


_OBJECT_OVERHEAD_BYTES = 256
_MAX_DEPTH = 8
_FLOAT64 = 0xcb
_UINT_MIN = {0xcc: (1, 128), 0xcd: (2, 1 << 8), 0xce: (4, 1 << 16), 0xcf: (8, 1 << 32)}
_INT_MAX = {0xd0: (1, -33), 0xd1: (2, -129), 0xd2: (4, -(1 << 15) - 1), 0xd3: (8, -(1 << 31) - 1)}
_LENGTH_MIN = {0xc4: (1, 0), 0xc5: (2, 1 << 8), 0xc6: (4, 1 << 16),
               0xd9: (1, 32), 0xda: (2, 1 << 8), 0xdb: (4, 1 << 16)}
_CONTAINER_MIN = {0xdc: (2, 1, 16), 0xdd: (4, 1, 1 << 16), 0xde: (2, 2, 16), 0xdf: (4, 2, 1 << 16)}


def _scan(data: memoryview, max_bytes: int) -> None:
    """Walk the msgpack headers without decoding: canonical (minimal) encodings only, no ext or
    float32, every declared count backed by enough remaining bytes, bounded depth, and an upper
    estimate of the decoded footprint (payload bytes + 256 bytes per object) within `max_bytes`,
    checked as it goes so the walk itself is bounded too. Raises before the unpacker allocates."""
    size, pos, objects, payload = len(data), 0, 0, 0
    pending = [1]
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        if pos >= size:
            raise MalformedEncoding('truncated msgpack data')
        tag = data[pos]
        pos += 1
        objects += 1
        if payload + _OBJECT_OVERHEAD_BYTES * objects > max_bytes:
            raise PackageTooLarge(f'decoded size would exceed the cap of {max_bytes} bytes')
        items = 0
        if tag <= 0x7f or tag >= 0xe0 or tag in (0xc0, 0xc2, 0xc3):
            continue
        if tag <= 0x8f:
            items = 2 * (tag & 0x0f)
        elif tag <= 0x9f:
            items = tag & 0x0f
        elif tag <= 0xbf:
            payload += tag & 0x1f
            pos += tag & 0x1f
        elif tag == _FLOAT64:
            pos += 8
        elif tag in _UINT_MIN or tag in _INT_MAX:
            width, bound = _UINT_MIN.get(tag) or _INT_MAX[tag]
            value = int.from_bytes(data[pos:pos + width], 'big', signed=tag in _INT_MAX)
            if len(data[pos:pos + width]) != width or (value < bound if tag in _UINT_MIN else value > bound):
                raise MalformedEncoding('integer not in its minimal encoding')
            pos += width
        elif tag in _LENGTH_MIN:
            width, minimum = _LENGTH_MIN[tag]
            length = int.from_bytes(data[pos:pos + width], 'big')
            if length < minimum:
                raise MalformedEncoding('string/bin length not in its minimal encoding')
            payload += length
            pos += width + length
        elif tag in _CONTAINER_MIN:
            width, per_entry, minimum = _CONTAINER_MIN[tag]
            count = int.from_bytes(data[pos:pos + width], 'big')
            if count < minimum:
                raise MalformedEncoding('container size not in its minimal encoding')
            items = per_entry * count
            pos += width
        else:
            raise MalformedEncoding(f'msgpack type 0x{tag:02x} is not allowed')
        if pos > size or items > size - pos:
            raise MalformedEncoding('declared length runs past the end of the data')
        if payload > max_bytes:
            raise PackageTooLarge(f'decoded size would exceed the cap of {max_bytes} bytes')
        if items:
            if len(pending) > _MAX_DEPTH:
                raise MalformedEncoding(f'nesting deeper than {_MAX_DEPTH}')
            pending.append(items)
    if pos != size:
        raise MalformedEncoding('trailing bytes after the record')


def _unpack(data: Any, max_bytes: int) -> Any:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireFormatError(f'expected bytes, got {_type_name(data)}')
    try:
        view = memoryview(data).cast('B')
    except TypeError:
        raise WireFormatError('expected a contiguous byte buffer') from None
    if len(view) > max_bytes:
        raise PackageTooLarge(f'{len(view)} bytes exceeds the cap of {max_bytes}')
    _scan(view, max_bytes)
    try:
        return msgpack.unpackb(
            view, raw=False, strict_map_key=True, use_list=True, object_pairs_hook=_MapPairs,
            max_bin_len=len(view), max_str_len=_MAX_WIRE_STR, max_array_len=_MAX_WIRE_ARRAY,
            max_map_len=_MAX_WIRE_MAP, max_ext_len=0)
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as error:
        raise MalformedEncoding(f'not a valid msgpack record ({type(error).__name__})') from None


class _MapPairs(list):
    """A decoded msgpack map kept as its list of (key, value) pairs, so duplicate keys stay visible."""


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, use_single_float=False, strict_types=True)


class SignedRecord(WireRecord):
    """A top-level record with a trailing Ed25519 `signature` over its canonical bytes."""

    DEFAULT_MAX_BYTES: ClassVar[int] = DEFAULT_MAX_PACKAGE_BYTES

    def signed_view(self) -> dict:
        """The map that is signed: the wire map without the signature."""
        view = self.to_wire()
        del view['signature']
        return view

    def canonical_bytes(self) -> bytes:
        """Deterministic bytes the signature covers (see docs/identity-and-keys.md for the layout)."""
        return _pack({'schema': SCHEMA_VERSION, 'kind': self.signing_kind(), 'record': self.signed_view()})

    @classmethod
    def signing_kind(cls) -> str:
        """Record name used as the envelope kind of the signed bytes and the signature context."""
        return cls.__name__

    def signed_by(self: R, signer: Signer) -> R:
        """A copy carrying the signer's signature over the canonical bytes."""
        signature = signer.sign(self.signing_kind().encode(), self.canonical_bytes())
        return dataclasses.replace(self, signature=signature)

    def verify_signature(self, public_key: bytes) -> None:
        """Raise `identity.SignatureInvalid` unless the signature verifies under `public_key`."""
        verify_signature(public_key, self.signing_kind().encode(), self.canonical_bytes(), self.signature)

    def serialize(self) -> bytes:
        """Canonical msgpack bytes of the whole record, signature included."""
        return _pack({'schema': SCHEMA_VERSION, 'kind': type(self).__name__, 'record': self.to_wire()})

    @classmethod
    def deserialize(cls: type[R], data: bytes, max_bytes: int | None = None) -> R:
        """Strictly decode a signed record; raises only `WireFormatError` subclasses."""
        envelope = _unpack(data, cls.DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)
        if type(envelope) is not _MapPairs or [key for key, _ in envelope] != _ENVELOPE_KEYS:
            raise FieldSetMismatch('envelope must be a map with keys schema, kind, record')
        (_, schema), (_, kind), (_, body) = envelope
        if type(schema) is not int or schema != SCHEMA_VERSION:
            raise UnsupportedSchemaVersion(f'schema version must be {SCHEMA_VERSION}')
        if kind != cls.__name__:
            raise WrongRecordKind(f'expected a {cls.__name__}')
        record = cls.from_wire(cls.__name__, body)
        if len(record.signature) != SIGNATURE_BYTES:
            raise UnsignedRecord(f'{cls.__name__} carries no signature')
        return record


def _signature_field() -> Any:
    return _f(_Bytes(0, SIGNATURE_BYTES, (0, SIGNATURE_BYTES)), default=b'')


@dataclass(frozen=True)
class UpdateHeader(WireRecord):
    """The fields an update and its bodiless manifest record share (in this order, first on the wire)."""

    robot_id: str = _f(_Str())
    round_id: int = _f(_Int())
    round_seed: bytes = _f(_Bytes(SEED_BYTES, SEED_BYTES))
    config_digest: bytes = _f(_Bytes(DIGEST_BYTES, DIGEST_BYTES))
    model_version: int = _f(_Int())
    created_at: float = _f(_Float(0.0, MAX_UNIX_SECONDS))
    body_chunks: int = _f(_Int(0, MAX_BODY_CHUNKS))
    expert_metadata: tuple[ExpertSlice, ...] = _f(_List(_Nested(ExpertSlice), MAX_EXPERTS))
    safety_stats: SafetyStats = _f(_Nested(SafetyStats))

    def header(self) -> dict:
        """The shared fields by name (to build the other record kind from this one)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(UpdateHeader)}


@dataclass(frozen=True)
class UpdatePackage(UpdateHeader, SignedRecord):
    """One robot's encrypted contribution to one round, signed by the robot."""

    bodies: bytes = _f(_Bytes(0, MAX_BODIES_BYTES))  # lattice bodies sealed to the round's transport key
    key_ciphertext: bytes = _f(_Bytes(0, MAX_KEY_CIPHERTEXT_BYTES))
    signature: bytes = _signature_field()

    def signed_view(self) -> dict:
        """Header fields, then SHA-256 of the bodies and of the key ciphertext."""
        view = self.to_wire()
        for name in ('signature', 'bodies', 'key_ciphertext'):
            del view[name]
        view['bodies_sha256'] = _digest(self.bodies)
        view['key_ciphertext_sha256'] = _digest(self.key_ciphertext)
        return view

    def contribution(self) -> 'ContributionRecord':
        """The same signed contribution without its bodies, for the key service's manifest."""
        return ContributionRecord(**self.header(), bodies_sha256=_digest(self.bodies),
                                  key_ciphertext=self.key_ciphertext, signature=self.signature)


@dataclass(frozen=True)
class ContributionRecord(UpdateHeader):
    """An update without its bodies (their digest instead); verifies with the robot's update signature."""

    bodies_sha256: bytes = _f(_Bytes(DIGEST_BYTES, DIGEST_BYTES))
    key_ciphertext: bytes = _f(_Bytes(0, MAX_KEY_CIPHERTEXT_BYTES))
    signature: bytes = _f(_Bytes(SIGNATURE_BYTES, SIGNATURE_BYTES))

    def canonical_bytes(self) -> bytes:
        """Exactly the bytes the robot signed for the full `UpdatePackage`."""
        view = self.to_wire()
        for name in ('signature', 'bodies_sha256', 'key_ciphertext'):
            del view[name]
        view['bodies_sha256'] = self.bodies_sha256
        view['key_ciphertext_sha256'] = _digest(self.key_ciphertext)
        return _pack({'schema': SCHEMA_VERSION, 'kind': UpdatePackage.signing_kind(), 'record': view})

    def verify_signature(self, public_key: bytes) -> None:
        """Raise `identity.SignatureInvalid` unless the robot's update signature verifies."""
        verify_signature(public_key, UpdatePackage.signing_kind().encode(), self.canonical_bytes(), self.signature)


@dataclass(frozen=True)
class SiteAggregatorEntry(WireRecord):
    """One site whose gateway sums its robots' bodies (site aggregation, docs/site-aggregation.md):
    the robots it serves, the X25519 key they seal their bodies to and the identity that signs its sums."""

    site_id: str = _f(_Str())
    signer_key_id: str = _f(_Str())
    seal_key: bytes = _f(_Bytes(TRANSPORT_KEY_BYTES, TRANSPORT_KEY_BYTES))
    robots: tuple[str, ...] = _f(_List(_Str(), MAX_SITE_ROBOTS))


@dataclass(frozen=True)
class RoundConfigPackage(SignedRecord):
    """The server's signed description of one round; updates bind its `config_digest()`."""

    round_id: int = _f(_Int())
    round_seed: bytes = _f(_Bytes(SEED_BYTES, SEED_BYTES))
    model_version: int = _f(_Int())
    num_coordinates: int = _f(_Int(1, MAX_COORDINATES))
    total_coordinates: int = _f(_Int(1, MAX_COORDINATES))
    num_experts: int = _f(_Int(1, MAX_EXPERTS))
    clipping_norm: float = _f(_Float(0.0, 1e30, strictly_positive=True))
    noise_mu: float = _f(_Float(0.0, 1e30))
    scale: float = _f(_Float(0.0, 1e30, strictly_positive=True))
    plaintext_bits: int = _f(_Int(1, 64))
    min_clients: int = _f(_Int(1, MAX_CONTRIBUTIONS))
    security_level: int = _f(_Int(0, 1024))
    ring_degree: int = _f(_Int(1, 2 ** 17))
    modulus_bits: int = _f(_Int(1, 4096))
    deadline: float = _f(_Float(0.0, MAX_UNIX_SECONDS))
    quorum: int = _f(_Int(1, MAX_CONTRIBUTIONS))
    round_key: bytes = _f(_Bytes(0, MAX_ROUND_KEY_BYTES))
    aggregator_transport_key: bytes = _f(_Bytes(TRANSPORT_KEY_BYTES, TRANSPORT_KEY_BYTES))
    key_service_key_id: str = _f(_Str())
    aggregator_key_id: str = _f(_Str())
    signer_key_id: str = _f(_Str())
    created_at: float = _f(_Float(0.0, MAX_UNIX_SECONDS))
    # The aggregation strategy's name (tensorguard_learning.aggregation): it fixes the update layout.
    aggregation_strategy: str = _f(_Str(), default='expert_driven')
    # Sites whose gateways sum their robots' bodies this round (empty: site aggregation is off).
    site_aggregators: tuple[SiteAggregatorEntry, ...] = _f(_List(_Nested(SiteAggregatorEntry), MAX_SITES),
                                                            default=())
    signature: bytes = _signature_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_coordinates > self.total_coordinates:
            raise FieldValueError('RoundConfigPackage.num_coordinates exceeds total_coordinates')
        if self.ring_degree & (self.ring_degree - 1):
            raise FieldValueError('RoundConfigPackage.ring_degree must be a power of two')
        sites = [entry.site_id for entry in self.site_aggregators]
        robots = [robot for entry in self.site_aggregators for robot in entry.robots]
        if len(set(sites)) != len(sites) or len(set(robots)) != len(robots):
            raise FieldValueError('RoundConfigPackage.site_aggregators names a site or a robot twice')

    def site_of(self, robot_id: str) -> SiteAggregatorEntry | None:
        """The site aggregator this round assigns `robot_id` to, or None (it sends to the aggregator)."""
        return next((entry for entry in self.site_aggregators if robot_id in entry.robots), None)

    def site(self, site_id: str) -> SiteAggregatorEntry | None:
        """The entry of `site_id`, or None if the round names no such site aggregator."""
        return next((entry for entry in self.site_aggregators if entry.site_id == site_id), None)

    def config_digest(self) -> bytes:
        """SHA-256 of the canonical (unsigned) bytes; every update of the round binds it."""
        return _digest(self.canonical_bytes())


@dataclass(frozen=True)
class RoundKeyAnnouncement(SignedRecord):
    """The key service's lattice public key for one round, signed by its identity.

    The matching secret exists only for this round and is destroyed after the round's single
    decryption; robots check this signature against the key-service identity they pin, so an
    aggregator cannot substitute a key of its own. Carried serialized in `RoundConfigPackage.round_key`.
    """

    round_id: int = _f(_Int())
    security_level: int = _f(_Int(0, 1024))
    ring_degree: int = _f(_Int(1, 2 ** 17))
    modulus_bits: int = _f(_Int(1, 4096))
    plaintext_bits: int = _f(_Int(1, 64))
    public_key: bytes = _f(_Bytes(1, MAX_SERVICE_PUBLIC_KEY_BYTES))
    signer_key_id: str = _f(_Str())
    created_at: float = _f(_Float(0.0, MAX_UNIX_SECONDS))
    signature: bytes = _signature_field()


@dataclass(frozen=True)
class ModelPackage(SignedRecord):
    """A versioned model (opaque parameter bytes) published by the server after the gate."""

    DEFAULT_MAX_BYTES: ClassVar[int] = DEFAULT_MAX_MODEL_BYTES

    model_version: int = _f(_Int())
    parent_version: int = _f(_Int())
    round_id: int = _f(_Int())
    parameters: bytes = _f(_Bytes(0, MAX_PARAMETERS_BYTES))
    parameters_sha256: bytes = _f(_Bytes(DIGEST_BYTES, DIGEST_BYTES))
    gate_decision: str = _f(_Str(32, _WORD_PATTERN))
    signer_key_id: str = _f(_Str())
    created_at: float = _f(_Float(0.0, MAX_UNIX_SECONDS))
    signature: bytes = _signature_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        if _digest(self.parameters) != self.parameters_sha256:
            raise FieldValueError('ModelPackage.parameters_sha256 does not match the parameters')


@dataclass(frozen=True)
class OutcomeReport(SignedRecord):
    """A robot's running tally of autonomous episodes under one model version, signed by the robot.

    Counts only (no observations, no actions, no task names): what a canary decision needs. The
    counts are cumulative since the robot first ran `model_version`, and `sequence` increases with
    every report the robot signs, so a lost report is superseded by the next and a replayed one is
    recognised (docs/canary.md says what the counts reveal).
    """

    DEFAULT_MAX_BYTES: ClassVar[int] = 64 * 1024

    robot_id: str = _f(_Str())
    sequence: int = _f(_Int())
    model_version: int = _f(_Int())
    episodes: int = _f(_Int(0, 2 ** 40))
    successes: int = _f(_Int(0, 2 ** 40))
    created_at: float = _f(_Float(0.0, MAX_UNIX_SECONDS))
    signature: bytes = _signature_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.successes > self.episodes:
            raise FieldValueError('OutcomeReport.successes exceeds episodes')


@dataclass(frozen=True)
class AggregateRequest(SignedRecord):
    """Aggregator -> key service: the summed bodies and the signed manifest of contributions."""

    DEFAULT_MAX_BYTES: ClassVar[int] = DEFAULT_MAX_MODEL_BYTES

    round_id: int = _f(_Int())
    config_digest: bytes = _f(_Bytes(DIGEST_BYTES, DIGEST_BYTES))
    summed_bodies: bytes = _f(_Bytes(0, MAX_BODIES_BYTES))
    contributions: tuple[ContributionRecord, ...] = _f(_List(_Nested(ContributionRecord), MAX_CONTRIBUTIONS))
    signer_key_id: str = _f(_Str())
    created_at: float = _f(_Float(0.0, MAX_UNIX_SECONDS))
    signature: bytes = _signature_field()


@dataclass(frozen=True)
class SitePartialSum(SignedRecord):
    """Site gateway -> aggregator (site aggregation): one sum of its robots' lattice bodies, sealed to
    the round's aggregator transport key, with each robot's signed contribution (header, digest of
    its sealed bodies, its own key ciphertext) unchanged; signed by the site aggregator's identity."""

    site_id: str = _f(_Str())
    round_id: int = _f(_Int())
    config_digest: bytes = _f(_Bytes(DIGEST_BYTES, DIGEST_BYTES))
    summed_bodies: bytes = _f(_Bytes(0, MAX_BODIES_BYTES))
    contributions: tuple[ContributionRecord, ...] = _f(_List(_Nested(ContributionRecord), MAX_SITE_ROBOTS))
    signer_key_id: str = _f(_Str())
    created_at: float = _f(_Float(0.0, MAX_UNIX_SECONDS))
    signature: bytes = _signature_field()


@dataclass(frozen=True)
class AggregateResult(SignedRecord):
    """Key service -> aggregator: the decrypted aggregate and which robots it covers."""

    DEFAULT_MAX_BYTES: ClassVar[int] = DEFAULT_MAX_MODEL_BYTES

    round_id: int = _f(_Int())
    config_digest: bytes = _f(_Bytes(DIGEST_BYTES, DIGEST_BYTES))
    aggregate: bytes = _f(_Bytes(0, MAX_BODIES_BYTES))
    contributors: tuple[str, ...] = _f(_List(_Str(), MAX_CONTRIBUTIONS))
    signer_key_id: str = _f(_Str())
    created_at: float = _f(_Float(0.0, MAX_UNIX_SECONDS))
    signature: bytes = _signature_field()


def model_package(model_version: int, parent_version: int, round_id: int, parameters: bytes,
                  gate_decision: str, signer_key_id: str, created_at: float) -> ModelPackage:
    """Unsigned ModelPackage with the parameter digest computed."""
    return ModelPackage(model_version=model_version, parent_version=parent_version, round_id=round_id,
                        parameters=parameters, parameters_sha256=_digest(parameters),
                        gate_decision=gate_decision, signer_key_id=signer_key_id, created_at=created_at)
