"""A canary decided on the robots' own reports, over DDS: two simulated robots, their edge nodes, the
aggregator and the key service in their own processes (the fleet of test_fleet_integration, two
robots). The gate makes every candidate a canary (min_success_rate 0, deploy_margin 1.0) and waits
for 2 autonomous episodes of it on the canary robot (robot_1, the first 25% of the fleet); the test
plays robot_1's behaviour tree through its edge node's start_episode / end_episode services.

The rollback round runs first, on purpose: until a candidate is promoted the server has no measured
reference, so its own regression check cannot fire and the server's second trial passes for sure
(min 0, KL limit 1e5); the only failing check is then the on-robot one (the canary's 0 of 2 against
the 2 of 2 robot_1 reported for the fleet's model, with max_regression 0.5). The promoting round
follows, still without a server reference (a rollback keeps none), and the attacker's reports last.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from tensorguard_crypto.keystore import load_key
from tensorguard_crypto.wire import ModelPackage
from tensorguard_crypto.wire import OutcomeReport as OutcomeReportRecord
from tensorguard_msgs.action import RunRound
from tensorguard_msgs.msg import OutcomeReport
from tensorguard_msgs.srv import EndEpisode, StartEpisode
from tensorguard_ros import qos, topics

sys.path.insert(0, str(Path(__file__).parent))
from test_fleet_integration import DATA, Fleet, Operator, wait_for  # noqa: E402 - the fleet test's fleet

pytestmark = [pytest.mark.ros, pytest.mark.slow]

ROBOTS = ['robot_1', 'robot_2']
CANARY = 'robot_1'
# fleet_test.yaml with this file appended: the canary gate and arms that stop after their demonstrations.
CANARY_PARAMS = DATA / 'fleet_canary_test.yaml'
_OVERRIDES = yaml.safe_load(CANARY_PARAMS.read_text())
MIN_EPISODES = _OVERRIDES['/tensorguard/aggregator']['ros__parameters']['canary_min_episodes']
MAX_REGRESSION = _OVERRIDES['/tensorguard/aggregator']['ros__parameters']['max_regression']
DEMONSTRATIONS = _OVERRIDES['/*/sim_robot']['ros__parameters']['max_episodes']


class CanaryOperator(Operator):
    """The fleet test's operator, plus the canary robot's episode services and the outcome reports seen."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[OutcomeReport] = []
        self.create_subscription(OutcomeReport, topics.OUTCOME_REPORTS, self.reports.append, qos.UPDATES)
        self.outcome_pub = self.create_publisher(OutcomeReport, topics.OUTCOME_REPORTS, qos.UPDATES)
        self.start_episode = self.create_client(StartEpisode, f'/{CANARY}/{topics.START_EPISODE}')
        self.end_episode = self.create_client(EndEpisode, f'/{CANARY}/{topics.END_EPISODE}')

    def autonomous_episode(self, success: bool) -> OutcomeReport:
        """One policy-driven episode on the canary robot, as its behaviour tree marks it; its report."""
        seen = len(self.reports)
        started = self.call(self.start_episode, StartEpisode.Request(task='push-v3', autonomous=True))
        assert started.accepted, started.message
        ended = self.call(self.end_episode, EndEpisode.Request(success=success))
        assert ended.accepted, ended.message
        wait_for(lambda: len(self.reports) > seen, 10, f'the outcome report of {CANARY} episode {ended.episode_index}')
        return self.reports[-1]

    def publish_report(self, robot_id: str, package: bytes) -> None:
        """Publish an OutcomeReport naming `robot_id` and carrying `package`, as an attacker on the network could."""
        msg = OutcomeReport(robot_id=robot_id, package=package)
        msg.header.stamp = self.get_clock().now().to_msg()
        self.outcome_pub.publish(msg)


class CanaryFleet(Fleet):
    """The running two-robot fleet with the canary gate, and the test's operator node."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir, CANARY_PARAMS.read_text(), len(ROBOTS), CanaryOperator)

    def start_round(self):
        """Send a RunRound goal; the future of its result."""
        op = self.operator
        assert op.run_round.wait_for_server(timeout_sec=60)
        goal = op.run_round.send_goal_async(RunRound.Goal())
        wait_for(goal.done, 30, 'the round goal to be accepted')
        return goal.result().get_result_async()

    def round_record(self, round_id: int) -> dict:
        """The round's line in server/rounds.jsonl."""
        lines = (self.paths.server / 'rounds.jsonl').read_text().splitlines()
        return next(entry for entry in map(json.loads, lines) if entry['round_id'] == round_id)

    def model(self, version: int) -> ModelPackage:
        """The signed model package of `version` the server published (server/models)."""
        return ModelPackage.deserialize((self.paths.server / 'models' / f'{version}.tgm').read_bytes())

    def tally(self) -> dict:
        """The aggregator's saved outcome tally (server/outcomes.json)."""
        return json.loads((self.paths.server / 'outcomes.json').read_text())


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    running = CanaryFleet(tmp_path_factory.mktemp('canary'))
    try:
        running.wait_until_ready(episodes=DEMONSTRATIONS)
        yield running
    finally:
        running.close()


