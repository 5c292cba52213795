"""KeyManagementSystem: enrolment, rotation and revocation of identity keys with a hash-chained audit log.

The audit log (JSON lines) is the source of truth; every entry holds the SHA-256 of the previous one,
so editing, deleting or reordering any past entry breaks the chain. The state file is a snapshot of
the replayed log plus the log head (sequence number and hash), which also catches a truncated tail.
Every lookup first checks whether the log changed on disk (another process, e.g. the `tensorguard`
CLI, may have revoked a key) and reloads it, so a revocation applies to the very next package.

Enrolment refuses ids outside the id grammar (identity.ID_PATTERN), weak Ed25519 public keys
(identity.check_public_key_strength) and a public key that any key id (including this one) ever had.
Replaying the log also builds each key's version history, so `public_key_for(..., as_of=t)` returns
the key that was active at time t: a rotation takes effect from the next round, not mid-round.
"""
from __future__ import annotations

import enum
import fcntl
import hashlib
import json
import logging
import math
import os
import secrets
import stat
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from .identity import (
    IdentityError,
    InvalidId,
    InvalidPublicKey,
    Role,
    WeakPublicKey,
    check_id,
    check_public_key_strength,
    fingerprint,
    load_public_key,
)

GENESIS_HASH = '0' * 64
STATE_FORMAT = 1
SECURITY_LEVELS = (128, 192, 256)
_ENTRY_KEYS = {'seq', 'time', 'action', 'key_id', 'data', 'prev', 'hash'}
_ENTRY_TYPES = {'seq': int, 'time': str, 'action': str, 'key_id': str, 'data': dict, 'prev': str, 'hash': str}
MAX_REASON_CHARS = 500
MAX_OWNER_CHARS = 128

logger = logging.getLogger(__name__)


class KMSError(Exception):
    """Base of KMS errors; `reason` is a short machine-readable code."""

    reason = 'kms_error'


class InvalidKeyMetadata(KMSError):
    """Metadata or arguments that cannot be enrolled (bad id, level, role or public key)."""

    reason = 'invalid_key_metadata'


class InvalidKeyId(InvalidKeyMetadata, InvalidId):
    """A key id outside the id grammar (identity.ID_PATTERN), given to any KMS call."""

    reason = 'invalid_id'


class WeakKeyRefused(InvalidKeyMetadata, WeakPublicKey):
    """A public key that must never be enrolled: non-canonical, of small order or outside the prime-order subgroup."""

    reason = 'weak_public_key'


class DuplicatePublicKey(KMSError):
    """The public key is, or once was, enrolled (under another id, or as an earlier version of this one)."""

    reason = 'duplicate_public_key'


class KMSStorageError(KMSError):
    """The audit log, state file or lock file cannot be used: a directory, a path under a regular file,
    not a regular file, or no permission."""

    reason = 'kms_storage_error'


class UnknownKey(KMSError):
    """No enrolled key under this id (or it has no public key)."""

    reason = 'unknown_key'


class KeyRevoked(KMSError):
    """The key was revoked; revocation is permanent."""

    reason = 'revoked_key'


class KeyAlreadyRegistered(KMSError):
    """A key id can be registered once (rotate to change its key)."""

    reason = 'key_already_registered'


class AuditLogTampered(KMSError):
    """The audit log's hash chain does not verify (an entry was edited, removed or reordered)."""

    reason = 'audit_log_tampered'


class StateMismatch(KMSError):
    """The state snapshot disagrees with the replayed audit log (tampering or truncation)."""

    reason = 'state_mismatch'


class KeyStatus(str, enum.Enum):
    """Lifecycle state of an enrolled key."""

    ACTIVE = 'active'
    REVOKED = 'revoked'


