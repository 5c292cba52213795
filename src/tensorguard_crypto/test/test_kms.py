"""KeyManagementSystem: lifecycle persisted on disk, hash-chained audit log whose tampering is detected;
id grammar, weak and duplicate keys refused, key history for rotations from the next round."""
import hashlib
import json
import os
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tensorguard_crypto import kms as kms_module
from tensorguard_crypto.identity import Identity, InvalidId, Role, SignatureInvalid, verify_signature
from tensorguard_crypto.kms import (
    AuditLogTampered,
    DuplicatePublicKey,
    InvalidKeyId,
    InvalidKeyMetadata,
    KeyAlreadyRegistered,
    KeyManagementSystem,
    KeyMetadata,
    KeyRevoked,
    KeyStatus,
    KMSStorageError,
    StateMismatch,
    UnknownKey,
    WeakKeyRefused,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_identity import SMALL_ORDER_KEYS, mixed_order_key, non_canonical_keys  # noqa: E402


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


# --- Review issue 10: ids, weak keys, duplicate keys, rotation from the next round, garbage files ---

BAD_IDS = ['../x', 'a/b', 'Robot', '.', '', 'r' * 64]


def _fresh(tmp_path) -> KeyManagementSystem:
    return KeyManagementSystem(audit_log_path=tmp_path / 'kms' / 'audit.log')


@pytest.mark.parametrize('bad', BAD_IDS)
def test_every_kms_call_refuses_ids_outside_the_grammar(populated, bad):
    log, kms, _ = populated
    key = Identity.generate('robot_x').public_key_bytes()
    metadata = KeyMetadata(key_id=bad, created_at=datetime.now(timezone.utc), owner='o', public_key=key)
    calls = [lambda: kms.register_key(bad, metadata), lambda: kms.rotate_key(bad, key),
             lambda: kms.revoke_key(bad), lambda: kms.get(bad), lambda: kms.public_key_for(bad),
             lambda: kms.is_enrolled(bad), lambda: kms.is_revoked(bad)]
    for call in calls:
        with pytest.raises(InvalidKeyId) as info:
            call()
        assert isinstance(info.value, InvalidKeyMetadata) and isinstance(info.value, InvalidId)
        assert info.value.reason == 'invalid_id'
    assert kms.verify_log().entries == 6


def test_63_character_id_is_accepted(tmp_path):
    kms, robot = _fresh(tmp_path), Identity.generate('r' * 63)
    assert kms.register_key(robot.key_id, _metadata(robot)).metadata.key_id == 'r' * 63


def test_register_and_rotate_refuse_weak_public_keys(populated):
    """Small-order keys (all 8), a mixed-order key and non-canonical encodings: OpenSSL parses all of
    them (test_identity.py shows a forgery under the identity point), the KMS enrols none."""
    log, kms, _ = populated
    weak = SMALL_ORDER_KEYS + [mixed_order_key()] + non_canonical_keys()
    for number, key in enumerate(weak):
        metadata = KeyMetadata(key_id=f'weak_{number}', created_at=datetime.now(timezone.utc), owner='o',
                               public_key=key)
        with pytest.raises(WeakKeyRefused) as info:
            kms.register_key(f'weak_{number}', metadata)
        assert info.value.reason == 'weak_public_key' and isinstance(info.value, InvalidKeyMetadata)
        with pytest.raises(WeakKeyRefused):
            kms.rotate_key('robot_0', key)
    assert kms.verify_log().entries == 6 and kms.get('robot_0').version == 1


def test_public_key_enrolled_under_another_id_is_refused(populated):
    log, kms, robots = populated
    with pytest.raises(DuplicatePublicKey, match="'robot_0'") as info:
        kms.register_key('robot_copy', replace(_metadata(robots[0]), key_id='robot_copy'))
    assert info.value.reason == 'duplicate_public_key'
    with pytest.raises(DuplicatePublicKey, match="'robot_2'"):  # revoked key
        kms.register_key('robot_new', replace(_metadata(robots[2]), key_id='robot_new'))
    with pytest.raises(DuplicatePublicKey, match="'robot_1'"):  # robot_1's first, rotated-away key
        kms.register_key('robot_new', replace(_metadata(robots[1]), key_id='robot_new'))
    with pytest.raises(DuplicatePublicKey, match="'robot_0'"):
        kms.rotate_key('robot_1', robots[0].public_key_bytes())
    with pytest.raises(DuplicatePublicKey, match='version 1'):  # rolling back to a retired key
        kms.rotate_key('robot_1', robots[1].public_key_bytes())
    assert kms.verify_log().entries == 6
    reopened = KeyManagementSystem(audit_log_path=log)
    with pytest.raises(DuplicatePublicKey):
        reopened.register_key('robot_copy', replace(_metadata(robots[0]), key_id='robot_copy'))


@pytest.fixture
def clock(monkeypatch):
    """Audit entry times under the test's control: call `clock.at(t)` before a change."""
    class Clock:
        now = 1_000.0

        def at(self, seconds: float) -> None:
            self.now = seconds
    fixed = Clock()
    monkeypatch.setattr(kms_module, '_now',
                        lambda: datetime.fromtimestamp(fixed.now, timezone.utc).isoformat())
    return fixed


def test_rotation_applies_from_the_next_round(tmp_path, clock):
    """Before the fix, a rotation mid-round made the robot's already-accepted update fail verification."""
    kms = _fresh(tmp_path)
    v1, v2, v3 = (Identity.generate('robot_1') for _ in range(3))
    clock.at(1_000.0)
    kms.register_key('robot_1', _metadata(v1))
    round_created_at = 1_500.0
    update_signature = v1.sign(b'UpdatePackage', b'round 7 update')
    clock.at(2_000.0)
    kms.rotate_key('robot_1', v2.public_key_bytes(), 'scheduled')  # mid-round
    verify_signature(kms.public_key_for('robot_1', Role.ROBOT, as_of=round_created_at), b'UpdatePackage',
                     b'round 7 update', update_signature)
    with pytest.raises(SignatureInvalid):  # without as_of: the current key, as before
        verify_signature(kms.public_key_for('robot_1', Role.ROBOT), b'UpdatePackage', b'round 7 update',
                         update_signature)
    clock.at(3_000.0)
    kms.rotate_key('robot_1', v3.public_key_bytes())
    expected = {500.0: v1, 1_000.0: v1, 1_999.9: v1, 2_000.0: v2, 2_999.0: v2, 3_000.0: v3, 9e9: v3}
    for reopened in (kms, KeyManagementSystem(audit_log_path=tmp_path / 'kms' / 'audit.log')):
        for as_of, identity in expected.items():
            assert reopened.public_key_for('robot_1', as_of=as_of) == identity.public_key_bytes(), as_of
        assert reopened.public_key_for('robot_1') == v3.public_key_bytes()
        with pytest.raises(UnknownKey, match='not server'):
            reopened.public_key_for('robot_1', Role.SERVER, as_of=1_500.0)
    clock.at(4_000.0)
    kms.revoke_key('robot_1', 'stolen')
    for as_of in (None, 500.0, 1_500.0, 2_500.0, 5_000.0):
        with pytest.raises(KeyRevoked):
            kms.public_key_for('robot_1', as_of=as_of)


def test_key_enrolled_mid_round_and_key_added_by_rotation(tmp_path, clock):
    kms = _fresh(tmp_path)
    late, keyless_then_key = Identity.generate('robot_late'), Identity.generate('warehouse')
    clock.at(2_000.0)
    kms.register_key('robot_late', _metadata(late))
    kms.register_key('warehouse', replace(_metadata(keyless_then_key), public_key=b''))
    clock.at(3_000.0)
    kms.rotate_key('warehouse', keyless_then_key.public_key_bytes())
    assert kms.public_key_for('robot_late', as_of=1_000.0) == late.public_key_bytes()
    assert kms.public_key_for('warehouse', as_of=2_500.0) == keyless_then_key.public_key_bytes()


def test_state_file_format_is_unchanged_by_the_key_history(populated):
    log, kms, _ = populated
    snapshot = json.loads(log.with_name(log.name + '.state.json').read_text())
    assert set(snapshot) == {'format', 'log_head', 'keys'} and snapshot['format'] == 1
    assert set(snapshot['keys']['robot_1']) == {'metadata', 'status', 'version', 'updated_at', 'revocation_reason'}


@pytest.mark.parametrize('as_of', [float('nan'), float('inf'), '1500', True])
def test_as_of_must_be_finite_seconds(populated, as_of):
    _, kms, _ = populated
    with pytest.raises(InvalidKeyMetadata, match='as_of'):
        kms.public_key_for('robot_0', as_of=as_of)


def _rechain(lines):
    """Recompute every entry's prev/hash, as an attacker who edits entries would (the chain is unkeyed)."""
    out, previous = [], '0' * 64
    for line in lines:
        entry = json.loads(line)
        entry['prev'] = previous
        body = {k: v for k, v in entry.items() if k != 'hash'}
        entry['hash'] = previous = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(',', ':')).encode()).hexdigest()
        out.append(json.dumps(entry, sort_keys=True, separators=(',', ':')) + '\n')
    return out