def run_canary_round(fleet: CanaryFleet, success: bool) -> tuple[RunRound.Result, int]:
    """Run a round; once robot_1 applied the canary (and robot_2 did not), play MIN_EPISODES
    autonomous episodes of it on robot_1 ending with `success`. The result and the canary's version."""
    op = fleet.operator
    before = op.robots[CANARY].model_version
    result = fleet.start_round()
    wait_for(lambda: op.robots[CANARY].model_version > before, 150, f'{CANARY} to apply a canary model')
    canary = op.robots[CANARY].model_version
    assert all(op.robots[r].model_version == before for r in ROBOTS if r != CANARY), 'the canary reached everyone'
    for _ in range(MIN_EPISODES):
        report = OutcomeReportRecord.deserialize(bytes(op.autonomous_episode(success).package))
        assert (report.robot_id, report.model_version) == (CANARY, canary)
    wait_for(result.done, 120, 'the canary round to finish')
    return result.result().result, canary


def test_robots_failing_the_canary_roll_it_back(fleet):
    op = fleet.operator
    fleet_version = op.robots[CANARY].model_version
    for _ in range(MIN_EPISODES):
        op.autonomous_episode(success=True)
    wait_for(lambda: (op.fleet.on_robot_episodes, op.fleet.on_robot_successes) == (MIN_EPISODES, MIN_EPISODES), 10,
             "FleetStatus to carry the fleet model's on-robot tally")
    result, canary = run_canary_round(fleet, success=False)
    assert result.success, result.message
    assert result.gate_decision == 'canary'
    record = fleet.round_record(result.round_id)
    assert record['deployed_success_rate'] is None, 'the server had a reference: its trial could have failed'
    assert record['canary_robots'] == [CANARY]
    assert (record['canary_on_robot_episodes'], record['canary_on_robot_successes']) == (MIN_EPISODES, 0)
    assert record['canary_promoted'] is False
    assert record['canary_failures'] == [
        f"on-robot success 0.00 is more than {MAX_REGRESSION:.2f} below the fleet model's 1.00"]
    rollback = fleet.model(result.model_version)
    assert (result.model_version, rollback.parent_version, rollback.gate_decision) == (canary + 1, canary, 'rollback')
    assert rollback.parameters_sha256 == fleet.model(fleet_version).parameters_sha256
    assert rollback.parameters_sha256 != fleet.model(canary).parameters_sha256
    wait_for(lambda: all(s.model_version == result.model_version for s in op.robots.values()), 30,
             f'every robot to apply the rollback model {result.model_version}')


def test_robots_succeeding_with_the_canary_promote_it(fleet):
    op = fleet.operator
    result, canary = run_canary_round(fleet, success=True)
    assert result.success, result.message
    assert result.gate_decision == 'canary'
    record = fleet.round_record(result.round_id)
    assert (record['canary_on_robot_episodes'], record['canary_on_robot_successes']) == (MIN_EPISODES, MIN_EPISODES)
    assert (record['canary_promoted'], record['canary_failures']) == (True, [])
    promoted = fleet.model(result.model_version)
    assert (result.model_version, promoted.gate_decision) == (canary + 1, 'deploy')
    assert promoted.parameters_sha256 == fleet.model(canary).parameters_sha256
    wait_for(lambda: all(s.model_version == result.model_version for s in op.robots.values()), 30,
             f'every robot to apply the promoted model {result.model_version}')


def test_report_for_another_robot_and_replayed_report_are_refused_and_not_tallied(fleet):
    op = fleet.operator
    accepted = op.autonomous_episode(success=True)
    report = OutcomeReportRecord.deserialize(bytes(accepted.package))
    on_robot = (report.episodes, report.successes)  # robot_1 is the only robot reporting on this version
    wait_for(lambda: (op.fleet.model_version, op.fleet.on_robot_episodes, op.fleet.on_robot_successes)
             == (report.model_version, *on_robot), 10, f'FleetStatus to carry {CANARY} report {report.sequence}')
    tally, before = fleet.tally(), op.rejections()
    assert tally['sequences'][CANARY] == report.sequence
    robot_1 = load_key(fleet.paths.robot_dir(CANARY) / 'identity.key', fleet.passphrase)
    for_robot_2 = OutcomeReportRecord(robot_id='robot_2', sequence=10 ** 6, model_version=op.fleet.model_version,
                                      episodes=40, successes=40, created_at=time.time()).signed_by(robot_1)
    op.publish_report('robot_2', bytes(accepted.package))  # robot_1's signed report under robot_2's name
    op.publish_report('robot_2', for_robot_2.serialize())  # names robot_2, signed with robot_1's key
    op.publish_report(CANARY, bytes(accepted.package))  # the accepted report again, byte for byte
    expected = {'header_mismatch': 1, 'bad_signature': 1, 'replayed_report': 1}

    def changed() -> dict[str, int]:
        return {r: n - before.get(r, 0) for r, n in op.rejections().items() if n != before.get(r, 0)}

    wait_for(lambda: changed() == expected, 30, f'exactly the rejections {expected}')
    time.sleep(1.5)  # one more status period: nothing else was refused or accepted
    assert changed() == expected
    assert fleet.tally() == tally
    assert (op.fleet.on_robot_episodes, op.fleet.on_robot_successes) == on_robot
    assert not fleet.procs.dead()
