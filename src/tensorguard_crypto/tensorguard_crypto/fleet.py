"""Fleet provisioning (ROS-free): the fleet directory, server identities, robot enrolment and robot bundles.

Layout of a fleet directory (in production the fleet server holds ``server/`` and each robot only its
own two files; a simulated fleet keeps ``robots/<id>/`` side by side with ``server/``):

    server/kms/audit.log            KMS hash-chained audit log (+ .state.json)
    server/aggregator.key           Ed25519, role aggregator: signs round configs and manifests
    server/server.key               Ed25519, role server: signs models
    server/key_service.key          Ed25519, role key_service: signs round keys and decrypted aggregates
    server/key_service/rounds/<r>/  the key service's per-round lattice key (key_service.py)
    server/models/<v>.tgm           signed models; the highest is current (rounds.py)
    server/rounds/<r>/              the aggregator's round state and per-round transport key (rounds.py)
    robots/<id>/identity.key        the robot's Ed25519 key
    robots/<id>/trust.json          pinned public keys of the aggregator, the model server and the key service

There is no long-term lattice key: the key service makes one per round and destroys it after the
round's single decryption, so a later theft of the server's files opens no past round.

A robot bundle is what an operator carries to one robot: an uncompressed POSIX ustar archive, mode
0600, holding exactly two regular files, in this order, each mode 0600:

    identity.key    the robot's encrypted key file (keystore.py format)
    trust.json      {"keys": {"aggregator" | "server" | "key_service": {"role": ..., "public_key": hex}}}

`install_bundle` refuses any other member (a path such as ``../x`` or ``./identity.key``, a link, a
directory, a duplicate), a missing one, an archive over 64 KiB, and a bundle file that is not 0600.

Every private file is written 0600 and encrypted under the passphrase (``TENSORGUARD_KEY_PASSPHRASE``).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import keystore
from .identity import Identity, InvalidPublicKey, Role, check_id, fingerprint, load_public_key
from .kms import KeyAlreadyRegistered, KeyManagementSystem, KeyMetadata, KeyRecord, KeyStatus, KMSError, UnknownKey
from .verify import VerificationError, verify_model_package

AGGREGATOR_ID = 'aggregator'
SERVER_ID = 'server'
KEY_SERVICE_ID = 'key_service'
SERVER_IDENTITIES = ((AGGREGATOR_ID, Role.AGGREGATOR), (SERVER_ID, Role.SERVER), (KEY_SERVICE_ID, Role.KEY_SERVICE))
ROBOT_KEY_FILE = 'identity.key'
TRUST_FILE = 'trust.json'
BUNDLE_MEMBERS = (ROBOT_KEY_FILE, TRUST_FILE)
MAX_BUNDLE_BYTES = 64 * 1024


class ProvisioningError(Exception):
    """A fleet directory or a robot bundle cannot be used as asked; `reason` is a stable code."""

    reason = 'provisioning_error'


class FleetAlreadyProvisioned(ProvisioningError):
    """`fleet init` on a directory whose ``server/`` already holds something."""

    reason = 'fleet_exists'


class FleetNotProvisioned(ProvisioningError):
    """The directory has no fleet KMS yet."""

    reason = 'fleet_not_provisioned'


class NotARobot(ProvisioningError):
    """A robot command named a key that is not an active robot of this fleet."""

    reason = 'not_a_robot'


class BundleExists(ProvisioningError):
    """Refusing to overwrite an existing bundle file."""

    reason = 'bundle_exists'


class InvalidBundle(ProvisioningError):
    """The file is not a robot bundle: not a tar archive, unexpected or missing members, bad contents."""

    reason = 'invalid_bundle'


class RobotFilesExist(ProvisioningError):
    """A robot directory already holds an identity key or trust file."""

    reason = 'robot_files_exist'


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

    @property
    def models_dir(self) -> Path:
        """Signed model versions (``<v>.tgm``)."""
        return self.server / 'models'

    @property
    def rounds_dir(self) -> Path:
        """The aggregator's per-round directories."""
        return self.server / 'rounds'

    def server_key(self, key_id: str) -> Path:
        """Identity key file of one server component (the id is checked first: it becomes a file name)."""
        return self.server / f'{check_id(key_id, "server key id")}.key'

    def robot_dir(self, robot_id: str) -> Path:
        """A robot's directory (the id is checked first: it becomes a directory name)."""
        return self.root / 'robots' / check_id(robot_id, 'robot id')

    def kms(self) -> KeyManagementSystem:
        """The fleet's KMS."""
        return KeyManagementSystem(audit_log_path=self.kms_log)


