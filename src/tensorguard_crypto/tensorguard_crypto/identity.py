"""Ed25519 identities of robots, the aggregator, the key service and the model server.

Ed25519 (RFC 8032) via the `cryptography` package. Every signature is made over a domain-separated
message (a context tag naming what is signed, then the canonical bytes), so a signature made for one
kind of record can never be replayed as another kind.
"""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_CONTEXT_BYTES = 64


class Role(str, enum.Enum):
    """Who a key belongs to; verification checks the role a record's signer must have."""

    ROBOT = 'robot'
    AGGREGATOR = 'aggregator'
    KEY_SERVICE = 'key_service'
    SERVER = 'server'


class IdentityError(Exception):
    """Base of identity errors; `reason` is a short machine-readable code."""

    reason = 'identity_error'


class InvalidPublicKey(IdentityError):
    """A public key is not a valid 32-byte Ed25519 key."""

    reason = 'invalid_public_key'


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
