"""A real fleet in real processes over DDS: 3 simulated robots, their edge nodes, the aggregator
and the key service, each its own process. One fleet serves the whole module; the tests run in
order and each leaves the fleet running for the next (faults last)."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import rclpy
from rclpy.action import ActionClient
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node

from tensorguard_aggregator.provisioning import AGGREGATOR_ID, FleetPaths, load_server_identity
from tensorguard_aggregator.simulated_fleet import Processes, load_config, provision, start_fleet
from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.wire import AggregateRequest, RoundConfigPackage, UpdatePackage
from tensorguard_msgs.action import RunRound
from tensorguard_msgs.msg import EncryptedUpdate, FleetStatus, RobotStatus
from tensorguard_msgs.srv import DecryptAggregate, RevokeRobot, TriggerRound
from tensorguard_ros import qos, topics

pytestmark = [pytest.mark.ros, pytest.mark.slow]

DATA = Path(__file__).parent / 'data'
ROBOTS = ['robot_1', 'robot_2', 'robot_3']


class Operator(Node):
    """The test's own node: watches status, calls services and the action, injects bad updates."""

    def __init__(self) -> None:
        super().__init__('test_operator')
        self.fleet: FleetStatus | None = None
        self.robots: dict[str, RobotStatus] = {}
        self.create_subscription(FleetStatus, topics.FLEET_STATUS, self._on_fleet, qos.STATUS)
        for robot in ROBOTS:
            self.create_subscription(RobotStatus, f'/{robot}/status', self._on_robot, qos.STATUS)
        self.updates = self.create_publisher(EncryptedUpdate, topics.ENCRYPTED_UPDATES, qos.UPDATES)
        self.run_round = ActionClient(self, RunRound, topics.RUN_ROUND)
        self.trigger = self.create_client(TriggerRound, topics.TRIGGER_ROUND)
        self.revoke = self.create_client(RevokeRobot, topics.REVOKE_ROBOT)
        self.decrypt = self.create_client(DecryptAggregate, topics.DECRYPT_AGGREGATE)

    def _on_fleet(self, msg: FleetStatus) -> None:
        self.fleet = msg

    def _on_robot(self, msg: RobotStatus) -> None:
        self.robots[msg.robot_id] = msg

    def rejections(self) -> dict[str, int]:
        """The aggregator's published rejection counters."""
        return {r.reason: r.count for r in self.fleet.rejections} if self.fleet else {}

    def call(self, client, request, timeout: float = 60.0):
        """Call a service and wait for the answer."""
        assert client.wait_for_service(timeout_sec=timeout), f'{client.srv_name} is not available'
        future = client.call_async(request)
        wait_for(future.done, timeout, f'an answer from {client.srv_name}')
        return future.result()

    def send(self, robot_id: str, round_id: int, blob: bytes) -> None:
        """Publish an EncryptedUpdate carrying `blob`, with a correct transport digest."""
        msg = EncryptedUpdate(robot_id=robot_id, round_id=round_id, package_size=len(blob), package=blob)
        msg.package_sha256 = list(hashlib.sha256(blob).digest())
        self.updates.publish(msg)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
        time.sleep(0.2)


class Fleet:
    """The running fleet: processes, paths, the operator node and the passphrase."""

    def __init__(self, run_dir: Path) -> None:
        self.passphrase = secrets.token_urlsafe(24)
        shared, self.plan = load_config(DATA / 'fleet_test.yaml', DATA / 'fleet_test_plan.yaml')
        self.paths = FleetPaths(run_dir / 'fleet')
        (run_dir / 'logs').mkdir(parents=True)
        provision(self.paths, shared, self.plan, self.passphrase.encode(), lambda _text: None)
        self.procs = Processes(run_dir / 'logs', {**os.environ, 'TENSORGUARD_KEY_PASSPHRASE': self.passphrase,
                                                  'OMP_NUM_THREADS': '1'})
        self.params = DATA / 'fleet_test.yaml'
        start_fleet(self.procs, self.params, self.paths, self.plan)
        rclpy.init()
        self.operator = Operator()
        self.executor = MultiThreadedExecutor(num_threads=2)
        self.executor.add_node(self.operator)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def restart(self, name: str) -> None:
        """Start a killed node again with the same command line."""
        old = self.procs.children[name]
        self.procs.children[name] = subprocess.Popen(
            old.args, stdout=open(self.procs.log_dir / f'{name}.restart.log', 'w'),
            stderr=subprocess.STDOUT, env=self.procs.env, start_new_session=True)

    def kill(self, name: str) -> None:
        """SIGKILL a node (no chance to clean up)."""
        child = self.procs.children[name]
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()

    def alive(self, name: str) -> bool:
        return self.procs.children[name].poll() is None

    def run_round(self) -> RunRound.Result:
        op = self.operator
        assert op.run_round.wait_for_server(timeout_sec=60)
        goal = op.run_round.send_goal_async(RunRound.Goal())
        wait_for(goal.done, 30, 'the round goal to be accepted')
        result = goal.result().get_result_async()
        wait_for(result.done, 180, 'the round to finish')
        return result.result().result

    def close(self) -> None:
        self.executor.shutdown()
        self.operator.destroy_node()
        rclpy.try_shutdown()
        self.procs.stop_all()


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    running = Fleet(tmp_path_factory.mktemp('fleet'))
    try:
        op = running.operator
        wait_for(lambda: op.fleet is not None and len(op.robots) == len(ROBOTS), 120, 'every node to report')
        wait_for(lambda: all(s.episodes_buffered >= 2 for s in op.robots.values()), 120, 'demonstrations')
        yield running
    finally:
        running.close()


