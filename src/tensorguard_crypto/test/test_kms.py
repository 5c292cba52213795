"""KeyManagementSystem: lifecycle persisted on disk, hash-chained audit log whose tampering is detected."""
import json
from datetime import datetime, timezone

import pytest

from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.kms import (AuditLogTampered, InvalidKeyMetadata, KeyAlreadyRegistered,
                                    KeyManagementSystem, KeyMetadata, KeyRevoked, KeyStatus, StateMismatch,
                                    UnknownKey)


def _metadata(identity: Identity, owner: str = 'GlobalLogistics') -> KeyMetadata:
    return KeyMetadata(key_id=identity.key_id, created_at=datetime.now(timezone.utc), owner=owner,
                       security_level=128, role=identity.role, public_key=identity.public_key_bytes())


@pytest.fixture
def populated(tmp_path):
    """A KMS with 3 robots registered, one rotated and one revoked (6 audit entries)."""
    log = tmp_path / 'logs' / 'key_audit.log'
    kms = KeyManagementSystem(audit_log_path=log)
    robots = [Identity.generate(f'robot_{i}') for i in range(3)]
    for robot in robots:
        kms.register_key(robot.key_id, _metadata(robot))
    kms.rotate_key('robot_1', Identity.generate('robot_1').public_key_bytes(), 'scheduled')
    kms.revoke_key('robot_2', 'stolen')
    kms.register_key('warehouse_v1', KeyMetadata(key_id='warehouse_v1', created_at=datetime.utcnow(),
                                                 owner='GlobalLogistics', security_level=128))
    return log, kms, robots


def test_brief_usage_and_lookups(populated):
    log, kms, robots = populated
    assert kms.is_enrolled('robot_0') and not kms.is_revoked('robot_0')
    assert kms.public_key_for('robot_0', Role.ROBOT) == robots[0].public_key_bytes()
    assert kms.public_key_for('robot_1') != robots[1].public_key_bytes()
    assert kms.get('robot_1').version == 2
    assert kms.is_revoked('robot_2') and not kms.is_enrolled('robot_2')
    with pytest.raises(KeyRevoked):
        kms.public_key_for('robot_2')
    with pytest.raises(UnknownKey):
        kms.public_key_for('robot_9')
    with pytest.raises(UnknownKey, match='no enrolled public key'):
        kms.public_key_for('warehouse_v1')
    with pytest.raises(UnknownKey, match='not server'):
        kms.public_key_for('robot_0', Role.SERVER)


def test_persistent_across_instances(populated, tmp_path):
    log, kms, _ = populated
    reopened = KeyManagementSystem(audit_log_path=log)
    assert [r.to_json() for r in reopened.list_keys()] == [r.to_json() for r in kms.list_keys()]
    assert reopened.verify_log().entries == 6
    assert reopened.get('robot_2').status is KeyStatus.REVOKED and reopened.get('robot_2').revocation_reason == 'stolen'


def test_lifecycle_rules(populated):
    _, kms, robots = populated
    with pytest.raises(KeyAlreadyRegistered):
        kms.register_key('robot_0', _metadata(robots[0]))
    with pytest.raises(KeyAlreadyRegistered):
        kms.register_key('robot_2', _metadata(robots[2]))
    with pytest.raises(KeyRevoked):
        kms.rotate_key('robot_2', Identity.generate('x').public_key_bytes())
    with pytest.raises(KeyRevoked):
        kms.revoke_key('robot_2')
    with pytest.raises(UnknownKey):
        kms.revoke_key('nobody')
    with pytest.raises(InvalidKeyMetadata):
        kms.rotate_key('robot_0', robots[0].public_key_bytes())
    with pytest.raises(InvalidKeyMetadata):
        kms.rotate_key('robot_0', b'\x00' * 12)
    bad = [dict(key_id='has space'), dict(security_level=100), dict(public_key=b'\x01' * 5), dict(owner='')]
    for change in bad:
        fields = dict(key_id='robot_x', created_at=datetime.now(timezone.utc), owner='o', security_level=128)
        fields.update(change)
        with pytest.raises(InvalidKeyMetadata):
            kms.register_key(fields['key_id'], KeyMetadata(**fields))


