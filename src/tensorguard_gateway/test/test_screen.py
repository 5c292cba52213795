"""A site gateway carries a signed update or outcome report only for its own robots, keyed by the signed id."""
import sys
import time
from pathlib import Path

import pytest

from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.refusal import Reason
from tensorguard_crypto.wire import OutcomeReport
from tensorguard_gateway.keyexpr import ENCRYPTED_UPDATES, OUTCOME_REPORTS
from tensorguard_gateway.screen import GatewayRefusal, screen

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'tensorguard_crypto' / 'test'))
from crypto_test_support import make_round_config, make_update  # noqa: E402

SERVER = Identity.generate('aggregator', Role.AGGREGATOR)
CONFIG = make_round_config(SERVER)


def update_of(robot_id: str) -> bytes:
    return make_update(Identity.generate(robot_id), CONFIG).serialize()


def test_an_update_of_one_of_the_sites_robots_passes_with_its_signed_id():
    assert screen(ENCRYPTED_UPDATES, 'robot_1', update_of('robot_1'), ['robot_1', 'robot_2']) == 'robot_1'


@pytest.mark.parametrize('header, package, reason', [
    ('robot_3', update_of('robot_3'), Reason.FOREIGN_ROBOT),
    ('robot_1', update_of('robot_3'), Reason.HEADER_MISMATCH),
    ('robot_1', b'\x93not a package', Reason.MALFORMED),
    ('robot_1', b'\xc6' + bytes(70 * 1024 * 1024), Reason.OVERSIZED),
])
def test_updates_not_of_the_site_or_not_signed_records_are_refused_by_reason(header, package, reason):
    with pytest.raises(GatewayRefusal) as refused:
        screen(ENCRYPTED_UPDATES, header, package, ['robot_1', 'robot_2'])
    assert refused.value.reason is reason


def test_outcome_reports_are_screened_the_same_way():
    report = OutcomeReport(robot_id='robot_3', sequence=1, model_version=2, episodes=3, successes=1,
                           created_at=time.time()).signed_by(Identity.generate('robot_3')).serialize()
    assert screen(OUTCOME_REPORTS, 'robot_3', report, ['robot_3']) == 'robot_3'
    with pytest.raises(GatewayRefusal) as refused:
        screen(OUTCOME_REPORTS, 'robot_3', report, ['robot_1'])
    assert refused.value.reason is Reason.FOREIGN_ROBOT
