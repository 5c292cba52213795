"""Ed25519 identities of robots, the aggregator, the key service and the model server.

Ed25519 (RFC 8032) via the `cryptography` package. Every signature is made over a domain-separated
message (a context tag naming what is signed, then the canonical bytes), so a signature made for one
kind of record can never be replayed as another kind.

Ids (robots, keys, server components) follow one grammar, `ID_PATTERN`, because they also name
files and directories (key files, a robot's fleet directory, an update's file in a round): no '/',
no '.', no upper case, at most 63 characters.

Public keys enrolled in the KMS must also pass `check_public_key_strength`: a canonical encoding of a
point in the prime-order subgroup. OpenSSL accepts small-order keys, and with the identity point as
public key the signature (R = identity, S = 0) verifies every message.
"""
from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_CONTEXT_BYTES = 64
MAX_ID_CHARS = 63
ID_PATTERN = re.compile(r'[a-z0-9][a-z0-9_-]{0,62}')

# Edwards25519 (RFC 8032 section 5.1): field prime p, curve constant d, order L of the base point's
# prime-order subgroup, and sqrt(-1) mod p (used by point decoding, section 5.1.3).
_P = 2 ** 255 - 19
_D = -121665 * pow(121666, -1, _P) % _P
_L = 2 ** 252 + 27742317777372353535851937790883648493
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
_COFACTOR = 8


class Role(str, enum.Enum):
    """Who a key belongs to; verification checks the role a record's signer must have."""

    ROBOT = 'robot'
    AGGREGATOR = 'aggregator'
    KEY_SERVICE = 'key_service'
    SERVER = 'server'
    SITE_AGGREGATOR = 'site_aggregator'  # a site gateway that signs its site's partial sums


class IdentityError(Exception):
    """Base of identity errors; `reason` is a short machine-readable code."""

    reason = 'identity_error'


class InvalidPublicKey(IdentityError):
    """A public key is not a valid 32-byte Ed25519 key."""

    reason = 'invalid_public_key'


class WeakPublicKey(InvalidPublicKey):
    """A 32-byte Ed25519 public key that must not be trusted: a non-canonical encoding, a point of
    small order (a forged signature then verifies any message) or a point outside the prime-order
    subgroup."""

    reason = 'weak_public_key'


class InvalidId(IdentityError):
    """An id (robot, key or component) outside `ID_PATTERN`; ids also name files and directories."""

    reason = 'invalid_id'


class SignatureInvalid(IdentityError):
    """A signature does not verify under the given public key and context."""

    reason = 'bad_signature'


class Signer(Protocol):
    """Anything that signs for a key id: a software `Identity` or an HSM-resident key."""

    key_id: str
    role: Role

    def public_key_bytes(self) -> bytes:
        """Raw 32-byte Ed25519 public key."""

    def sign(self, context: bytes, message: bytes) -> bytes:
        """64-byte Ed25519 signature over the domain-separated message."""


def check_id(value: object, what: str) -> str:
    """Return `value` if it is a valid id (`ID_PATTERN`, at most `MAX_ID_CHARS`), else raise `InvalidId`
    naming `what`; call it before an id is used to build a path."""
    if type(value) is not str:
        raise InvalidId(f'{what} must be a string, got {type(value).__name__}')
    if not ID_PATTERN.fullmatch(value):
        raise InvalidId(f'{what} {value[:80]!r} is not a valid id: 1 to {MAX_ID_CHARS} characters of a-z, 0-9, '
                        f"'_' and '-', starting with a letter or digit")
    return value


def signing_input(context: bytes, message: bytes) -> bytes:
    """Bytes actually signed: length-prefixed context tag, then the message (domain separation)."""
    if not 0 < len(context) <= MAX_CONTEXT_BYTES:
        raise IdentityError(f'signing context must be 1..{MAX_CONTEXT_BYTES} bytes')
    return b'TensorGuard-sig\x00' + bytes([len(context)]) + context + message