def _edit_entry(index, change):
    def tamper(lines):
        entry = json.loads(lines[index])
        change(entry)
        lines[index] = json.dumps(entry) + '\n'
        return _rechain(lines)
    return tamper


DEEP = '[' * 100_000 + ']' * 100_000
GARBAGE_LOGS = {
    'deeply_nested_line': lambda lines: lines[:2] + [DEEP + '\n'] + lines[2:],
    'deeply_nested_data': lambda lines: lines[:5] + [
        lines[5].replace('"data":{', '"data":{"x":' + '[' * 990 + ']' * 990 + ',', 1)],
    'binary': lambda lines: lines[:1] + ['\udcff\udcfe\x00\x01garbage\n'],
    'huge_number': lambda lines: lines[:1] + ['{"seq":' + '9' * 5000 + '}\n'],
    'seq_string': _edit_entry(1, lambda e: e.update(seq='1')),
    'seq_bool': _edit_entry(1, lambda e: e.update(seq=True)),
    'seq_float': _edit_entry(1, lambda e: e.update(seq=1.0)),
    'data_list': _edit_entry(1, lambda e: e.update(data=[])),
    'time_garbage': _edit_entry(1, lambda e: e.update(time='yesterday')),
    'time_number': _edit_entry(1, lambda e: e.update(time=12)),
    'path_key_id': _edit_entry(1, lambda e: (e.update(key_id='../x'), e['data']['metadata'].update(key_id='../x'))),
    'unknown_action': _edit_entry(1, lambda e: e.update(action='promote')),
    'metadata_wrong_types': _edit_entry(1, lambda e: e['data']['metadata'].update(owner=['x'], security_level='128')),
    'public_key_not_hex': _edit_entry(1, lambda e: e['data']['metadata'].update(public_key='zz')),
    'rotation_version_string': _edit_entry(3, lambda e: e['data'].update(version='2')),
    'rotation_of_unknown_key': _edit_entry(3, lambda e: e.update(key_id='robot_9')),
    'register_twice': _edit_entry(1, lambda e: e.update(key_id='robot_0')),
    'revoke_reason_object': _edit_entry(4, lambda e: e['data'].update(reason={'a': 1})),
}