@dataclass(frozen=True)
class KeyMetadata:
    """What is enrolled for a key: id, creation time, owner, security level, role and raw public key."""

    key_id: str
    created_at: datetime
    owner: str
    security_level: int = 128
    role: Role = Role.ROBOT
    public_key: bytes = b''

    def to_json(self) -> dict:
        """JSON-ready form (public key in hex)."""
        return {'key_id': self.key_id, 'created_at': self.created_at.isoformat(), 'owner': self.owner,
                'security_level': self.security_level, 'role': Role(self.role).value,
                'public_key': self.public_key.hex()}

    @classmethod
    def from_json(cls, data: dict) -> 'KeyMetadata':
        """Inverse of `to_json`."""
        return cls(key_id=data['key_id'], created_at=datetime.fromisoformat(data['created_at']),
                   owner=data['owner'], security_level=data['security_level'], role=Role(data['role']),
                   public_key=bytes.fromhex(data['public_key']))


@dataclass(frozen=True)
class KeyRecord:
    """Current state of one key in the KMS."""

    metadata: KeyMetadata
    status: KeyStatus
    version: int
    updated_at: str
    revocation_reason: str = ''

    def to_json(self) -> dict:
        """JSON-ready form."""
        return {'metadata': self.metadata.to_json(), 'status': self.status.value, 'version': self.version,
                'updated_at': self.updated_at, 'revocation_reason': self.revocation_reason}


@dataclass(frozen=True)
class _KeyVersion:
    """One public key of a key id, and the unix time of the audit entry that installed it."""

    version: int
    public_key: bytes
    since: float


@dataclass(frozen=True)
class AuditLogReport:
    """Result of a successful audit-log verification."""

    entries: int
    head_hash: str


def _entry_hash(entry: dict) -> str:
    body = {key: value for key, value in entry.items() if key != 'hash'}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(',', ':')).encode()).hexdigest()


def _check_key_id(value: Any) -> str:
    try:
        return check_id(value, 'key id')
    except InvalidId as error:
        raise InvalidKeyId(str(error)) from None


def _check_public_key_format(public_key: bytes) -> bytes:
    try:
        load_public_key(public_key)
    except InvalidPublicKey as error:
        raise InvalidKeyMetadata(str(error)) from None
    return bytes(public_key)


def _check_public_key(public_key: bytes) -> bytes:
    """A public key fit for enrolment: a valid Ed25519 key that is not weak (checked on enrolment only,
    not on every replay of the log)."""
    public_key = _check_public_key_format(public_key)
    try:
        check_public_key_strength(public_key)
    except WeakPublicKey as error:
        raise WeakKeyRefused(str(error)) from None
    except InvalidPublicKey as error:
        raise InvalidKeyMetadata(str(error)) from None
    return public_key


def _check_metadata(metadata: KeyMetadata) -> None:
    _check_key_id(metadata.key_id)
    if not isinstance(metadata.owner, str) or not 0 < len(metadata.owner) <= MAX_OWNER_CHARS:
        raise InvalidKeyMetadata(f'owner must be a non-empty string of at most {MAX_OWNER_CHARS} chars')
    if metadata.security_level not in SECURITY_LEVELS:
        raise InvalidKeyMetadata(f'security_level must be one of {SECURITY_LEVELS}')
    if not isinstance(metadata.created_at, datetime):
        raise InvalidKeyMetadata('created_at must be a datetime')
    try:
        Role(metadata.role)
    except ValueError:
        raise InvalidKeyMetadata(f'role must be one of {[role.value for role in Role]}') from None
    if not isinstance(metadata.public_key, (bytes, bytearray)):
        raise InvalidKeyMetadata('public_key must be bytes (empty for a key enrolled without one)')
    if metadata.public_key:
        _check_public_key_format(metadata.public_key)


def _check_reason(reason: str) -> str:
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise InvalidKeyMetadata(f'reason must be a string of at most {MAX_REASON_CHARS} chars')
    return reason


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _unix_time(text: str) -> float:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError('entry time has no time zone')
    return moment.timestamp()