@dataclass(frozen=True)
class RobotFiles:
    """A robot's key file and trust file, as bytes (what a bundle carries)."""

    robot_id: str
    public_key: bytes
    key_file: bytes
    trust_file: bytes


def passphrase_from_environment() -> bytes:
    """The passphrase of the fleet's key files, from ``TENSORGUARD_KEY_PASSPHRASE`` (never an argument)."""
    if not os.environ.get(keystore.PASSPHRASE_ENV):
        raise keystore.MissingPassphrase(f'set {keystore.PASSPHRASE_ENV} to open the fleet keys')
    return keystore.resolve_passphrase(None)


def load_server_identity(paths: FleetPaths, key_id: str, passphrase: bytes) -> Identity:
    """Load one server component's identity key."""
    return keystore.load_key(paths.server_key(key_id), passphrase)


def require_unprovisioned(paths: FleetPaths) -> None:
    """Raise `FleetAlreadyProvisioned` unless the directory has no (or an empty) ``server/``."""
    if (paths.server.exists() or paths.server.is_symlink()) and not (
            paths.server.is_dir() and not any(paths.server.iterdir())):
        raise FleetAlreadyProvisioned(f'{paths.server} already exists and is not empty; refusing to provision '
                                      'over it (choose a new fleet directory)')


def require_provisioned(paths: FleetPaths) -> KeyManagementSystem:
    """The fleet's KMS; `FleetNotProvisioned` if the directory has none (nothing is created)."""
    if not paths.kms_log.is_file():
        raise FleetNotProvisioned(f'{paths.root} is not a provisioned fleet directory (no {paths.kms_log}); '
                                  'run `tensorguard fleet init` first')
    return paths.kms()


def _register(kms: KeyManagementSystem, key_id: str, role: Role, public_key: bytes, owner: str) -> KeyRecord:
    return kms.register_key(key_id, KeyMetadata(key_id=key_id, created_at=datetime.now(timezone.utc), owner=owner,
                                                role=role, public_key=public_key))


def provision_server(paths: FleetPaths, passphrase: bytes, owner: str = 'fleet') -> list[KeyRecord]:
    """Create the server's three identities in a fresh fleet directory and enrol them in its new KMS."""
    require_unprovisioned(paths)
    paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths.server.mkdir(mode=0o700, exist_ok=True)
    kms = paths.kms()
    records = []
    for key_id, role in SERVER_IDENTITIES:
        identity = keystore.generate_key(paths.server_key(key_id), passphrase=passphrase, key_id=key_id, role=role)
        records.append(_register(kms, key_id, role, identity.public_key_bytes(), owner))
    return records


def _trust_file(kms: KeyManagementSystem) -> bytes:
    pinned = {key_id: {'role': role.value, 'public_key': kms.public_key_for(key_id, role).hex()}
              for key_id, role in SERVER_IDENTITIES}
    return json.dumps({'keys': pinned}, indent=2).encode()


def _active_robot(kms: KeyManagementSystem, robot_id: str) -> KeyRecord:
    try:
        record = kms.get(robot_id)
    except UnknownKey:
        raise NotARobot(f'{robot_id!r} is not enrolled in this fleet') from None
    if record.metadata.role is not Role.ROBOT:
        raise NotARobot(f"{robot_id!r} is the fleet's {record.metadata.role.value} identity, not a robot "
                        '(use `tensorguard kms` for server keys)')
    if record.status is KeyStatus.REVOKED:
        raise NotARobot(f'robot {robot_id!r} was revoked; revocation is permanent (enrol a new robot id)')
    return record


