"""HSM-resident keys through PKCS#11 (python-pkcs11; tested against SoftHSM2).

Key paths: `hsm://slot/N[/KEY_LABEL]` or `hsm://token/TOKEN_LABEL[/KEY_LABEL]`. The PKCS#11 module
comes from TENSORGUARD_PKCS11_MODULE (default: Debian's SoftHSM2), the user PIN from an argument or
TENSORGUARD_HSM_PIN.

- Signing: an Ed25519 key pair generated inside the token (CKM_EC_EDWARDS_KEY_PAIR_GEN, signing with
  CKM_EDDSA, PKCS#11 v3.0) whose private half is CKA_SENSITIVE and not CKA_EXTRACTABLE: it never
  leaves the token; only the public key is exported.
- Envelope encryption: a token cannot run ring-LWE decryption, so the key service's lattice secret
  is stored on disk sealed with AES-256-GCM under a non-extractable AES key inside the token, and is
  unsealed only into the memory of the process that holds the token session.
"""
from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, TokenFlag
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_named_curve_parameters

from .identity import PUBLIC_KEY_BYTES, Role, signing_input

MODULE_ENV = 'TENSORGUARD_PKCS11_MODULE'
PIN_ENV = 'TENSORGUARD_HSM_PIN'
DEFAULT_MODULE = '/usr/lib/softhsm/libsofthsm2.so'
DEFAULT_KEY_LABEL = 'tensorguard'
ED25519_OID = '1.3.101.112'
ENVELOPE_MAGIC = b'TGENV1'
GCM_NONCE_BYTES = 12
GCM_TAG_BYTES = 16
_URI = re.compile(r'hsm://(?:slot/(?P<slot>\d+)|token/(?P<token>[^/]+))(?:/(?P<key>[A-Za-z0-9_.:-]+))?')


class HsmError(Exception):
    """Base of HSM errors; `reason` is a short machine-readable code. Messages never hold PINs or keys."""

    reason = 'hsm_error'


class InvalidHsmUri(HsmError):
    """The key path is not `hsm://slot/N[/KEY]` or `hsm://token/LABEL[/KEY]`."""

    reason = 'invalid_hsm_uri'


class HsmUnavailable(HsmError):
    """The PKCS#11 module could not be loaded."""

    reason = 'hsm_unavailable'


class HsmTokenNotFound(HsmError):
    """No initialised token in the named slot or with the named label."""

    reason = 'hsm_token_not_found'


class HsmLoginFailed(HsmError):
    """The token refused the PIN (or no PIN was given)."""

    reason = 'hsm_login_failed'


class HsmKeyNotFound(HsmError):
    """No key with the requested label in the token."""

    reason = 'hsm_key_not_found'


class HsmKeyExists(HsmError):
    """A key with this label already exists in the token; refusing to create a second one."""

    reason = 'hsm_key_exists'


class EnvelopeError(HsmError):
    """A sealed blob failed authentication (modified, wrong context, or sealed under another key)."""

    reason = 'envelope_error'


@dataclass(frozen=True)
class HsmUri:
    """Parsed `hsm://` key path."""

    slot: int | None
    token_label: str | None
    key_label: str

    @classmethod
    def parse(cls, uri: str) -> 'HsmUri':
        """Parse `hsm://slot/N[/KEY]` or `hsm://token/LABEL[/KEY]`."""
        match = _URI.fullmatch(uri) if isinstance(uri, str) else None
        if match is None:
            raise InvalidHsmUri(f'{uri!r} is not hsm://slot/N[/KEY] or hsm://token/LABEL[/KEY]')
        slot = match.group('slot')
        return cls(slot=int(slot) if slot is not None else None, token_label=match.group('token'),
                   key_label=match.group('key') or DEFAULT_KEY_LABEL)


def is_hsm_uri(path: str | os.PathLike) -> bool:
    """True when a key path names an HSM key rather than a file."""
    return str(path).startswith('hsm://')