@pytest.mark.parametrize('name', sorted(GARBAGE_LOGS))
def test_garbage_audit_log_is_tampering_not_a_crash(populated, name):
    log, kms, _ = populated
    log.write_bytes(''.join(GARBAGE_LOGS[name](_lines(log))).encode('utf-8', 'surrogateescape'))
    with pytest.raises(AuditLogTampered):
        KeyManagementSystem(audit_log_path=log)
    with pytest.raises(AuditLogTampered):
        kms.verify_log()


def _appended(key_id, action, data):
    def tamper(lines):
        entry = {'seq': len(lines), 'time': '2030-01-01T00:00:00+00:00', 'action': action, 'key_id': key_id,
                 'data': data, 'prev': '', 'hash': ''}
        return _rechain(lines + [json.dumps(entry) + '\n'])
    return tamper


def _registration(key_id, **changes):
    metadata = {'key_id': key_id, 'created_at': '2030-01-01T00:00:00+00:00', 'owner': 'o', 'security_level': 128,
                'role': 'robot', 'public_key': Identity.generate('x').public_key_bytes().hex()}
    metadata.update(changes)
    return {'metadata': metadata}


APPENDED = {
    'path_key_id': _appended('../x', 'register', _registration('../x')),
    'owner_list': _appended('robot_7', 'register', _registration('robot_7', owner=['o'])),
    'public_key_short': _appended('robot_7', 'register', _registration('robot_7', public_key='00' * 12)),
    'rotation_version_string': _appended('robot_0', 'rotate', {'public_key': Identity.generate('x').public_key_bytes()
                                                               .hex(), 'version': '2', 'reason': ''}),
    'rotation_of_revoked_key': _appended('robot_2', 'rotate', {'public_key': Identity.generate('x').public_key_bytes()
                                                               .hex(), 'version': 2, 'reason': ''}),
    'revoke_reason_object': _appended('robot_0', 'revoke', {'reason': {'a': 1}}),
}


