"""The /diagnostics builder and `Health` without DDS: levels, messages, key/values, log once per change."""
from __future__ import annotations

import logging

from diagnostic_msgs.msg import DiagnosticStatus

from tensorguard_ros.diagnostics import Health, diagnostic_status


def _values(status: DiagnosticStatus) -> dict[str, str]:
    return {pair.key: pair.value for pair in status.values}


def test_ok_without_faults_or_new_refusals():
    status = diagnostic_status('tensorguard: aggregator', '/fleets/a', {}, {'malformed': 2}, {},
                               {'phase': 'idle', 'round': '3'})
    assert status.level == DiagnosticStatus.OK
    assert (status.name, status.hardware_id, status.message) == ('tensorguard: aggregator', '/fleets/a', 'ok')
    assert list(_values(status).items()) == [('phase', 'idle'), ('round', '3'), ('refused: malformed', '2')]


def test_new_refusals_warn_and_faults_are_errors():
    warn = diagnostic_status('n', 'h', {}, {'header_mismatch': 3}, {'header_mismatch': 1}, {})
    assert warn.level == DiagnosticStatus.WARN
    assert warn.message == 'refused since last report: header_mismatch x1'
    error = diagnostic_status('n', 'h', {'kms': 'KMS audit log does not verify', 'key_service': 'unreachable'},
                              {'header_mismatch': 3}, {'header_mismatch': 1}, {})
    assert error.level == DiagnosticStatus.ERROR
    assert error.message == 'unreachable; KMS audit log does not verify'  # by condition name
    assert _values(error)['fault: kms'] == 'KMS audit log does not verify'


def test_health_logs_each_change_once_and_reports_new_refusals(caplog):
    health = Health(logging.getLogger('test_health'))
    changes = []
    health.on_change = lambda: changes.append(health.faults())
    with caplog.at_level(logging.INFO, logger='test_health'):
        for _ in range(5):
            health.fault('kms', 'audit log tampered at line 2')
        health.fault('kms', 'audit log tampered at line 3')
        health.clear('kms')
        health.clear('kms')
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.ERROR, logging.INFO]
    assert 'recovered (kms)' in caplog.records[-1].getMessage()
    assert changes == [{'kms': 'audit log tampered at line 2'}, {'kms': 'audit log tampered at line 3'}, {}]

    health.refuse('audit_log_tampered')
    health.refuse('audit_log_tampered')
    assert health.report() == ({}, {'audit_log_tampered': 2}, {'audit_log_tampered': 2})
    health.refuse('header_mismatch')
    assert health.report() == ({}, {'audit_log_tampered': 2, 'header_mismatch': 1}, {'header_mismatch': 1})
    assert health.report()[2] == {}
    assert health.refusals() == {'audit_log_tampered': 2, 'header_mismatch': 1}