def _apply(keys: dict[str, KeyRecord], history: dict[str, list[_KeyVersion]], entry: dict) -> None:
    """Replay one audit entry onto the key table and the key history. The chain is unkeyed, so the entry
    must also describe a legal change with valid fields; anything else raises `AuditLogTampered`
    (a generic error from a malformed field is turned into it by the caller)."""
    key_id, data, action, seq = entry['key_id'], entry['data'], entry['action'], entry['seq']
    _check_key_id(key_id)
    since = _unix_time(entry['time'])
    record = keys.get(key_id)
    if action == 'register':
        metadata = KeyMetadata.from_json(data['metadata'])
        _check_metadata(metadata)
        if record is not None or metadata.key_id != key_id:
            raise AuditLogTampered(f'audit entry {seq}: registers {key_id!r} twice or under another id')
        keys[key_id] = KeyRecord(metadata, KeyStatus.ACTIVE, 1, entry['time'])
        history[key_id] = [_KeyVersion(1, metadata.public_key, since)] if metadata.public_key else []
        return
    if record is None or record.status is KeyStatus.REVOKED:
        raise AuditLogTampered(f'audit entry {seq}: {action} of a key that is not active')
    if action == 'rotate':
        public_key = _check_public_key_format(bytes.fromhex(data['public_key']))
        version = data['version']
        if type(version) is not int or version != record.version + 1:
            raise AuditLogTampered(f'audit entry {seq}: rotation to version {version!r} after {record.version}')
        _check_reason(data['reason'])
        keys[key_id] = replace(record, metadata=replace(record.metadata, public_key=public_key), version=version,
                               updated_at=entry['time'])
        history[key_id].append(_KeyVersion(version, public_key, since))
    elif action == 'revoke':
        keys[key_id] = replace(record, status=KeyStatus.REVOKED, updated_at=entry['time'],
                               revocation_reason=_check_reason(data['reason']))
    else:
        raise AuditLogTampered(f'audit entry {seq}: unknown action')


