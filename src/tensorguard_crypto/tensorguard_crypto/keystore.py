"""Ed25519 identity keys at rest: scrypt + AES-256-GCM encrypted files with mode 0600.

File layout (all integers big-endian, every byte before the ciphertext is authenticated as AES-GCM
associated data, so editing the header, e.g. the public key or the KDF cost, fails decryption):

    magic "TGKEY\\0" | version 1 (1) | role (1) | key_id length (1) | key_id (UTF-8)
    | scrypt log2 N (1) | r (1) | p (1) | salt (16) | nonce (12) | public key (32)
    | AES-256-GCM(private key seed, 32 bytes) + tag (16)

KDF: scrypt (Percival 2009; RFC 7914) with N = 2^17, r = 8, p = 1 by default (128 MiB, the minimum
the OWASP Password Storage Cheat Sheet gives for scrypt); callers may raise N up to 2^22 (Percival's
2009 slides suggest 2^20 for sensitive storage). Files claiming less than 2^15 or more than 2^22
are refused on load (no silent downgrade, no memory blow-up).
"""
from __future__ import annotations

import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .identity import PUBLIC_KEY_BYTES, Identity, InvalidId, Role, check_id, fingerprint

PASSPHRASE_ENV = 'TENSORGUARD_KEY_PASSPHRASE'
MAGIC = b'TGKEY\x00'
FORMAT_VERSION = 1
DEFAULT_SCRYPT_LOG2_N = 17
MIN_SCRYPT_LOG2_N = 15
MAX_SCRYPT_LOG2_N = 22
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
NONCE_BYTES = 12
SEED_BYTES = 32
TAG_BYTES = 16
MIN_PASSPHRASE_CHARS = 8
SUPPORTED_SECURITY_LEVELS = (128,)
_ROLES = list(Role)

logger = logging.getLogger(__name__)


class KeyStoreError(Exception):
    """Base of key file errors; messages name the problem and the path, never key material."""

    reason = 'keystore_error'


class KeyFileExists(KeyStoreError):
    """Refusing to overwrite an existing key file."""

    reason = 'key_file_exists'


class KeyFileNotFound(KeyStoreError):
    """No key file at the given path."""

    reason = 'key_file_not_found'


class LoosePermissions(KeyStoreError):
    """The key file is readable or writable by group/others, or owned by another user."""

    reason = 'loose_permissions'


class KeyFileCorrupt(KeyStoreError):
    """The file is truncated, has extra bytes, or is not a TensorGuard key file."""

    reason = 'key_file_corrupt'


class KeyPathInvalid(KeyStoreError):
    """The key file path cannot hold a key file: a directory or other non-regular file, a path under a
    regular file, or a directory that cannot be created."""

    reason = 'key_path_invalid'


class InvalidKeyFileId(KeyStoreError, InvalidId):
    """A key id, given for a new key file or read from a key file's header, outside identity.ID_PATTERN."""

    reason = 'invalid_id'


class WrongPassphrase(KeyStoreError):
    """Decryption failed: wrong passphrase, or the encrypted part of the file was modified."""

    reason = 'wrong_passphrase'


class MissingPassphrase(KeyStoreError):
    """No usable passphrase was given (argument or TENSORGUARD_KEY_PASSPHRASE)."""

    reason = 'missing_passphrase'


class UnsupportedSecurityLevel(KeyStoreError):
    """Ed25519 identity keys give 128-bit classical security; other levels cannot be honoured."""

    reason = 'unsupported_security_level'


@dataclass(frozen=True)
class KeyFileInfo:
    """Public header of a key file (readable without the passphrase)."""

    path: Path
    key_id: str
    role: Role
    public_key: bytes
    scrypt_log2_n: int


def _passphrase(passphrase: str | bytes | None) -> bytes:
    value = passphrase if passphrase is not None else os.environ.get(PASSPHRASE_ENV)
    if value is None:
        raise MissingPassphrase(f'no passphrase: pass one or set {PASSPHRASE_ENV}')
    data = value.encode() if isinstance(value, str) else bytes(value)
    if len(data) < MIN_PASSPHRASE_CHARS:
        raise MissingPassphrase(f'passphrase must be at least {MIN_PASSPHRASE_CHARS} characters')
    return data