def check_enrollment(paths: FleetPaths, robot_id: str, bundle: Path | None, rotate: bool = False) -> None:
    """Refuse, before any key is made, what enrolling (or, with `rotate`, rotating) `robot_id` would refuse:
    an unprovisioned fleet, an id already registered (for rotation: not an active robot), an existing bundle."""
    kms = require_provisioned(paths)
    check_id(robot_id, 'robot id')
    if rotate:
        _active_robot(kms, robot_id)
    elif robot_id in {record.metadata.key_id for record in kms.list_keys()}:
        raise KeyAlreadyRegistered(f'key {robot_id!r} is already registered (rotate it, or choose a new robot id)')
    if bundle is not None and (bundle.exists() or bundle.is_symlink()):
        raise BundleExists(f'{bundle}: already exists; refusing to overwrite a robot bundle')


def _issue(paths: FleetPaths, robot_id: str, passphrase: bytes, deliver: Callable[[RobotFiles], list[Path]],
           enrol: Callable[[KeyManagementSystem, bytes], KeyRecord]) -> KeyRecord:
    """Make a robot key and trust file, deliver them, then change the KMS; undo the delivery if that fails,
    so a delivered key is always the enrolled one."""
    kms = require_provisioned(paths)
    identity, key_file = keystore.new_identity_file(robot_id, Role.ROBOT, passphrase)
    files = RobotFiles(robot_id, identity.public_key_bytes(), key_file, _trust_file(kms))
    written = deliver(files)
    try:
        return enrol(kms, files.public_key)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _bundle_bytes(files: RobotFiles) -> bytes:
    buffer = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buffer, mode='w', format=tarfile.USTAR_FORMAT) as archive:
        for name, data in ((ROBOT_KEY_FILE, files.key_file), (TRUST_FILE, files.trust_file)):
            member = tarfile.TarInfo(name)
            member.size, member.mode, member.mtime = len(data), 0o600, now
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def write_bundle(files: RobotFiles, bundle: Path) -> list[Path]:
    """Write a robot bundle (module docstring), mode 0600, never over an existing file; returns [bundle]."""
    try:
        keystore.write_private_file(bundle, _bundle_bytes(files), 'robot bundle')
    except keystore.KeyFileExists:
        raise BundleExists(f'{bundle}: already exists; refusing to overwrite a robot bundle') from None
    return [bundle]


def enroll_robot_bundle(paths: FleetPaths, robot_id: str, passphrase: bytes, bundle: Path,
                        owner: str = 'fleet') -> KeyRecord:
    """Create a robot's key (encrypted under `passphrase`) and trust file, write them as a bundle, then
    enrol the robot; nothing of the robot's key stays in the fleet directory."""
    check_enrollment(paths, robot_id, bundle)
    return _issue(paths, robot_id, passphrase, lambda files: write_bundle(files, bundle),
                  lambda kms, public_key: _register(kms, robot_id, Role.ROBOT, public_key, owner))


def rotate_robot_bundle(paths: FleetPaths, robot_id: str, passphrase: bytes, bundle: Path,
                        reason: str = '') -> KeyRecord:
    """Give an active robot a new key: a new bundle, then the KMS rotation (used from the next round)."""
    check_enrollment(paths, robot_id, bundle, rotate=True)
    return _issue(paths, robot_id, passphrase, lambda files: write_bundle(files, bundle),
                  lambda kms, public_key: kms.rotate_key(robot_id, public_key, reason))


def enroll_robot(paths: FleetPaths, robot_id: str, passphrase: bytes, owner: str = 'fleet') -> Path:
    """Enrol a robot whose files stay in the fleet directory (``robots/<id>/``, tests and in-process use);
    returns that directory."""
    robot_dir = paths.robot_dir(robot_id)
    check_enrollment(paths, robot_id, None)
    _issue(paths, robot_id, passphrase, lambda files: install_robot_files(files, robot_dir),
           lambda kms, public_key: _register(kms, robot_id, Role.ROBOT, public_key, owner))
    return robot_dir


def revoke_robot(paths: FleetPaths, robot_id: str, reason: str) -> KeyRecord:
    """Revoke an enrolled robot's key (permanent; refused for server identities)."""
    kms = require_provisioned(paths)
    _active_robot(kms, robot_id)
    return kms.revoke_key(robot_id, reason)