def fingerprint(public_key: bytes) -> str:
    """Short public identifier of a public key (first 16 hex digits of its SHA-256) for logs and listings."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def load_public_key(public_key: bytes) -> Ed25519PublicKey:
    """Parse a raw Ed25519 public key, raising `InvalidPublicKey` on anything else."""
    if not isinstance(public_key, (bytes, bytearray)) or len(public_key) != PUBLIC_KEY_BYTES:
        raise InvalidPublicKey(f'an Ed25519 public key is exactly {PUBLIC_KEY_BYTES} bytes')
    try:
        return Ed25519PublicKey.from_public_bytes(bytes(public_key))
    except ValueError:
        raise InvalidPublicKey('bytes are not a valid Ed25519 public key') from None


_Point = tuple[int, int, int, int]
_IDENTITY: _Point = (0, 1, 1, 0)


def _point_add(first: _Point, second: _Point) -> _Point:
    """Sum of two points in extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, x*y = T/Z: the
    complete addition formulas of RFC 8032 section 5.1.4 (also valid for doubling)."""
    x1, y1, z1, t1 = first
    x2, y2, z2, t2 = second
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = 2 * _D * t1 * t2 % _P
    d = 2 * z1 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _point_multiply(scalar: int, point: _Point) -> _Point:
    """[scalar]point by double-and-add (variable time: used on public keys only)."""
    result = _IDENTITY
    while scalar:
        if scalar & 1:
            result = _point_add(result, point)
        point = _point_add(point, point)
        scalar >>= 1
    return result


def _is_identity(point: _Point) -> bool:
    x, y, z, _ = point
    return x % _P == 0 and (y - z) % _P == 0


def _decode_point(encoding: bytes) -> _Point:
    """Strict point decoding of RFC 8032 section 5.1.3: refuses y >= p and x = 0 with the sign bit set
    (non-canonical encodings) and y values with no curve point."""
    value = int.from_bytes(encoding, 'little')
    sign, y = value >> 255, value & ((1 << 255) - 1)
    if y >= _P:
        raise WeakPublicKey('public key is a non-canonical encoding (y >= 2^255 - 19)')
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if v * x * x % _P != u:
        x = x * _SQRT_M1 % _P  # v x^2 = -u: multiply by sqrt(-1)
        if v * x * x % _P != u:
            raise InvalidPublicKey('public key bytes do not encode a point of Ed25519')
    if x == 0 and sign:
        raise WeakPublicKey('public key is a non-canonical encoding (x = 0 with the sign bit set)')
    if x & 1 != sign:
        x = _P - x
    return x, y, 1, x * y % _P


def check_public_key_strength(public_key: bytes) -> None:
    """Refuse an Ed25519 public key that decodes (RFC 8032 section 5.1.3) to anything but a canonical
    point of the prime-order subgroup: `WeakPublicKey` for a non-canonical encoding, one of the 8 points
    of small order (for which forged signatures verify) or a point with a small-order component."""
    if not isinstance(public_key, (bytes, bytearray)) or len(public_key) != PUBLIC_KEY_BYTES:
        raise InvalidPublicKey(f'an Ed25519 public key is exactly {PUBLIC_KEY_BYTES} bytes')
    point = _decode_point(bytes(public_key))
    if _is_identity(_point_multiply(_COFACTOR, point)):
        raise WeakPublicKey('public key is a point of small order (a forged signature would verify any message)')
    if not _is_identity(_point_multiply(_L, point)):
        raise WeakPublicKey('public key is not in the prime-order subgroup (it has a small-order component)')


def verify_signature(public_key: bytes, context: bytes, message: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature over (context, message); raises `SignatureInvalid` if it does not verify."""
    key = load_public_key(public_key)
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureInvalid(f'signature must be {SIGNATURE_BYTES} bytes')
    try:
        key.verify(bytes(signature), signing_input(context, message))
    except InvalidSignature:
        raise SignatureInvalid('signature does not verify under the enrolled public key') from None


@dataclass(frozen=True)
class Identity:
    """A software Ed25519 identity: key id, role and private key (never printed or logged)."""

    key_id: str
    role: Role
    private_key: Ed25519PrivateKey = field(repr=False, compare=False)

    @classmethod
    def generate(cls, key_id: str, role: Role = Role.ROBOT) -> 'Identity':
        """Fresh identity; the private key comes from the OS CSPRNG through OpenSSL."""
        return cls(key_id=key_id, role=Role(role), private_key=Ed25519PrivateKey.generate())

    def public_key_bytes(self) -> bytes:
        """Raw 32-byte public key (safe to publish and enrol in the KMS)."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def sign(self, context: bytes, message: bytes) -> bytes:
        """64-byte Ed25519 signature over the domain-separated message."""
        return self.private_key.sign(signing_input(context, message))