def _open_regular(path: Path, what: str) -> BinaryIO | None:
    """Open an existing KMS file for reading (None if absent); anything but a readable regular file
    raises `KMSStorageError`. O_NONBLOCK keeps a FIFO planted at the path from blocking the open."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise KMSStorageError(f'{path}: cannot read the {what} ({error.strerror})') from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise KMSStorageError(f'{path}: the {what} is not a regular file')
    return os.fdopen(fd, 'rb')


def _parse_entry(line: bytes, where: str) -> dict:
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise AuditLogTampered(f'{where}: not a JSON object') from None
    if type(entry) is not dict or set(entry) != _ENTRY_KEYS:
        raise AuditLogTampered(f'{where}: unexpected entry fields')
    wrong = sorted(name for name, kind in _ENTRY_TYPES.items() if type(entry[name]) is not kind)
    if wrong:
        raise AuditLogTampered(f'{where}: fields of the wrong type: {", ".join(wrong)}')
    return entry


def read_audit_log(path: Path) -> tuple[list[dict], str]:
    """Parse and verify a hash-chained audit log; returns the entries and the head hash."""
    entries: list[dict] = []
    previous = GENESIS_HASH
    handle = _open_regular(path, 'audit log')
    if handle is None:
        return entries, previous
    with handle:
        for line_number, line in enumerate(handle, start=1):
            where = f'{path}: line {line_number}'
            entry = _parse_entry(line, where)
            if entry['seq'] != len(entries):
                raise AuditLogTampered(f'{where}: sequence {entry["seq"]}, expected {len(entries)} '
                                       '(an entry was deleted or reordered)')
            if entry['prev'] != previous:
                raise AuditLogTampered(f'{where}: previous-hash link broken (entry deleted or reordered)')
            try:
                expected_hash = _entry_hash(entry)
            except (ValueError, RecursionError):
                raise AuditLogTampered(f'{where}: entry cannot be hashed (nested too deeply)') from None
            if entry['hash'] != expected_hash:
                raise AuditLogTampered(f'{where}: entry hash mismatch (entry edited)')
            entries.append(entry)
            previous = entry['hash']
    return entries, previous


def _snapshot_matches(snapshot: dict, keys: dict[str, KeyRecord], entries: int, head_hash: str) -> bool:
    return (snapshot.get('log_head') == {'entries': entries, 'hash': head_hash}
            and snapshot.get('keys') == {key_id: record.to_json() for key_id, record in keys.items()})


class KeyManagementSystem:
    """Enrolment, rotation and revocation of keys, persisted on disk with a hash-chained audit log."""

    def __init__(self, audit_log_path: str | os.PathLike, state_path: str | os.PathLike | None = None) -> None:
        self.audit_log_path = Path(audit_log_path)
        self.state_path = (Path(state_path) if state_path is not None
                           else self.audit_log_path.with_name(self.audit_log_path.name + '.state.json'))
        self._lock_path = self.audit_log_path.with_name(self.audit_log_path.name + '.lock')
        for directory in {self.audit_log_path.parent, self.state_path.parent}:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise KMSStorageError(f'{directory}: cannot create the KMS directory ({error.strerror})') from None
        self._keys: dict[str, KeyRecord] = {}
        self._history: dict[str, list[_KeyVersion]] = {}
        self._head = (0, GENESIS_HASH)
        self._log_stamp: tuple[int, int, int] | None = None
        with self._locked(exclusive=False):
            self._load()

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise KMSStorageError(f'{self._lock_path}: cannot open the KMS lock file ({error.strerror})') from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            status = os.stat(self.audit_log_path)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise KMSStorageError(f'{self.audit_log_path}: cannot read the audit log ({error.strerror})') from None
        return status.st_ino, status.st_size, status.st_mtime_ns

    def _replay(self, entries: list[dict]) -> tuple[dict[str, KeyRecord], dict[str, list[_KeyVersion]]]:
        keys: dict[str, KeyRecord] = {}
        history: dict[str, list[_KeyVersion]] = {}
        for entry in entries:
            try:
                _apply(keys, history, entry)
            except AuditLogTampered:
                raise
            except (KMSError, IdentityError, KeyError, ValueError, TypeError, AttributeError, OverflowError,
                    RecursionError):
                raise AuditLogTampered(f'{self.audit_log_path}: entry {entry["seq"]} ({entry["action"][:20]!r}) '
                                       'has missing or invalid fields and cannot be replayed') from None
        return keys, history

    def _load(self) -> None:
        entries, head_hash = read_audit_log(self.audit_log_path)
        keys, history = self._replay(entries)
        snapshot = self._read_state()
        state = snapshot if snapshot is not None else {'log_head': {'entries': 0, 'hash': GENESIS_HASH}, 'keys': {}}
        if not _snapshot_matches(state, keys, len(entries), head_hash):
            previous_hash = entries[-2]['hash'] if len(entries) > 1 else GENESIS_HASH
            if not (entries and _snapshot_matches(state, self._replay(entries[:-1])[0], len(entries) - 1,
                                                  previous_hash)):
                raise StateMismatch(
                    f'{self.state_path}: state file missing while the audit log has {len(entries)} entries'
                    if snapshot is None else
                    f'{self.state_path}: state snapshot disagrees with the audit log (log truncated or state edited)')
            logger.warning('kms: state snapshot is one entry behind the audit log (interrupted write); '
                           'using the verified log, the snapshot is rewritten at the next change')
        self._keys, self._history = keys, history
        self._head, self._log_stamp = (len(entries), head_hash), self._stamp()

    def _read_state(self) -> dict | None:
        handle = _open_regular(self.state_path, 'KMS state file')
        if handle is None:
            return None
        try:
            with handle:
                snapshot = json.load(handle)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise StateMismatch(f'{self.state_path}: not valid JSON') from None
        except OSError as error:
            raise KMSStorageError(f'{self.state_path}: cannot read the KMS state file ({error.strerror})') from None
        if type(snapshot) is not dict or snapshot.get('format') != STATE_FORMAT:
            raise StateMismatch(f'{self.state_path}: unknown state format')
        return snapshot

    def refresh(self) -> None:
        """Reload from disk if the audit log changed since it was last read (e.g. a CLI revocation)."""
        if self._stamp() != self._log_stamp:
            with self._locked(exclusive=False):
                self._load()

    def _append(self, action: str, key_id: str, data: dict) -> None:
        entry = {'seq': self._head[0], 'time': _now(), 'action': action, 'key_id': key_id, 'data': data,
                 'prev': self._head[1]}
        entry['hash'] = _entry_hash(entry)
        line = json.dumps(entry, sort_keys=True, separators=(',', ':')) + '\n'
        try:
            fd = os.open(self.audit_log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            raise KMSStorageError(f'{self.audit_log_path}: cannot append to the audit log ({error.strerror})') from None
        _apply(self._keys, self._history, entry)
        self._head = (self._head[0] + 1, entry['hash'])
        self._write_state()
        self._log_stamp = self._stamp()
        logger.info('kms %s %s (audit entry %d)', action, key_id, entry['seq'])

    def _write_state(self) -> None:
        snapshot = {'format': STATE_FORMAT, 'log_head': {'entries': self._head[0], 'hash': self._head[1]},
                    'keys': {key_id: record.to_json() for key_id, record in self._keys.items()}}
        temporary = self.state_path.with_name(f'.{self.state_path.name}.{secrets.token_hex(8)}.tmp')
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, 'w') as handle:
                json.dump(snapshot, handle, sort_keys=True, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.state_path)
        except OSError as error:
            with suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise KMSStorageError(f'{self.state_path}: cannot write the KMS state file ({error.strerror}); '
                                  'the audit log holds the change') from None

    @contextmanager
    def _mutation(self) -> Iterator[None]:
        with self._locked(exclusive=True):
            if self._stamp() != self._log_stamp:
                self._load()
            yield

    def _check_unused(self, key_id: str, public_key: bytes) -> None:
        for owner, versions in self._history.items():
            for version in versions:
                if version.public_key == public_key:
                    raise DuplicatePublicKey(
                        f'public key {fingerprint(public_key)} was already enrolled as '
                        + (f'version {version.version} of {key_id!r}; a retired key cannot be reinstalled'
                           if owner == key_id else f'{owner!r}; every key id needs its own key pair'))

    def register_key(self, key_id: str, metadata: KeyMetadata) -> KeyRecord:
        """Enrol a key (once per key id) with a strong public key no other id ever had; recorded in the audit log."""
        _check_key_id(key_id)
        _check_metadata(metadata)
        if metadata.key_id != key_id:
            raise InvalidKeyMetadata('key_id argument and metadata.key_id differ')
        if metadata.public_key:
            _check_public_key(metadata.public_key)
        with self._mutation():
            if key_id in self._keys:
                raise KeyAlreadyRegistered(f'key {key_id!r} is already registered ({self._keys[key_id].status.value})')
            if metadata.public_key:
                self._check_unused(key_id, bytes(metadata.public_key))
            self._append('register', key_id, {'metadata': metadata.to_json()})
            return self._keys[key_id]

    def rotate_key(self, key_id: str, new_public_key: bytes, reason: str = '') -> KeyRecord:
        """Replace an active key's public key by a strong one never enrolled before. Lookups without
        `as_of` return the new key at once; lookups `as_of` an earlier time (a round opened before the
        rotation) still return the key active then, so a rotation takes effect from the next round."""
        _check_key_id(key_id)
        new_public_key = _check_public_key(new_public_key)
        reason = _check_reason(reason)
        with self._mutation():
            record = self._active(key_id)
            if new_public_key == record.metadata.public_key:
                raise InvalidKeyMetadata('rotation must install a different public key')
            self._check_unused(key_id, new_public_key)
            self._append('rotate', key_id, {
                'public_key': new_public_key.hex(), 'version': record.version + 1, 'reason': reason,
                'previous_fingerprint': fingerprint(record.metadata.public_key) if record.metadata.public_key else ''})
            return self._keys[key_id]

    def revoke_key(self, key_id: str, reason: str = '') -> KeyRecord:
        """Revoke a key permanently; effective for the very next lookup in any process, whatever its `as_of`."""
        _check_key_id(key_id)
        reason = _check_reason(reason)
        with self._mutation():
            self._active(key_id)
            self._append('revoke', key_id, {'reason': reason})
            return self._keys[key_id]

    def _active(self, key_id: str) -> KeyRecord:
        record = self._keys.get(key_id)
        if record is None:
            raise UnknownKey(f'no key registered under {key_id!r}')
        if record.status is KeyStatus.REVOKED:
            raise KeyRevoked(f'key {key_id!r} was revoked')
        return record

    def get(self, key_id: str) -> KeyRecord:
        """Current record of a key (any status); raises `UnknownKey` (or `InvalidKeyId` for a malformed id)."""
        _check_key_id(key_id)
        self.refresh()
        record = self._keys.get(key_id)
        if record is None:
            raise UnknownKey(f'no key registered under {key_id!r}')
        return record

    def is_enrolled(self, key_id: str) -> bool:
        """Registered and not revoked (raises `InvalidKeyId` for a malformed id)."""
        _check_key_id(key_id)
        self.refresh()
        record = self._keys.get(key_id)
        return record is not None and record.status is KeyStatus.ACTIVE

    def is_revoked(self, key_id: str) -> bool:
        """Registered and revoked (raises `InvalidKeyId` for a malformed id)."""
        _check_key_id(key_id)
        self.refresh()
        record = self._keys.get(key_id)
        return record is not None and record.status is KeyStatus.REVOKED

    def public_key_for(self, key_id: str, role: Role | None = None, as_of: float | None = None) -> bytes:
        """Raw Ed25519 public key of an active key (optionally of the given role) for signature checks.

        Without `as_of`, the current key. With `as_of` (unix seconds, e.g. a round config's
        `created_at`), the version that was active at that time, or the first version if the key was
        enrolled later (enrolling mid-round is allowed). A revoked key raises `KeyRevoked` whatever `as_of`.
        """
        _check_key_id(key_id)
        if as_of is not None and (isinstance(as_of, bool) or not isinstance(as_of, (int, float))
                                  or not math.isfinite(as_of)):
            raise InvalidKeyMetadata('as_of must be a finite number of unix seconds')
        self.refresh()
        record = self._active(key_id)
        if not record.metadata.public_key:
            raise UnknownKey(f'key {key_id!r} has no enrolled public key')
        if role is not None and record.metadata.role != Role(role):
            raise UnknownKey(f'key {key_id!r} is enrolled as {record.metadata.role.value}, not {Role(role).value}')
        if as_of is None:
            return record.metadata.public_key
        versions = self._history[key_id]
        chosen = versions[0]
        for version in versions:
            if version.since <= as_of:
                chosen = version
        return chosen.public_key

    def list_keys(self) -> list[KeyRecord]:
        """All keys, sorted by id."""
        self.refresh()
        return [self._keys[key_id] for key_id in sorted(self._keys)]

    def verify_log(self) -> AuditLogReport:
        """Re-verify the whole audit log and its agreement with the state file; raises on tampering."""
        with self._locked(exclusive=False):
            self._load()
        return AuditLogReport(entries=self._head[0], head_hash=self._head[1])
