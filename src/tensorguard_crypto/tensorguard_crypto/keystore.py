"""Ed25519 identity keys at rest: scrypt + AES-256-GCM encrypted files with mode 0600.

File layout (all integers big-endian, every byte before the ciphertext is authenticated as AES-GCM
associated data, so editing the header, e.g. the public key or the KDF cost, fails decryption):

    magic "TGKEY\\0" | version 1 (1) | role (1) | key_id length (1) | key_id (UTF-8)
    | scrypt log2 N (1) | r (1) | p (1) | salt (16) | nonce (12) | public key (32)
    | AES-256-GCM(private key seed, 32 bytes) + tag (16)

KDF: scrypt (Percival 2009; RFC 7914) with N = 2^17, r = 8, p = 1 by default (128 MiB, the minimum
the OWASP Password Storage Cheat Sheet gives for scrypt); callers, or ``TENSORGUARD_SCRYPT_LOG2_N``
for every new file of a process, may set N from 2^15 up to 2^22 (Percival's 2009 slides suggest 2^20
for sensitive storage). Files claiming less than 2^15 or more than 2^22 are refused on load (no
silent downgrade, no memory blow-up).

Sealed secrets (a round's lattice or transport secret, `seal_secret` / `unseal_secret`) are the same
construction under the same checks (KDF bounds, 0600 and owner on load, never overwritten on write),
with a caller-chosen context authenticated too, so a secret sealed for one round does not open as another:

    magic "TGSEAL1" | scrypt log2 N (1) | salt (16) | nonce (12) | AES-256-GCM(secret) + tag (16)
    associated data: every byte before the ciphertext, then the context
"""
from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .identity import PUBLIC_KEY_BYTES, Identity, InvalidId, Role, check_id, fingerprint

PASSPHRASE_ENV = 'TENSORGUARD_KEY_PASSPHRASE'
SCRYPT_COST_ENV = 'TENSORGUARD_SCRYPT_LOG2_N'
MAGIC = b'TGKEY\x00'
SEALED_MAGIC = b'TGSEAL1'
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
MAX_KEY_FILE_BYTES = 64 * 1024
MAX_SECRET_BYTES = 1024 * 1024
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


class KeyStorageError(KeyStoreError, OSError):
    """A key file or sealed secret cannot be opened or written (no permission, disk full); also an
    `OSError`, so callers that treat storage failures alike see it as one."""

    reason = 'key_storage_error'


class KeyFileCorrupt(KeyStoreError):
    """The file is truncated, has extra bytes, or is not a TensorGuard key file (or sealed secret)."""

    reason = 'key_file_corrupt'


class KeyPathInvalid(KeyStoreError):
    """The key file path cannot hold a key file: a directory or other non-regular file, a path under a
    regular file, or a directory that cannot be created."""

    reason = 'key_path_invalid'


class InvalidKeyFileId(KeyStoreError, InvalidId):
    """A key id, given for a new key file or read from a key file's header, outside identity.ID_PATTERN."""

    reason = 'invalid_id'


class WrongPassphrase(KeyStoreError):
    """Decryption failed: wrong passphrase, or the file was modified (or, for a sealed secret, opened
    with another context)."""

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


def resolve_passphrase(passphrase: str | bytes | None) -> bytes:
    """The passphrase as bytes: the argument, else ``TENSORGUARD_KEY_PASSPHRASE``; at least 8 characters."""
    value = passphrase if passphrase is not None else os.environ.get(PASSPHRASE_ENV)
    if value is None:
        raise MissingPassphrase(f'no passphrase: pass one or set {PASSPHRASE_ENV}')
    data = value.encode() if isinstance(value, str) else bytes(value)
    if len(data) < MIN_PASSPHRASE_CHARS:
        raise MissingPassphrase(f'passphrase must be at least {MIN_PASSPHRASE_CHARS} characters')
    return data


def derive_file_key(passphrase: bytes, salt: bytes, log2_n: int) -> bytes:
    """The AES-256 key of a key file or sealed secret: scrypt(passphrase, salt, N=2^log2_n, r=8, p=1)."""
    return Scrypt(salt=salt, length=32, n=2 ** log2_n, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)


def _encrypt(passphrase: bytes, log2_n: int, header: Callable[[bytes, bytes], bytes], plaintext: bytes,
             context: bytes = b'') -> bytes:
    """``header(salt, nonce) || AES-256-GCM(plaintext)`` under scrypt(passphrase) with a fresh salt and nonce
    from the OS CSPRNG; the header and `context` are authenticated. Key files and sealed secrets both use it."""
    salt, nonce = secrets.token_bytes(SALT_BYTES), secrets.token_bytes(NONCE_BYTES)
    head = header(salt, nonce)
    return head + AESGCM(derive_file_key(passphrase, salt, log2_n)).encrypt(nonce, plaintext, head + context)