def test_revocation_from_another_instance_seen_at_next_lookup(populated):
    log, kms, _ = populated
    assert kms.is_enrolled('robot_0')
    KeyManagementSystem(audit_log_path=log).revoke_key('robot_0', 'stolen')
    assert kms.is_revoked('robot_0')


def _lines(log):
    return log.read_text().splitlines(keepends=True)


def _tamper_edit(lines):
    entry = json.loads(lines[1])
    entry['data']['metadata']['owner'] = 'Mallory'
    lines[1] = json.dumps(entry, sort_keys=True, separators=(',', ':')) + '\n'
    return lines


def _tamper_edit_and_rehash_one(lines):
    import hashlib
    entry = json.loads(lines[2])
    entry['data']['metadata']['public_key'] = Identity.generate('m').public_key_bytes().hex()
    body = {k: v for k, v in entry.items() if k != 'hash'}
    entry['hash'] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(',', ':')).encode()).hexdigest()
    lines[2] = json.dumps(entry, sort_keys=True, separators=(',', ':')) + '\n'
    return lines


TAMPERING = {
    'edit': _tamper_edit,
    'edit_and_rehash_entry': _tamper_edit_and_rehash_one,
    'delete_middle': lambda lines: lines[:2] + lines[3:],
    'delete_first': lambda lines: lines[1:],
    'reorder': lambda lines: [lines[0], lines[2], lines[1], *lines[3:]],
    'garbage_line': lambda lines: lines[:3] + ['not json\n'] + lines[3:],
}


@pytest.mark.parametrize('name', sorted(TAMPERING))
def test_audit_log_tampering_detected(populated, name):
    log, kms, _ = populated
    log.write_text(''.join(TAMPERING[name](_lines(log))))
    with pytest.raises(AuditLogTampered):
        KeyManagementSystem(audit_log_path=log)
    with pytest.raises(AuditLogTampered):
        kms.verify_log()


def test_truncated_tail_and_state_tampering_detected(populated):
    log, _, _ = populated
    original = log.read_text()
    log.write_text(''.join(_lines(log)[:-1]))
    with pytest.raises(StateMismatch):
        KeyManagementSystem(audit_log_path=log)
    log.write_text(original)
    state = log.with_name(log.name + '.state.json')
    snapshot = json.loads(state.read_text())
    snapshot['keys']['robot_2']['status'] = 'active'
    state.write_text(json.dumps(snapshot))
    with pytest.raises(StateMismatch):
        KeyManagementSystem(audit_log_path=log)
    state.unlink()
    with pytest.raises(StateMismatch, match='missing'):
        KeyManagementSystem(audit_log_path=log)


def test_log_entries_chain(populated):
    log, kms, _ = populated
    entries = [json.loads(line) for line in _lines(log)]
    assert [e['seq'] for e in entries] == list(range(6))
    assert all(b['prev'] == a['hash'] for a, b in zip(entries, entries[1:]))
    assert kms.verify_log().head_hash == entries[-1]['hash']
    assert [e['action'] for e in entries] == ['register'] * 3 + ['rotate', 'revoke', 'register']


def test_interrupted_write_rolls_forward_one_entry(populated, caplog):
    log, kms, _ = populated
    state = log.with_name(log.name + '.state.json')
    before = state.read_text()
    kms.revoke_key('robot_0', 'lost')
    state.write_text(before)  # as if the process died between the log append and the state write
    reopened = KeyManagementSystem(audit_log_path=log)
    assert reopened.is_revoked('robot_0') and 'interrupted write' in caplog.text
    reopened.revoke_key('robot_1')
    assert KeyManagementSystem(audit_log_path=log).verify_log().entries == 8
