"""Hybrid public-key encryption of a robot's lattice bodies to the round's aggregator key.

Why: DDS here has no transport security, so without this layer anyone on the network would record
every robot's bodies next to its key ciphertext, and the key service's secret alone would open
them. Sealing the bodies to a per-round X25519 key of the aggregator means a listener needs the
aggregator's round secret *and* the key service's round secret to read one robot's update.

Construction (the shape of RFC 9180 HPKE base mode with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256
and ChaCha20-Poly1305, simplified to one message per ephemeral key): the sender draws an ephemeral
X25519 key from the OS CSPRNG, derives a 32-byte key with HKDF-SHA256 over the shared secret, with
info = domain || ephemeral public || recipient public || context, and encrypts once under a zero
nonce (each derived key is used for exactly one message). `context` is authenticated, so a sealed
blob made for one robot and round does not open as another's. Primitives from `cryptography`.

    sealed = ephemeral_public (32 bytes) || ChaCha20-Poly1305 ciphertext and tag (len + 16)
"""
from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PUBLIC_KEY_BYTES = 32
SEAL_OVERHEAD_BYTES = PUBLIC_KEY_BYTES + 16
_DOMAIN = b'TensorGuard/hybrid/v1'
_NONCE = bytes(12)
_RAW = serialization.Encoding.Raw


class HybridError(ValueError):
    """A sealed blob does not open (wrong key, wrong context, truncated or modified)."""

    reason = 'unsealing_failed'


def _public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(_RAW, serialization.PublicFormat.Raw)


def _derive(shared: bytes, ephemeral_public: bytes, recipient_public: bytes, context: bytes) -> ChaCha20Poly1305:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=_DOMAIN + ephemeral_public + recipient_public + context).derive(shared)
    return ChaCha20Poly1305(key)


def _load_public(recipient_public: bytes) -> X25519PublicKey:
    if type(recipient_public) is not bytes or len(recipient_public) != PUBLIC_KEY_BYTES:
        raise HybridError(f'recipient public key must be {PUBLIC_KEY_BYTES} bytes')
    return X25519PublicKey.from_public_bytes(recipient_public)


def seal(recipient_public: bytes, plaintext: bytes, context: bytes) -> bytes:
    """Encrypt `plaintext` so that only the holder of the X25519 secret of `recipient_public` opens it."""
    recipient = _load_public(recipient_public)
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = _public_bytes(ephemeral.public_key())
    try:
        shared = ephemeral.exchange(recipient)
    except ValueError:
        raise HybridError('recipient public key is a low-order point') from None
    aead = _derive(shared, ephemeral_public, recipient_public, context)
    return ephemeral_public + aead.encrypt(_NONCE, plaintext, context)


class SealedBoxKey:
    """An X25519 secret that opens sealed blobs; made fresh from the OS CSPRNG or loaded from 32 bytes."""

    def __init__(self, private_key: X25519PrivateKey | None = None) -> None:
        self._private = private_key if private_key is not None else X25519PrivateKey.generate()
        self.public_key = _public_bytes(self._private.public_key())

    def __repr__(self) -> str:
        return f'SealedBoxKey(public={self.public_key.hex()[:16]}..., <secret>)'

    @classmethod
    def from_secret_bytes(cls, secret: bytes) -> 'SealedBoxKey':
        """Load a key saved with `secret_bytes` (store those only encrypted at rest)."""
        if len(secret) != 32:
            raise HybridError('X25519 secret must be 32 bytes')
        return cls(X25519PrivateKey.from_private_bytes(secret))

    def secret_bytes(self) -> bytes:
        """The raw 32-byte secret, for sealing at rest."""
        return self._private.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())

    def open(self, sealed: bytes, context: bytes) -> bytes:
        """Decrypt and authenticate a blob made by `seal` for this key and `context`."""
        if len(sealed) < SEAL_OVERHEAD_BYTES:
            raise HybridError(f'sealed blob of {len(sealed)} bytes is shorter than its '
                              f'{SEAL_OVERHEAD_BYTES}-byte overhead')
        ephemeral_public = bytes(sealed[:PUBLIC_KEY_BYTES])
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
        except ValueError:
            raise HybridError('sealed blob carries a low-order ephemeral key') from None
        aead = _derive(shared, ephemeral_public, self.public_key, context)
        try:
            return aead.decrypt(_NONCE, bytes(sealed[PUBLIC_KEY_BYTES:]), context)
        except InvalidTag:
            raise HybridError('sealed blob does not open under this key and context') from None