@dataclass(frozen=True)
class _Encrypted:
    """A parsed key file or sealed secret: authenticated header, KDF cost, salt, nonce, ciphertext + tag."""

    where: Path
    what: str
    header: bytes
    log2_n: int
    salt: bytes
    nonce: bytes
    ciphertext: bytes

    def decrypt(self, passphrase: bytes, context: bytes = b'') -> bytes:
        """The plaintext; `WrongPassphrase` if the passphrase, the file or the context differs."""
        try:
            return AESGCM(derive_file_key(passphrase, self.salt, self.log2_n)).decrypt(
                self.nonce, self.ciphertext, self.header + context)
        except InvalidTag:
            raise WrongPassphrase(f'{self.where}: wrong passphrase, or the {self.what} was modified') from None


def _check_new_cost(log2_n: int, name: str = 'scrypt_log2_n') -> None:
    if not MIN_SCRYPT_LOG2_N <= log2_n <= MAX_SCRYPT_LOG2_N:
        raise KeyStoreError(f'{name} must be in [{MIN_SCRYPT_LOG2_N}, {MAX_SCRYPT_LOG2_N}], got {log2_n}')


def new_file_cost() -> int:
    """The scrypt log2 N of new key files and sealed secrets when the caller names none:
    ``TENSORGUARD_SCRYPT_LOG2_N`` if set (within the range a file may declare), else 17."""
    value = os.environ.get(SCRYPT_COST_ENV)
    if value is None:
        return DEFAULT_SCRYPT_LOG2_N
    try:
        log2_n = int(value)
    except ValueError:
        raise KeyStoreError(f'{SCRYPT_COST_ENV}={value!r} is not an integer') from None
    _check_new_cost(log2_n, SCRYPT_COST_ENV)
    return log2_n


def _check_stored_cost(where: Path, log2_n: int) -> None:
    """A file may neither downgrade the KDF cost nor make loading exhaust memory."""
    if not MIN_SCRYPT_LOG2_N <= log2_n <= MAX_SCRYPT_LOG2_N:
        raise KeyFileCorrupt(f'{where}: scrypt parameters outside the accepted range')


def _header(key_id: str, role: Role, log2_n: int, salt: bytes, nonce: bytes, public_key: bytes) -> bytes:
    key_id_bytes = key_id.encode()
    return (MAGIC + bytes([FORMAT_VERSION, _ROLES.index(role), len(key_id_bytes)]) + key_id_bytes
            + bytes([log2_n, SCRYPT_R, SCRYPT_P]) + salt + nonce + public_key)


def _parse_key_file(where: Path, data: bytes) -> tuple[KeyFileInfo, _Encrypted]:
    corrupt = KeyFileCorrupt(f'{where}: not a valid TensorGuard key file (truncated or corrupt)')
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
        raise InvalidKeyFileId(f'{where}: {error}') from None
    pos += key_id_len
    log2_n, r, p = data[pos:pos + 3]
    _check_stored_cost(where, log2_n)
    if (r, p) != (SCRYPT_R, SCRYPT_P):
        raise KeyFileCorrupt(f'{where}: scrypt parameters outside the accepted range')
    pos += 3
    salt, pos = data[pos:pos + SALT_BYTES], pos + SALT_BYTES
    nonce, pos = data[pos:pos + NONCE_BYTES], pos + NONCE_BYTES
    public_key, pos = data[pos:pos + PUBLIC_KEY_BYTES], pos + PUBLIC_KEY_BYTES
    info = KeyFileInfo(path=where, key_id=key_id, role=_ROLES[role_index], public_key=public_key,
                       scrypt_log2_n=log2_n)
    return info, _Encrypted(where, 'key file', data[:pos], log2_n, salt, nonce, data[pos:])


def _parse_sealed(where: Path, data: bytes) -> _Encrypted:
    head = len(SEALED_MAGIC) + 1 + SALT_BYTES + NONCE_BYTES
    if len(data) < head + TAG_BYTES or data[:len(SEALED_MAGIC)] != SEALED_MAGIC:
        raise KeyFileCorrupt(f'{where}: not a sealed TensorGuard secret (truncated or corrupt)')
    log2_n = data[len(SEALED_MAGIC)]
    _check_stored_cost(where, log2_n)
    salt = data[len(SEALED_MAGIC) + 1:head - NONCE_BYTES]
    return _Encrypted(where, 'sealed secret', data[:head], log2_n, salt, data[head - NONCE_BYTES:head], data[head:])