def derive_file_key(passphrase: bytes, salt: bytes, log2_n: int) -> bytes:
    """The AES-256 key that encrypts a key file: scrypt(passphrase, salt, N=2^log2_n, r=8, p=1)."""
    return Scrypt(salt=salt, length=32, n=2 ** log2_n, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)


def _header(key_id: str, role: Role, log2_n: int, salt: bytes, nonce: bytes, public_key: bytes) -> bytes:
    key_id_bytes = key_id.encode()
    return (MAGIC + bytes([FORMAT_VERSION, _ROLES.index(role), len(key_id_bytes)]) + key_id_bytes
            + bytes([log2_n, SCRYPT_R, SCRYPT_P]) + salt + nonce + public_key)


@dataclass(frozen=True)
class _ParsedFile:
    info: KeyFileInfo
    header: bytes
    salt: bytes
    nonce: bytes
    ciphertext: bytes


def _parse(path: Path, data: bytes) -> _ParsedFile:
    corrupt = KeyFileCorrupt(f'{path}: not a valid TensorGuard key file (truncated or corrupt)')
    if len(data) < len(MAGIC) + 3 or data[:len(MAGIC)] != MAGIC:
        raise corrupt
    version, role_index, key_id_len = data[len(MAGIC):len(MAGIC) + 3]
    if version != FORMAT_VERSION or role_index >= len(_ROLES):
        raise corrupt
    pos = len(MAGIC) + 3
    expected = pos + key_id_len + 3 + SALT_BYTES + NONCE_BYTES + PUBLIC_KEY_BYTES + SEED_BYTES + TAG_BYTES
    if len(data) != expected:
        raise corrupt
    try:
        key_id = check_id(data[pos:pos + key_id_len].decode(), 'key id')
    except UnicodeDecodeError:
        raise corrupt from None
    except InvalidId as error:
        raise InvalidKeyFileId(f'{path}: {error}') from None
    pos += key_id_len
    log2_n, r, p = data[pos:pos + 3]
    if not MIN_SCRYPT_LOG2_N <= log2_n <= MAX_SCRYPT_LOG2_N or (r, p) != (SCRYPT_R, SCRYPT_P):
        raise KeyFileCorrupt(f'{path}: scrypt parameters outside the accepted range')
    pos += 3
    salt, pos = data[pos:pos + SALT_BYTES], pos + SALT_BYTES
    nonce, pos = data[pos:pos + NONCE_BYTES], pos + NONCE_BYTES
    public_key, pos = data[pos:pos + PUBLIC_KEY_BYTES], pos + PUBLIC_KEY_BYTES
    info = KeyFileInfo(path=path, key_id=key_id, role=_ROLES[role_index], public_key=public_key,
                       scrypt_log2_n=log2_n)
    return _ParsedFile(info=info, header=data[:pos], salt=salt, nonce=nonce, ciphertext=data[pos:])


def _read_private_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileNotFound(f'{path}: no such key file') from None
    except NotADirectoryError:
        raise KeyPathInvalid(f'{path}: not a key file (a parent of the path is not a directory)') from None
    except OSError as error:
        raise KeyStoreError(f'{path}: cannot open key file ({error.strerror})') from None
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        os.close(fd)
        raise KeyPathInvalid(f'{path}: not a key file (a directory or other non-regular file)')
    with os.fdopen(fd, 'rb') as handle:
        if status.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise LoosePermissions(
                f'{path}: permissions {stat.filemode(status.st_mode)} are too open; run chmod 600 {path}')
        if status.st_uid != os.getuid():
            raise LoosePermissions(f'{path}: owned by uid {status.st_uid}, not by the current user')
        return handle.read(64 * 1024)


