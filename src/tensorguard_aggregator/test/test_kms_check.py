"""`KMSCheck` without DDS: an edited audit log or state file keeps raising until it is restored."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tensorguard_aggregator.kms_check import KMSCheck
from tensorguard_crypto.identity import Identity
from tensorguard_crypto.kms import AuditLogTampered, KeyManagementSystem, KeyMetadata, StateMismatch


@pytest.fixture
def kms(tmp_path) -> KeyManagementSystem:
    kms = KeyManagementSystem(tmp_path / 'kms' / 'audit.log')
    for i in range(2):
        robot = Identity.generate(f'robot_{i}')
        kms.register_key(robot.key_id, KeyMetadata(
            key_id=robot.key_id, created_at=datetime.now(timezone.utc), owner='fleet',
            role=robot.role, public_key=robot.public_key_bytes()))
    return kms


@pytest.mark.parametrize('target, error', [('audit_log_path', AuditLogTampered), ('state_path', StateMismatch)])
def test_an_edited_file_raises_until_it_is_restored(kms, target, error):
    check = KMSCheck(kms)
    check()
    path = getattr(kms, target)
    original = path.read_bytes()
    path.write_bytes(original.replace(b'fleet', b'fleex', 1))
    for _ in range(2):
        with pytest.raises(error):
            check()
    path.write_bytes(original)
    check()
    assert [r.metadata.key_id for r in kms.list_keys()] == ['robot_0', 'robot_1']


def test_files_are_read_again_only_after_a_change(kms, monkeypatch):
    check = KMSCheck(kms)
    reads = []
    verify_log = kms.verify_log
    monkeypatch.setattr(kms, 'verify_log', lambda: reads.append(1) or verify_log())
    check()
    check()
    assert len(reads) == 1
    kms.revoke_key('robot_1', 'stolen')
    check()
    check()
    assert len(reads) == 2