def read_private_file(path: str | os.PathLike, what: str, max_bytes: int) -> bytes:
    """The bytes of a private file: a regular file (not a symlink, FIFO or directory), owned by the current
    user, without group/other permission bits, at most `max_bytes` long (else `KeyFileCorrupt`)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileNotFound(f'{path}: no such {what}') from None
    except NotADirectoryError:
        raise KeyPathInvalid(f'{path}: not a {what} (a parent of the path is not a directory)') from None
    except OSError as error:
        raise KeyStorageError(f'{path}: cannot open {what} ({error.strerror})') from None
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        os.close(fd)
        raise KeyPathInvalid(f'{path}: not a {what} (a directory or other non-regular file)')
    with os.fdopen(fd, 'rb') as handle:
        if status.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise LoosePermissions(
                f'{path}: permissions {stat.filemode(status.st_mode)} are too open; run chmod 600 {path}')
        if status.st_uid != os.getuid():
            raise LoosePermissions(f'{path}: owned by uid {status.st_uid}, not by the current user')
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise KeyFileCorrupt(f'{path}: larger than {max_bytes} bytes; not a {what}')
    return data


def write_private_file(path: str | os.PathLike, data: bytes, what: str) -> None:
    """Create `path` holding `data`, mode 0600 (new parent directories 0700): written to a temporary name
    with O_EXCL, fsynced, then hard-linked into place and the directory fsynced, so it never overwrites, is
    never seen half-written and survives a crash once this returns."""
    path = Path(path)
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
            with os.fdopen(os.dup(fd), 'wb') as handle:
                handle.write(data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except FileExistsError:
        raise KeyFileExists(f'{path}: already exists; refusing to overwrite a {what}') from None
    except OSError as error:
        raise KeyStorageError(f'{path}: cannot write the {what} ({error.strerror})') from None
    finally:
        temporary.unlink(missing_ok=True)


def _check_new_key(key_id: str, scrypt_log2_n: int | None, passphrase: str | bytes | None) -> tuple[int, bytes]:
    """Validate what a new key file needs; returns its KDF cost (`scrypt_log2_n`, else `new_file_cost()`)
    and the passphrase."""
    scrypt_log2_n = new_file_cost() if scrypt_log2_n is None else scrypt_log2_n
    _check_new_cost(scrypt_log2_n)
    try:
        check_id(key_id, 'key_id')
    except InvalidId as error:
        raise InvalidKeyFileId(str(error)) from None
    return scrypt_log2_n, resolve_passphrase(passphrase)


def new_identity_file(key_id: str, role: Role = Role.ROBOT, passphrase: str | bytes | None = None,
                      scrypt_log2_n: int | None = None) -> tuple[Identity, bytes]:
    """A new Ed25519 identity (OS CSPRNG) and the bytes of its encrypted key file, written nowhere;
    the KDF cost is `scrypt_log2_n`, else `new_file_cost()`."""
    scrypt_log2_n, secret = _check_new_key(key_id, scrypt_log2_n, passphrase)
    identity = Identity.generate(key_id, Role(role))
    seed = identity.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    data = _encrypt(secret, scrypt_log2_n, lambda salt, nonce: _header(
        key_id, identity.role, scrypt_log2_n, salt, nonce, identity.public_key_bytes()), seed)
    return identity, data


def generate_key(path: str | os.PathLike, security_level: int = 128, passphrase: str | bytes | None = None,
                 *, key_id: str | None = None, role: Role = Role.ROBOT,
                 scrypt_log2_n: int | None = None) -> Identity:
    """Create a new Ed25519 identity and write it encrypted to `path` (mode 0600, never overwrites);
    the KDF cost is `scrypt_log2_n`, else `new_file_cost()`."""
    if security_level not in SUPPORTED_SECURITY_LEVELS:
        raise UnsupportedSecurityLevel(
            f'security_level={security_level}: Ed25519 identity keys provide 128-bit classical security; '
            'the lattice security level is chosen in the round parameters')
    path = Path(path)
    key_id = path.stem if key_id is None else key_id
    scrypt_log2_n, secret = _check_new_key(key_id, scrypt_log2_n, passphrase)
    if path.is_dir():
        raise KeyPathInvalid(f'{path}: is a directory; give the path of the key file to create')
    if path.exists():
        raise KeyFileExists(f'{path}: already exists; refusing to overwrite a key file')
    identity, data = new_identity_file(key_id, role, secret, scrypt_log2_n)
    write_private_file(path, data, 'key file')
    logger.info('generated %s key %r at %s (public key fingerprint %s)', identity.role.value, key_id, path,
                fingerprint(identity.public_key_bytes()))
    return identity


def key_file_info(data: bytes, where: str | os.PathLike) -> KeyFileInfo:
    """Public header of key-file bytes read from `where` (a path, or a member of a robot bundle)."""
    return _parse_key_file(Path(where), data)[0]


def read_key_info(path: str | os.PathLike) -> KeyFileInfo:
    """Public header of a key file (key id, role, public key) without the passphrase."""
    return key_file_info(read_private_file(path, 'key file', MAX_KEY_FILE_BYTES), path)


def decrypt_key_file(data: bytes, passphrase: str | bytes | None, where: str | os.PathLike) -> Identity:
    """The identity held by key-file bytes read from `where`; refuses corrupt data and wrong passphrases."""
    info, encrypted = _parse_key_file(Path(where), data)
    seed = encrypted.decrypt(resolve_passphrase(passphrase))
    identity = Identity(key_id=info.key_id, role=info.role, private_key=Ed25519PrivateKey.from_private_bytes(seed))
    if identity.public_key_bytes() != info.public_key:
        raise KeyFileCorrupt(f'{where}: stored public key does not match the decrypted private key')
    return identity


def load_key(path: str | os.PathLike, passphrase: str | bytes | None = None) -> Identity:
    """Decrypt an identity key file; refuses loose permissions, corrupt files and wrong passphrases."""
    identity = decrypt_key_file(read_private_file(path, 'key file', MAX_KEY_FILE_BYTES), passphrase, path)
    logger.info('loaded %s key %r from %s (public key fingerprint %s)', identity.role.value, identity.key_id,
                path, fingerprint(identity.public_key_bytes()))
    return identity


def seal_secret(path: str | os.PathLike, secret: bytes, passphrase: str | bytes | None, context: bytes) -> None:
    """Write `secret` (at most 1 MiB) to a new file, encrypted like a key file under `passphrase` with
    `context` authenticated (module docstring), KDF cost `new_file_cost()`; mode 0600, never overwrites."""
    if len(secret) > MAX_SECRET_BYTES:
        raise KeyStoreError(f'{path}: a sealed secret holds at most {MAX_SECRET_BYTES} bytes')
    log2_n = new_file_cost()
    data = _encrypt(resolve_passphrase(passphrase), log2_n,
                    lambda salt, nonce: SEALED_MAGIC + bytes([log2_n]) + salt + nonce, secret, context)
    write_private_file(path, data, 'sealed secret')


def unseal_secret(path: str | os.PathLike, passphrase: str | bytes | None, context: bytes) -> bytes:
    """The secret `seal_secret` wrote with this `context`; the checks of `load_key` (0600, owner, regular
    file, KDF bounds), `KeyFileCorrupt` for a damaged header, `WrongPassphrase` for anything else."""
    path = Path(path)
    overhead = len(SEALED_MAGIC) + 1 + SALT_BYTES + NONCE_BYTES + TAG_BYTES
    data = read_private_file(path, 'sealed secret', MAX_SECRET_BYTES + overhead)
    return _parse_sealed(path, data).decrypt(resolve_passphrase(passphrase), context)


def destroy_secret(path: str | os.PathLike) -> None:
    """Overwrite a secret file with zeros, flush, unlink it and flush its directory; nothing if it is absent.

    On a journaling or copy-on-write file system (or an SSD) old blocks may survive the overwrite; what this
    guarantees is that no TensorGuard process can read the secret again, which is what forward secrecy
    against a later theft of the directory needs together with full-disk encryption.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except OSError as error:
        raise KeyStorageError(f'{path}: cannot destroy the secret ({error.strerror})') from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise KeyPathInvalid(f'{path}: not a secret file (a directory or other non-regular file)')
        with os.fdopen(os.dup(fd), 'wb') as handle:
            for start in range(0, status.st_size, 1 << 16):
                handle.write(bytes(min(1 << 16, status.st_size - start)))
        os.fsync(fd)
        path.unlink()
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as error:
        raise KeyStorageError(f'{path}: cannot destroy the secret ({error.strerror})') from None
    finally:
        os.close(fd)