def read_key_info(path: str | os.PathLike) -> KeyFileInfo:
    """Public header of a key file (key id, role, public key) without the passphrase."""
    path = Path(path)
    return _parse(path, _read_private_file(path)).info


def generate_key(path: str | os.PathLike, security_level: int = 128, passphrase: str | bytes | None = None,
                 *, key_id: str | None = None, role: Role = Role.ROBOT,
                 scrypt_log2_n: int = DEFAULT_SCRYPT_LOG2_N) -> Identity:
    """Create a new Ed25519 identity and write it encrypted to `path` (mode 0600, never overwrites)."""
    if security_level not in SUPPORTED_SECURITY_LEVELS:
        raise UnsupportedSecurityLevel(
            f'security_level={security_level}: Ed25519 identity keys provide 128-bit classical security; '
            'the lattice security level is chosen in the round parameters')
    if not MIN_SCRYPT_LOG2_N <= scrypt_log2_n <= MAX_SCRYPT_LOG2_N:
        raise KeyStoreError(f'scrypt_log2_n must be in [{MIN_SCRYPT_LOG2_N}, {MAX_SCRYPT_LOG2_N}]')
    path = Path(path)
    key_id = path.stem if key_id is None else key_id
    try:
        check_id(key_id, 'key_id')
    except InvalidId as error:
        raise InvalidKeyFileId(str(error)) from None
    secret = _passphrase(passphrase)
    if path.is_dir():
        raise KeyPathInvalid(f'{path}: is a directory; give the path of the key file to create')
    if path.exists():
        raise KeyFileExists(f'{path}: already exists; refusing to overwrite a key file')
    identity = Identity.generate(key_id, Role(role))
    salt, nonce = secrets.token_bytes(SALT_BYTES), secrets.token_bytes(NONCE_BYTES)
    header = _header(key_id, identity.role, scrypt_log2_n, salt, nonce, identity.public_key_bytes())
    seed = identity.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    ciphertext = AESGCM(derive_file_key(secret, salt, scrypt_log2_n)).encrypt(nonce, seed, header)
    _write_new_private_file(path, header + ciphertext)
    logger.info('generated %s key %r at %s (public key fingerprint %s)', identity.role.value, key_id, path,
                fingerprint(identity.public_key_bytes()))
    return identity


def _write_new_private_file(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
        raise KeyPathInvalid(f'{path}: {blocking} is not a directory' if blocking is not None else
                             f'{path}: cannot create its directory ({error.strerror})') from None
    temporary = path.with_name(f'.{path.name}.{secrets.token_hex(8)}.tmp')
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temporary, path)
    except FileExistsError:
        raise KeyFileExists(f'{path}: already exists; refusing to overwrite a key file') from None
    except OSError as error:
        raise KeyStoreError(f'{path}: cannot write the key file ({error.strerror})') from None
    finally:
        temporary.unlink(missing_ok=True)


def load_key(path: str | os.PathLike, passphrase: str | bytes | None = None) -> Identity:
    """Decrypt an identity key file; refuses loose permissions, corrupt files and wrong passphrases."""
    path = Path(path)
    parsed = _parse(path, _read_private_file(path))
    secret = _passphrase(passphrase)
    try:
        seed = AESGCM(derive_file_key(secret, parsed.salt, parsed.info.scrypt_log2_n)).decrypt(
            parsed.nonce, parsed.ciphertext, parsed.header)
    except InvalidTag:
        raise WrongPassphrase(f'{path}: wrong passphrase, or the key file was modified') from None
    identity = Identity(key_id=parsed.info.key_id, role=parsed.info.role,
                        private_key=Ed25519PrivateKey.from_private_bytes(seed))
    if identity.public_key_bytes() != parsed.info.public_key:
        raise KeyFileCorrupt(f'{path}: stored public key does not match the decrypted private key')
    logger.info('loaded %s key %r from %s (public key fingerprint %s)', identity.role.value, identity.key_id,
                path, fingerprint(identity.public_key_bytes()))
    return identity