@pytest.mark.parametrize('name', sorted(APPENDED))
def test_appended_garbage_entry_is_refused_even_one_ahead_of_the_state(populated, name):
    """A single appended, correctly chained entry is accepted by the interrupted-write roll-forward (the
    state is then one entry behind), so replay itself must refuse entries that no KMS could have written:
    before the fix, '../x' was enrolled and a string version crashed the next rotation with a TypeError."""
    log, _, _ = populated
    log.write_text(''.join(APPENDED[name](_lines(log))))
    with pytest.raises(AuditLogTampered, match='entry 6'):
        KeyManagementSystem(audit_log_path=log)


GARBAGE_STATES = {
    'deeply_nested': DEEP.encode(),
    'binary': bytes(range(256)),
    'huge_number': b'{"format":' + b'9' * 5000 + b'}',
    'list': b'[1, 2]',
    'format_string': b'{"format": "1", "log_head": {}, "keys": {}}',
    'keys_wrong_type': b'{"format": 1, "log_head": {"entries": "6"}, "keys": []}',
}


@pytest.mark.parametrize('name', sorted(GARBAGE_STATES))
def test_garbage_state_file_is_state_mismatch_not_a_crash(populated, name):
    log, kms, _ = populated
    log.with_name(log.name + '.state.json').write_bytes(GARBAGE_STATES[name])
    with pytest.raises(StateMismatch):
        KeyManagementSystem(audit_log_path=log)
    with pytest.raises(StateMismatch):
        kms.verify_log()


def test_unusable_kms_paths_raise_kms_storage_error(tmp_path):
    regular = tmp_path / 'regular'
    regular.write_text('x')
    (tmp_path / 'dir').mkdir()
    os.mkfifo(tmp_path / 'fifo')
    cases = [dict(audit_log_path=tmp_path / 'dir'), dict(audit_log_path=regular / 'audit.log'),
             dict(audit_log_path=regular / 'sub' / 'audit.log'), dict(audit_log_path=tmp_path / 'fifo'),
             dict(audit_log_path=tmp_path / 'ok.log', state_path=tmp_path / 'dir'),
             dict(audit_log_path=tmp_path / 'ok.log', state_path=regular / 'state.json'),
             dict(audit_log_path=tmp_path / 'ok.log', state_path=tmp_path / 'fifo')]
    for case in cases:
        with pytest.raises(KMSStorageError) as info:
            KeyManagementSystem(**case)
        assert info.value.reason == 'kms_storage_error' and '\n' not in str(info.value)
