"""Fleet provisioning (ROS-free): server identities, robot enrolment, secrets sealed at rest.

Layout of a fleet directory (the fleet server's ``server/`` and each robot's ``robots/<id>/``
would live on different machines in production; a simulated fleet keeps them side by side):

    server/kms/audit.log            KMS hash-chained audit log (+ .state.json)
    server/aggregator.key           Ed25519, role aggregator: signs round configs and manifests
    server/server.key               Ed25519, role server: signs models
    server/key_service.key          Ed25519, role key_service: signs round keys and decrypted aggregates
    server/key_service/rounds/<r>/  the key service's per-round lattice key (key_service.py)
    server/rounds/<r>/              the aggregator's round state and per-round transport key (rounds.py)
    robots/<id>/identity.key        the robot's Ed25519 key
    robots/<id>/trust.json          pinned public keys of the aggregator, the model server and the key service

There is no long-term lattice key: the key service makes one per round and destroys it after the
round's single decryption, so a later theft of the server's files opens no past round.

Every private file is written 0600 and encrypted under the passphrase (``TENSORGUARD_KEY_PASSPHRASE``).
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tensorguard_crypto.identity import Role, check_id
from tensorguard_crypto.keystore import (DEFAULT_SCRYPT_LOG2_N, PASSPHRASE_ENV, derive_file_key, generate_key,
                                         load_key)
from tensorguard_crypto.kms import KeyManagementSystem, KeyMetadata

_SEALED_MAGIC = b'TGSEAL1'
_SALT_BYTES = 16
_NONCE_BYTES = 12

AGGREGATOR_ID = 'aggregator'
SERVER_ID = 'server'
KEY_SERVICE_ID = 'key_service'


class ProvisioningError(Exception):
    """A fleet directory is missing something, or a sealed secret does not open."""


@dataclass(frozen=True)
class FleetPaths:
    """Where every provisioned file of a fleet directory lives."""

    root: Path

    @property
    def server(self) -> Path:
        """The fleet server's directory."""
        return self.root / 'server'

    @property
    def kms_log(self) -> Path:
        """The KMS audit log."""
        return self.server / 'kms' / 'audit.log'

    def server_key(self, key_id: str) -> Path:
        """Identity key file of one server component (the id is checked first: it becomes a file name)."""
        return self.server / f'{check_id(key_id, "server key id")}.key'

    def robot_dir(self, robot_id: str) -> Path:
        """A robot's directory (the id is checked first: it becomes a directory name)."""
        return self.root / 'robots' / check_id(robot_id, 'robot id')

    def kms(self) -> KeyManagementSystem:
        """The fleet's KMS."""
        return KeyManagementSystem(audit_log_path=self.kms_log)


def seal(path: Path, secret: bytes, passphrase: bytes, context: bytes) -> None:
    """Write `secret` encrypted under `passphrase` (scrypt -> AES-256-GCM, `context` authenticated), 0600."""
    salt, nonce = secrets.token_bytes(_SALT_BYTES), secrets.token_bytes(_NONCE_BYTES)
    header = _SEALED_MAGIC + bytes([DEFAULT_SCRYPT_LOG2_N]) + salt + nonce
    blob = header + AESGCM(derive_file_key(passphrase, salt, DEFAULT_SCRYPT_LOG2_N)).encrypt(nonce, secret, header + context)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'wb') as f:
        f.write(blob)


def destroy(path: Path) -> None:
    """Overwrite a secret file with zeros, flush, unlink it and flush its directory.

    On a journaling or copy-on-write file system (or an SSD) old blocks may survive the overwrite;
    what this guarantees is that no TensorGuard process can read the secret again, which is what
    forward secrecy against a later theft of the directory needs together with full-disk encryption.
    """
    try:
        size = path.stat().st_size
        with open(path, 'r+b') as f:
            f.write(bytes(size))
            f.flush()
            os.fsync(f.fileno())
        path.unlink()
    except FileNotFoundError:
        return
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def unseal(path: Path, passphrase: bytes, context: bytes) -> bytes:
    """Inverse of `seal`; refuses loose permissions, a wrong passphrase and modified files."""
    if path.stat().st_mode & 0o077:
        raise ProvisioningError(f'{path}: permissions are looser than 0600')
    blob = path.read_bytes()
    head = len(_SEALED_MAGIC) + 1 + _SALT_BYTES + _NONCE_BYTES
    if len(blob) <= head or not blob.startswith(_SEALED_MAGIC):
        raise ProvisioningError(f'{path}: not a sealed TensorGuard secret')
    log2_n = blob[len(_SEALED_MAGIC)]
    salt = blob[len(_SEALED_MAGIC) + 1:len(_SEALED_MAGIC) + 1 + _SALT_BYTES]
    nonce = blob[head - _NONCE_BYTES:head]
    try:
        return AESGCM(derive_file_key(passphrase, salt, log2_n)).decrypt(nonce, blob[head:], blob[:head] + context)
    except InvalidTag:
        raise ProvisioningError(f'{path}: wrong passphrase, or the file was modified') from None


def _register(kms: KeyManagementSystem, key_id: str, role: Role, public_key: bytes, owner: str) -> None:
    kms.register_key(key_id, KeyMetadata(key_id=key_id, created_at=datetime.now(timezone.utc), owner=owner,
                                         role=role, public_key=public_key))


def provision_server(paths: FleetPaths, passphrase: bytes, owner: str = 'fleet') -> None:
    """Create the server's three identities and enrol them."""
    kms = paths.kms()
    for key_id, role in ((AGGREGATOR_ID, Role.AGGREGATOR), (SERVER_ID, Role.SERVER),
                         (KEY_SERVICE_ID, Role.KEY_SERVICE)):
        identity = generate_key(paths.server_key(key_id), passphrase=passphrase, key_id=key_id, role=role)
        _register(kms, key_id, role, identity.public_key_bytes(), owner)


def enroll_robot(paths: FleetPaths, robot_id: str, passphrase: bytes, owner: str = 'fleet') -> Path:
    """Create a robot's identity, enrol it, and write its trust file; returns the robot directory."""
    robot_dir = paths.robot_dir(robot_id)
    identity = generate_key(robot_dir / 'identity.key', passphrase=passphrase, key_id=robot_id, role=Role.ROBOT)
    kms = paths.kms()
    _register(kms, robot_id, Role.ROBOT, identity.public_key_bytes(), owner)
    pinned = {key_id: {'role': kms.get(key_id).metadata.role.value,
                       'public_key': kms.public_key_for(key_id).hex()}
              for key_id in (AGGREGATOR_ID, SERVER_ID, KEY_SERVICE_ID)}
    (robot_dir / 'trust.json').write_text(json.dumps({'keys': pinned}, indent=2))
    return robot_dir


def passphrase_from_environment() -> bytes:
    """The passphrase of the server's key files, from ``TENSORGUARD_KEY_PASSPHRASE`` (never an argument)."""
    value = os.environ.get(PASSPHRASE_ENV)
    if not value:
        raise ProvisioningError(f'set {PASSPHRASE_ENV} to open the server keys')
    return value.encode()


def load_server_identity(paths: FleetPaths, key_id: str, passphrase: bytes):
    """Load one server component's identity key."""
    return load_key(paths.server_key(key_id), passphrase)
