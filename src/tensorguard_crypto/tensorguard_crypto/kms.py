"""KeyManagementSystem: enrolment, rotation and revocation of identity keys with a hash-chained audit log.

The audit log (JSON lines) is the source of truth; every entry holds the SHA-256 of the previous one,
so editing, deleting or reordering any past entry breaks the chain. The state file is a snapshot of
the replayed log plus the log head (sequence number and hash), which also catches a truncated tail.
Every lookup first checks whether the log changed on disk (another process, e.g. the `tensorguard`
CLI, may have revoked a key) and reloads it, so a revocation applies to the very next package.
"""
from __future__ import annotations

import enum
import fcntl
import hashlib
import json
import logging
import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .identity import InvalidPublicKey, Role, fingerprint, load_public_key
from .wire import ID_PATTERN, MAX_ID_CHARS

GENESIS_HASH = '0' * 64
STATE_FORMAT = 1
SECURITY_LEVELS = (128, 192, 256)
_ENTRY_KEYS = {'seq', 'time', 'action', 'key_id', 'data', 'prev', 'hash'}
MAX_REASON_CHARS = 500

logger = logging.getLogger(__name__)


class KMSError(Exception):
    """Base of KMS errors; `reason` is a short machine-readable code."""

    reason = 'kms_error'


class InvalidKeyMetadata(KMSError):
    """Metadata or arguments that cannot be enrolled (bad id, level, role or public key)."""

    reason = 'invalid_key_metadata'


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
class AuditLogReport:
    """Result of a successful audit-log verification."""

    entries: int
    head_hash: str


def _entry_hash(entry: dict) -> str:
    body = {key: value for key, value in entry.items() if key != 'hash'}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(',', ':')).encode()).hexdigest()


def _check_id(name: str, value: Any) -> str:
    if type(value) is not str or len(value) > MAX_ID_CHARS or not ID_PATTERN.fullmatch(value):
        raise InvalidKeyMetadata(f'{name} must match {ID_PATTERN.pattern} and be at most {MAX_ID_CHARS} chars')
    return value


def _check_public_key(public_key: bytes) -> bytes:
    try:
        load_public_key(public_key)
    except InvalidPublicKey as error:
        raise InvalidKeyMetadata(str(error)) from None
    return bytes(public_key)


def _check_metadata(metadata: KeyMetadata) -> None:
    _check_id('key_id', metadata.key_id)
    if not isinstance(metadata.owner, str) or not 0 < len(metadata.owner) <= MAX_ID_CHARS:
        raise InvalidKeyMetadata(f'owner must be a non-empty string of at most {MAX_ID_CHARS} chars')
    if metadata.security_level not in SECURITY_LEVELS:
        raise InvalidKeyMetadata(f'security_level must be one of {SECURITY_LEVELS}')
    if not isinstance(metadata.created_at, datetime):
        raise InvalidKeyMetadata('created_at must be a datetime')
    try:
        Role(metadata.role)
    except ValueError:
        raise InvalidKeyMetadata(f'role must be one of {[role.value for role in Role]}') from None
    if metadata.public_key:
        _check_public_key(metadata.public_key)


def _check_reason(reason: str) -> str:
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise InvalidKeyMetadata(f'reason must be a string of at most {MAX_REASON_CHARS} chars')
    return reason


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _apply(keys: dict[str, KeyRecord], entry: dict) -> None:
    """Replay one audit entry onto the key table (entries are trusted once the chain verified)."""
    key_id, data, action = entry['key_id'], entry['data'], entry['action']
    if action == 'register':
        keys[key_id] = KeyRecord(KeyMetadata.from_json(data['metadata']), KeyStatus.ACTIVE, 1, entry['time'])
    elif action == 'rotate':
        record = keys[key_id]
        metadata = replace(record.metadata, public_key=bytes.fromhex(data['public_key']))
        keys[key_id] = replace(record, metadata=metadata, version=data['version'], updated_at=entry['time'])
    elif action == 'revoke':
        keys[key_id] = replace(keys[key_id], status=KeyStatus.REVOKED, updated_at=entry['time'],
                               revocation_reason=data['reason'])
    else:
        raise AuditLogTampered(f'audit entry {entry["seq"]}: unknown action')