def _parse_trust(data: bytes, where: str) -> None:
    """Refuse a trust file that does not pin exactly the three server identities with their roles."""
    try:
        keys = json.loads(data)['keys']
        if sorted(keys) != sorted(key_id for key_id, _ in SERVER_IDENTITIES):
            raise ValueError('pins other identities than aggregator, server and key_service')
        for key_id, role in SERVER_IDENTITIES:
            if keys[key_id]['role'] != role.value:
                raise ValueError(f'{key_id} is not pinned with role {role.value}')
            load_public_key(bytes.fromhex(keys[key_id]['public_key']))
    except (ValueError, KeyError, TypeError, RecursionError, InvalidPublicKey) as error:
        detail = str(error) if isinstance(error, ValueError) else type(error).__name__
        raise InvalidBundle(f'{where}: not a valid trust file ({detail[:200]})') from None


def _member_problem(member: tarfile.TarInfo, seen: dict[str, bytes]) -> str:
    """Why an archive member cannot be part of a bundle ('' if it can)."""
    if member.name not in BUNDLE_MEMBERS:
        return f'is not one of {", ".join(BUNDLE_MEMBERS)}'
    if member.name in seen:
        return 'appears twice'
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        return 'is not a regular file (a link, directory or device)'
    return 'is too large' if member.size > MAX_BUNDLE_BYTES else ''


def read_bundle(bundle: Path) -> RobotFiles:
    """The two files of a robot bundle, checked (module docstring); the key stays encrypted."""
    data = keystore.read_private_file(bundle, 'robot bundle', MAX_BUNDLE_BYTES)
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode='r:') as archive:
            for member in archive:
                problem = _member_problem(member, members)
                if problem:
                    raise InvalidBundle(f'{bundle}: member {member.name[:100]!r} {problem}; a bundle holds exactly '
                                        'those two regular files, nothing was installed')
                members[member.name] = archive.extractfile(member).read()
    except (tarfile.TarError, ValueError, EOFError) as error:
        raise InvalidBundle(f'{bundle}: not a robot bundle (tar archive unreadable: {str(error)[:100]})') from None
    missing = [name for name in BUNDLE_MEMBERS if name not in members]
    if missing:
        raise InvalidBundle(f'{bundle}: not a robot bundle (missing {", ".join(missing)})')
    where = f'{bundle}:{ROBOT_KEY_FILE}'
    info = keystore.key_file_info(members[ROBOT_KEY_FILE], where)
    if info.role is not Role.ROBOT:
        raise InvalidBundle(f'{where}: holds a {info.role.value} key, not a robot key')
    _parse_trust(members[TRUST_FILE], f'{bundle}:{TRUST_FILE}')
    return RobotFiles(info.key_id, info.public_key, members[ROBOT_KEY_FILE], members[TRUST_FILE])


def install_robot_files(files: RobotFiles, robot_dir: Path, replace: bool = False) -> list[Path]:
    """Write a robot's ``identity.key`` and ``trust.json`` into `robot_dir` (0600; directory 0700 if new);
    existing files are refused unless `replace`, which swaps each in atomically. Returns the paths written."""
    targets = [(robot_dir / ROBOT_KEY_FILE, files.key_file, 'key file'),
               (robot_dir / TRUST_FILE, files.trust_file, 'trust file')]
    present = [str(path) for path, _, _ in targets if path.exists() or path.is_symlink()]
    if present and not replace:
        raise RobotFilesExist(f'{", ".join(present)} already exist; refusing to overwrite a robot\'s identity '
                              '(replace them explicitly, e.g. after a key rotation)')
    for path, data, what in targets:
        if replace:
            staged = path.with_name(f'.{path.name}.new')
            staged.unlink(missing_ok=True)
            keystore.write_private_file(staged, data, what)
            os.replace(staged, path)
        else:
            keystore.write_private_file(path, data, what)
    return [path for path, _, _ in targets]