def test_two_rounds_advance_the_model_and_every_robot_applies_it(fleet):
    op = fleet.operator
    version = op.fleet.model_version
    for _ in range(2):
        result = fleet.run_round()
        assert result.success, result.message
        assert sorted(result.participants) == ROBOTS
        assert result.gate_decision in ('deploy', 'canary')
        assert result.model_version > version
        version = result.model_version
        wait_for(lambda: all(s.model_version == version for s in op.robots.values()), 60,
                 f'every robot to apply model {version}')
    assert all(s.epsilon_spent > 0 and s.last_update_bytes > 0 for s in op.robots.values())


def test_key_service_refuses_a_manifest_of_one_robot(fleet):
    round_dir = fleet.paths.server / 'rounds' / '1'
    config = RoundConfigPackage.deserialize((round_dir / 'config.bin').read_bytes())
    single = UpdatePackage.deserialize((round_dir / 'updates' / 'robot_1.tgu').read_bytes())
    aggregator = load_server_identity(fleet.paths, AGGREGATOR_ID, fleet.passphrase.encode())
    request = AggregateRequest(round_id=config.round_id, config_digest=config.config_digest(),
                               summed_bodies=single.bodies, contributions=(single.contribution(),),
                               signer_key_id=AGGREGATOR_ID, created_at=time.time()).signed_by(aggregator)
    response = fleet.operator.call(fleet.operator.decrypt, DecryptAggregate.Request(
        round_id=config.round_id, round_config=config.serialize(), request=request.serialize()))
    assert not response.success
    assert response.reason == 'quorum_not_met'
    assert len(response.result) == 0


def test_forged_replayed_and_malformed_updates_are_refused_by_reason(fleet):
    op = fleet.operator
    reply = op.call(op.trigger, TriggerRound.Request(deadline_seconds=60.0))
    assert reply.accepted, reply.message
    round_id = reply.round_id
    before = op.rejections()
    replayed = (fleet.paths.server / 'rounds' / '1' / 'updates' / 'robot_1.tgu').read_bytes()
    op.send('robot_1', 1, replayed)
    current = RoundConfigPackage.deserialize((fleet.paths.server / 'rounds' / str(round_id) / 'config.bin').read_bytes())
    honest = UpdatePackage.deserialize(replayed)
    impostor = Identity.generate('robot_1', Role.ROBOT)
    forged = UpdatePackage(**{**{f: getattr(honest, f) for f in honest.__dataclass_fields__},
                              'round_id': round_id, 'round_seed': current.round_seed,
                              'config_digest': current.config_digest(), 'model_version': current.model_version,
                              'signature': b''}).signed_by(impostor)
    op.send('robot_1', round_id, forged.serialize())
    op.send('robot_2', round_id, b'\x93not a package')
    expected = {'replayed_round': 1, 'bad_signature': 1, 'malformed': 1}
    wait_for(lambda: all(op.rejections().get(k, 0) - before.get(k, 0) >= n for k, n in expected.items()), 30,
             f'rejections {expected} (now {op.rejections()})')
    outcome = fleet.paths.server / 'rounds' / str(round_id) / 'outcome.json'
    wait_for(outcome.exists, 150, f'round {round_id} to close')
    assert sorted(json.loads(outcome.read_text())['participants']) == ROBOTS
    assert all(fleet.alive(name) for name in fleet.procs.children)


def test_dead_robot_restarted_aggregator_and_restarted_edge_node(fleet):
    op = fleet.operator
    episodes_before = op.robots['robot_3'].episodes_buffered
    reply = op.call(op.trigger, TriggerRound.Request(deadline_seconds=90.0))
    assert reply.accepted, reply.message
    round_id = reply.round_id
    wait_for(lambda: op.fleet.round_id == round_id and len(op.fleet.participants) == 2
             and op.robots['robot_3'].activity == 'training', 90,
             'the two fast robots to be accepted while robot_3 trains')
    fleet.kill('robot_3_edge')
    assert sorted(op.fleet.participants) == ['robot_1', 'robot_2'], 'robot_3 sent before it was killed'
    fleet.kill('aggregator')
    op.fleet = None
    fleet.restart('aggregator')
    wait_for(lambda: op.fleet is not None and op.fleet.round_id == round_id, 90, 'the aggregator to come back')
    assert sorted(op.fleet.participants) == ['robot_1', 'robot_2'], 'updates received before the crash were lost'
    fleet.restart('robot_3_edge')
    wait_for(lambda: op.robots['robot_3'].lifecycle_state == 'active'
             and op.robots['robot_3'].episodes_buffered >= episodes_before, 90, 'robot_3 to come back')
    outcome = fleet.paths.server / 'rounds' / str(round_id) / 'outcome.json'
    wait_for(outcome.exists, 150, f'round {round_id} to close')
    closed = json.loads(outcome.read_text())
    assert closed['outcome'] == 'aggregated'
    assert sorted(closed['participants']) == ROBOTS


def test_revoked_robot_is_refused_from_its_next_update(fleet):
    op = fleet.operator
    reply = op.call(op.revoke, RevokeRobot.Request(robot_id='robot_2', reason='stolen (test)'))
    assert reply.success, reply.message
    before = op.rejections().get('revoked_signer', 0)
    result = fleet.run_round()
    assert result.success, result.message
    assert sorted(result.participants) == ['robot_1', 'robot_3']
    wait_for(lambda: op.rejections().get('revoked_signer', 0) == before + 1, 30, 'the revoked update to be counted')
    assert all(fleet.alive(name) for name in fleet.procs.children)