class HsmSession:
    """An open, logged-in PKCS#11 session on the token named by an `hsm://` URI (a context manager)."""

    def __init__(self, uri: str | HsmUri, pin: str | None = None, module_path: str | None = None) -> None:
        self.uri = uri if isinstance(uri, HsmUri) else HsmUri.parse(uri)
        module = module_path or os.environ.get(MODULE_ENV, DEFAULT_MODULE)
        if not Path(module).is_file():
            raise HsmUnavailable(f'PKCS#11 module {module} not found (install softhsm2 or set {MODULE_ENV})')
        try:
            self._lib = pkcs11.lib(module)
        except (RuntimeError, OSError) as error:
            raise HsmUnavailable(f'cannot load PKCS#11 module {module}: {type(error).__name__}') from None
        token = self._find_token()
        pin = pin if pin is not None else os.environ.get(PIN_ENV)
        if not pin:
            raise HsmLoginFailed(f'no PIN given (argument or {PIN_ENV})')
        try:
            self.session = token.open(rw=True, user_pin=pin)
        except (pkcs11.exceptions.PinIncorrect, pkcs11.exceptions.PinLenRange, pkcs11.exceptions.PinLocked):
            raise HsmLoginFailed(f'token {token.label!r} refused the PIN') from None
        except pkcs11.exceptions.PKCS11Error as error:
            raise HsmError(f'cannot open a session on token {token.label!r}: {type(error).__name__}') from None

    def _find_token(self) -> Any:
        try:
            slots = self._lib.get_slots(token_present=True)
        except pkcs11.exceptions.PKCS11Error as error:
            raise HsmUnavailable(f'PKCS#11 module cannot list slots: {type(error).__name__}') from None
        for slot in slots:
            token = slot.get_token()
            if not TokenFlag.TOKEN_INITIALIZED & token.flags:
                continue
            if slot.slot_id == self.uri.slot or (self.uri.token_label is not None
                                                 and token.label == self.uri.token_label):
                return token
        raise HsmTokenNotFound(f'no initialised token in slot {self.uri.slot}' if self.uri.slot is not None
                               else f'no initialised token labelled {self.uri.token_label!r}')

    def __enter__(self) -> 'HsmSession':
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Log out and close the session."""
        self.session.close()

    def _find(self, object_class: Any, label: str) -> Any:
        try:
            return self.session.get_key(object_class=object_class, label=label)
        except pkcs11.exceptions.NoSuchKey:
            raise HsmKeyNotFound(f'no {object_class.name.lower()} labelled {label!r} in the token') from None
        except pkcs11.exceptions.MultipleObjectsReturned:
            raise HsmKeyExists(f'several objects labelled {label!r}; refusing to guess') from None

    def _refuse_existing(self, object_class: Any, label: str) -> None:
        if next(iter(self.session.get_objects({Attribute.CLASS: object_class,
                                                Attribute.LABEL: label})), None) is not None:
            raise HsmKeyExists(f'a key labelled {label!r} already exists in the token')

    def generate_signer(self, key_id: str, role: Role) -> 'HsmSigner':
        """Create a non-extractable Ed25519 key pair in the token under the URI's key label."""
        label = self.uri.key_label
        self._refuse_existing(ObjectClass.PRIVATE_KEY, label)
        parameters = self.session.create_domain_parameters(
            KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: encode_named_curve_parameters(ED25519_OID)},
            local=True)
        parameters.generate_keypair(
            store=True, label=label, mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
            private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
        return self.signer(key_id, role)

    def signer(self, key_id: str, role: Role) -> 'HsmSigner':
        """The Ed25519 key pair stored under the URI's key label."""
        label = self.uri.key_label
        return HsmSigner(key_id=key_id, role=Role(role), private_key=self._find(ObjectClass.PRIVATE_KEY, label),
                         public_key=self._find(ObjectClass.PUBLIC_KEY, label))

    def generate_envelope_key(self) -> 'HsmEnvelope':
        """Create a non-extractable AES-256 key in the token under the URI's key label."""
        label = self.uri.key_label
        self._refuse_existing(ObjectClass.SECRET_KEY, label)
        self.session.generate_key(KeyType.AES, 256, store=True, label=label, template={
            Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
        return self.envelope()

    def envelope(self) -> 'HsmEnvelope':
        """The AES envelope key stored under the URI's key label."""
        return HsmEnvelope(self._find(ObjectClass.SECRET_KEY, self.uri.key_label))


def key_protection(key: Any) -> dict[str, bool]:
    """PKCS#11 protection attributes of a key object (sensitive, extractable, never/always flags)."""
    return {'sensitive': bool(key[Attribute.SENSITIVE]), 'extractable': bool(key[Attribute.EXTRACTABLE]),
            'always_sensitive': bool(key[Attribute.ALWAYS_SENSITIVE]),
            'never_extractable': bool(key[Attribute.NEVER_EXTRACTABLE])}


@dataclass(frozen=True)
class HsmSigner:
    """An Ed25519 signer whose private key stays inside the token (satisfies identity.Signer)."""

    key_id: str
    role: Role
    private_key: Any
    public_key: Any

    def public_key_bytes(self) -> bytes:
        """Raw 32-byte public key exported from CKA_EC_POINT (a DER OCTET STRING)."""
        point = bytes(self.public_key[Attribute.EC_POINT])
        if len(point) == PUBLIC_KEY_BYTES + 2 and point[:2] == bytes([0x04, PUBLIC_KEY_BYTES]):
            return point[2:]
        if len(point) == PUBLIC_KEY_BYTES:
            return point
        raise HsmError('token returned an unexpected Ed25519 public key encoding')

    def sign(self, context: bytes, message: bytes) -> bytes:
        """Ed25519 signature computed inside the token (CKM_EDDSA)."""
        return bytes(self.private_key.sign(signing_input(context, message), mechanism=Mechanism.EDDSA))


@dataclass(frozen=True)
class HsmEnvelope:
    """Seals and unseals secrets with AES-256-GCM under a non-extractable token key."""

    key: Any

    def seal(self, secret: bytes, context: bytes) -> bytes:
        """Blob = magic | 96-bit random nonce | AES-GCM ciphertext+tag, with `context` authenticated."""
        nonce = secrets.token_bytes(GCM_NONCE_BYTES)
        ciphertext = self.key.encrypt(bytes(secret), mechanism=Mechanism.AES_GCM,
                                      mechanism_param=GCMParams(nonce, ENVELOPE_MAGIC + context))
        return ENVELOPE_MAGIC + nonce + bytes(ciphertext)

    def unseal(self, blob: bytes, context: bytes) -> bytearray:
        """The secret, decrypted inside the token and returned only to this process's memory."""
        header = len(ENVELOPE_MAGIC) + GCM_NONCE_BYTES
        if len(blob) < header + GCM_TAG_BYTES or blob[:len(ENVELOPE_MAGIC)] != ENVELOPE_MAGIC:
            raise EnvelopeError('not a sealed TensorGuard envelope (truncated or wrong format)')
        nonce = bytes(blob[len(ENVELOPE_MAGIC):header])
        try:
            secret = self.key.decrypt(bytes(blob[header:]), mechanism=Mechanism.AES_GCM,
                                      mechanism_param=GCMParams(nonce, ENVELOPE_MAGIC + context))
        except pkcs11.exceptions.PKCS11Error:
            raise EnvelopeError('envelope failed authentication (modified, wrong context or wrong key)') from None
        return bytearray(secret)