def install_bundle(bundle: Path, robot_dir: Path, passphrase: bytes | None, replace: bool = False) -> RobotFiles:
    """Check a robot bundle, and with a `passphrase` that its key opens, then install its two files into
    `robot_dir` (see `install_robot_files`)."""
    files = read_bundle(bundle)
    if passphrase is not None:
        keystore.decrypt_key_file(files.key_file, passphrase, f'{bundle}:{ROBOT_KEY_FILE}')
    install_robot_files(files, robot_dir, replace)
    return files


@dataclass(frozen=True)
class IdentityStatus:
    """One enrolled key as `fleet_status` reports it."""

    key_id: str
    role: str
    status: str
    version: int
    fingerprint: str
    revocation_reason: str = ''


@dataclass(frozen=True)
class FleetStatus:
    """What is on disk in a fleet directory, checked; `problems` lists what an operator must look at."""

    root: str
    audit_log_entries: int
    audit_log_head: str
    server_identities: list[IdentityStatus]
    robots: list[IdentityStatus]
    model_versions: int
    current_model: int | None
    rounds: int
    rounds_closed: int
    round_open: int | None
    rounds_decrypted: int
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def _identity_status(record: KeyRecord) -> IdentityStatus:
    key = record.metadata.public_key
    return IdentityStatus(record.metadata.key_id, record.metadata.role.value, record.status.value, record.version,
                          fingerprint(key) if key else '-', record.revocation_reason)


def _server_key_problem(paths: FleetPaths, kms: KeyManagementSystem, key_id: str, role: Role) -> str:
    """'' if the server key file exists, is private and matches its active KMS entry; else the problem."""
    try:
        info = keystore.read_key_info(paths.server_key(key_id))
    except keystore.KeyStoreError as error:
        return str(error)
    try:
        enrolled = kms.public_key_for(key_id, role)
    except KMSError as error:
        return f'{key_id}: not an active {role.value} key in the KMS ({error})'
    if (info.key_id, info.role) != (key_id, role) or info.public_key != enrolled:
        return f'{info.path}: does not hold the {role.value} key the KMS enrolled as {key_id!r}'
    return ''


def _numbered(directory: Path, pattern: str) -> list[int]:
    """Sorted numbers of the entries named ``<n>`` or ``<n>.<ext>`` matching `pattern` in `directory`."""
    if not directory.is_dir():
        return []
    return sorted(int(path.stem) for path in directory.glob(pattern) if path.stem.isdigit())


def fleet_status(paths: FleetPaths) -> FleetStatus:
    """Verify the KMS audit log and report identities, models and rounds on disk; raises the KMS's
    `AuditLogTampered` / `StateMismatch` when the log does not verify (nothing else can be trusted then)."""
    kms = require_provisioned(paths)
    report = kms.verify_log()
    records = kms.list_keys()
    problems = [problem for key_id, role in SERVER_IDENTITIES
                if (problem := _server_key_problem(paths, kms, key_id, role))]
    models = _numbered(paths.models_dir, '*.tgm')
    if models:
        path = paths.models_dir / f'{models[-1]}.tgm'
        try:
            version = verify_model_package(path.read_bytes(), kms).model_version
        except (OSError, VerificationError) as error:
            problems.append(f'{path}: does not verify ({error})')
        else:
            if version != models[-1]:
                problems.append(f'{path}: holds model version {version}')
    rounds = _numbered(paths.rounds_dir, '*')
    closed = [r for r in rounds if (paths.rounds_dir / str(r) / 'outcome.json').exists()]
    return FleetStatus(
        root=str(paths.root), audit_log_entries=report.entries, audit_log_head=report.head_hash,
        server_identities=[_identity_status(r) for r in records if r.metadata.role is not Role.ROBOT],
        robots=[_identity_status(r) for r in records if r.metadata.role is Role.ROBOT],
        model_versions=len(models), current_model=models[-1] if models else None, rounds=len(rounds),
        rounds_closed=len(closed), round_open=rounds[-1] if rounds and rounds[-1] not in closed else None,
        rounds_decrypted=len(list((paths.server / 'key_service' / 'rounds').glob('*/decrypted.json'))),
        problems=problems)