def read_audit_log(path: Path) -> tuple[list[dict], str]:
    """Parse and verify a hash-chained audit log; returns the entries and the head hash."""
    entries: list[dict] = []
    previous = GENESIS_HASH
    if not path.exists():
        return entries, previous
    with path.open('rb') as handle:
        for line_number, line in enumerate(handle, start=1):
            where = f'{path}: line {line_number}'
            try:
                entry = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                raise AuditLogTampered(f'{where}: not a JSON object') from None
            if type(entry) is not dict or set(entry) != _ENTRY_KEYS:
                raise AuditLogTampered(f'{where}: unexpected entry fields')
            if entry['seq'] != len(entries):
                raise AuditLogTampered(f'{where}: sequence {entry["seq"]!r}, expected {len(entries)} '
                                       '(an entry was deleted or reordered)')
            if entry['prev'] != previous:
                raise AuditLogTampered(f'{where}: previous-hash link broken (entry deleted or reordered)')
            if entry['hash'] != _entry_hash(entry):
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
        self.audit_log_path.parent.mkdir(parents=True, exist_ok=True)
        self._keys: dict[str, KeyRecord] = {}
        self._head = (0, GENESIS_HASH)
        self._log_stamp: tuple[int, int, int] | None = None
        with self._locked(exclusive=False):
            self._load()

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
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
        return status.st_ino, status.st_size, status.st_mtime_ns

    def _replay(self, entries: list[dict]) -> dict[str, KeyRecord]:
        keys: dict[str, KeyRecord] = {}
        for entry in entries:
            try:
                _apply(keys, entry)
            except (KeyError, ValueError, TypeError, AttributeError):
                raise AuditLogTampered(f'{self.audit_log_path}: entry {entry["seq"]} cannot be replayed') from None
        return keys

    def _load(self) -> None:
        entries, head_hash = read_audit_log(self.audit_log_path)
        keys = self._replay(entries)
        snapshot = self._read_state()
        state = snapshot if snapshot is not None else {'log_head': {'entries': 0, 'hash': GENESIS_HASH}, 'keys': {}}
        if not _snapshot_matches(state, keys, len(entries), head_hash):
            previous_hash = entries[-2]['hash'] if len(entries) > 1 else GENESIS_HASH
            if not (entries and _snapshot_matches(state, self._replay(entries[:-1]), len(entries) - 1,
                                                  previous_hash)):
                raise StateMismatch(
                    f'{self.state_path}: state file missing while the audit log has {len(entries)} entries'
                    if snapshot is None else
                    f'{self.state_path}: state snapshot disagrees with the audit log (log truncated or state edited)')
            logger.warning('kms: state snapshot is one entry behind the audit log (interrupted write); '
                           'using the verified log, the snapshot is rewritten at the next change')
        self._keys, self._head, self._log_stamp = keys, (len(entries), head_hash), self._stamp()

    def _read_state(self) -> dict | None:
        try:
            with self.state_path.open('rb') as handle:
                snapshot = json.load(handle)
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            raise StateMismatch(f'{self.state_path}: not valid JSON') from None
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
        fd = os.open(self.audit_log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        _apply(self._keys, entry)
        self._head = (self._head[0] + 1, entry['hash'])
        self._write_state()
        self._log_stamp = self._stamp()
        logger.info('kms %s %s (audit entry %d)', action, key_id, entry['seq'])

    def _write_state(self) -> None:
        snapshot = {'format': STATE_FORMAT, 'log_head': {'entries': self._head[0], 'hash': self._head[1]},
                    'keys': {key_id: record.to_json() for key_id, record in self._keys.items()}}
        temporary = self.state_path.with_name(f'.{self.state_path.name}.{secrets.token_hex(8)}.tmp')
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'w') as handle:
            json.dump(snapshot, handle, sort_keys=True, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.state_path)

    @contextmanager
    def _mutation(self) -> Iterator[None]:
        with self._locked(exclusive=True):
            if self._stamp() != self._log_stamp:
                self._load()
            yield

    def register_key(self, key_id: str, metadata: KeyMetadata) -> KeyRecord:
        """Enrol a key (once per key id); recorded in the audit log."""
        _check_metadata(metadata)
        if metadata.key_id != key_id:
            raise InvalidKeyMetadata('key_id argument and metadata.key_id differ')
        with self._mutation():
            if key_id in self._keys:
                raise KeyAlreadyRegistered(f'key {key_id!r} is already registered ({self._keys[key_id].status.value})')
            self._append('register', key_id, {'metadata': metadata.to_json()})
            return self._keys[key_id]

    def rotate_key(self, key_id: str, new_public_key: bytes, reason: str = '') -> KeyRecord:
        """Replace an active key's public key; signatures by the old key stop verifying at once."""
        new_public_key = _check_public_key(new_public_key)
        with self._mutation():
            record = self._active(key_id)
            if new_public_key == record.metadata.public_key:
                raise InvalidKeyMetadata('rotation must install a different public key')
            self._append('rotate', key_id, {
                'public_key': new_public_key.hex(), 'version': record.version + 1, 'reason': _check_reason(reason),
                'previous_fingerprint': fingerprint(record.metadata.public_key) if record.metadata.public_key else ''})
            return self._keys[key_id]

    def revoke_key(self, key_id: str, reason: str = '') -> KeyRecord:
        """Revoke a key permanently; effective for the very next lookup in any process."""
        with self._mutation():
            self._active(key_id)
            self._append('revoke', key_id, {'reason': _check_reason(reason)})
            return self._keys[key_id]

    def _active(self, key_id: str) -> KeyRecord:
        record = self._keys.get(key_id)
        if record is None:
            raise UnknownKey(f'no key registered under {key_id!r}')
        if record.status is KeyStatus.REVOKED:
            raise KeyRevoked(f'key {key_id!r} was revoked')
        return record

    def get(self, key_id: str) -> KeyRecord:
        """Current record of a key (any status); raises `UnknownKey`."""
        self.refresh()
        record = self._keys.get(key_id)
        if record is None:
            raise UnknownKey(f'no key registered under {key_id!r}')
        return record

    def is_enrolled(self, key_id: str) -> bool:
        """Registered and not revoked."""
        self.refresh()
        record = self._keys.get(key_id)
        return record is not None and record.status is KeyStatus.ACTIVE

    def is_revoked(self, key_id: str) -> bool:
        """Registered and revoked."""
        self.refresh()
        record = self._keys.get(key_id)
        return record is not None and record.status is KeyStatus.REVOKED

    def public_key_for(self, key_id: str, role: Role | None = None) -> bytes:
        """Raw Ed25519 public key of an active key (optionally of the given role) for signature checks."""
        self.refresh()
        record = self._active(key_id)
        if not record.metadata.public_key:
            raise UnknownKey(f'key {key_id!r} has no enrolled public key')
        if role is not None and record.metadata.role != Role(role):
            raise UnknownKey(f'key {key_id!r} is enrolled as {record.metadata.role.value}, not {Role(role).value}')
        return record.metadata.public_key

    def list_keys(self) -> list[KeyRecord]:
        """All keys, sorted by id."""
        self.refresh()
        return [self._keys[key_id] for key_id in sorted(self._keys)]

    def verify_log(self) -> AuditLogReport:
        """Re-verify the whole audit log and its agreement with the state file; raises on tampering."""
        with self._locked(exclusive=False):
            self._load()
        return AuditLogReport(entries=self._head[0], head_hash=self._head[1])
