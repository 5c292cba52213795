"""A real fleet in real processes over DDS: 3 simulated robots, their edge nodes, the aggregator
and the key service, each its own process. One fleet serves the whole module; the tests run in
order and each leaves the fleet running for the next (faults last)."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.action import ActionClient
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node

from tensorguard_crypto import update_codec
from tensorguard_crypto.accountant import DPProfile
from tensorguard_crypto.fleet import AGGREGATOR_ID, FleetPaths, enroll_robot, load_server_identity
from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.keystore import load_key
from tensorguard_crypto.wire import (
    AggregateRequest,
    AggregateResult,
    ModelPackage,
    RoundConfigPackage,
    RoundKeyAnnouncement,
    SafetyStats,
    UpdatePackage,
)
from tensorguard_learning.compression import adapter_round_coordinates
from tensorguard_learning.policy import MoEPolicy
from tensorguard_msgs.action import RunRound
from tensorguard_msgs.msg import EncryptedUpdate, FleetStatus, RobotStatus
from tensorguard_msgs.srv import DecryptAggregate, RevokeRobot, TriggerRound
from tensorguard_ros import qos, topics
from tensorguard_ros.package_transport import carry_package
from tensorguard_sim.plan import load_config
from tensorguard_sim.provisioning import provision
from tensorguard_sim.simulated_fleet import Processes, start_fleet

pytestmark = [pytest.mark.ros, pytest.mark.slow]

DATA = Path(__file__).parent / 'data'
ROBOTS = ['robot_1', 'robot_2', 'robot_3']
SERVER_NODES = ['tensorguard: aggregator', 'tensorguard: key_service']


class Operator(Node):
    """The test's own node: watches status, calls services and the action, injects bad updates."""

    def __init__(self) -> None:
        super().__init__('test_operator')
        self.fleet: FleetStatus | None = None
        self.robots: dict[str, RobotStatus] = {}
        self.diagnostics: dict[str, DiagnosticStatus] = {}
        self.create_subscription(FleetStatus, topics.FLEET_STATUS, self._on_fleet, qos.STATUS)
        # Best effort: matches every /diagnostics writer, reliable (server nodes) or not (edge nodes).
        self.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diagnostics, qos.STATUS)
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

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            self.diagnostics[status.name] = status

    def diagnosed(self, name: str, level: bytes, text: str = '') -> bool:
        """The last /diagnostics status of `name` has `level` and its message contains `text`."""
        status = self.diagnostics.get(name)
        return status is not None and status.level == level and text in status.message

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
        self.updates.publish(carry_package(EncryptedUpdate(robot_id=robot_id, round_id=round_id), blob))


def wait_for(predicate, timeout: float, what: str, procs: Processes | None = None) -> None:
    """Wait until `predicate()`; fail at the timeout, or at once when one of `procs` died (with its log)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        dead = procs.dead() if procs else []
        if dead or time.monotonic() > deadline:
            logs = ''.join(f'\n--- {name}\n' + (procs.log_dir / f'{name}.log').read_text() for name in dead)
            raise AssertionError(f'{", ".join(dead) or "nothing"} died; timed out after {timeout:.0f} s '
                                 f'waiting for {what}{logs}')
        time.sleep(0.2)


def fleet_parameters(run_dir: Path, overrides: str = '') -> Path:
    """fleet_test.yaml with `overrides` (parameter-file text) appended: a later section for the same
    node overrides an earlier one, so a test states only what differs (and no YAML is re-dumped)."""
    if not overrides:
        return DATA / 'fleet_test.yaml'
    path = run_dir / 'fleet.yaml'
    path.write_text((DATA / 'fleet_test.yaml').read_text() + '\n' + overrides)
    return path


class Fleet:
    """The running fleet: processes, paths, the operator node and the passphrase."""

    def __init__(self, run_dir: Path, overrides: str = '', robots: int | None = None,
                 operator: type[Operator] = Operator) -> None:
        self.passphrase = secrets.token_urlsafe(24)
        shared, plan = load_config(DATA / 'fleet_test.yaml', DATA / 'fleet_test_plan.yaml')
        self.plan = replace(plan, robots=robots or plan.robots)
        self.paths = FleetPaths(run_dir / 'fleet')
        (run_dir / 'logs').mkdir(parents=True)
        provision(self.paths, shared, self.plan, self.passphrase.encode(), lambda _text: None)
        self.procs = Processes(run_dir / 'logs', {**os.environ, 'TENSORGUARD_KEY_PASSPHRASE': self.passphrase,
                                                  'OMP_NUM_THREADS': '1'})
        self.params = fleet_parameters(run_dir, overrides)
        start_fleet(self.procs, self.params, self.paths, self.plan)
        rclpy.init()
        self.operator = operator()
        self.executor = MultiThreadedExecutor(num_threads=2)
        self.executor.add_node(self.operator)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def wait_until_ready(self, episodes: int) -> None:
        """Wait until every node reports and every robot holds `episodes` demonstrations."""
        op = self.operator
        wait_for(lambda: op.fleet is not None and len(op.robots) == self.plan.robots, 120, 'every node to report',
                 self.procs)
        wait_for(lambda: all(s.episodes_buffered >= episodes for s in op.robots.values()), 120, 'demonstrations',
                 self.procs)

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
        running.wait_until_ready(episodes=2)
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
        wait_for(lambda version=version: all(s.model_version == version for s in op.robots.values()), 60,
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
    round_dir = fleet.paths.server / 'rounds' / str(round_id)
    current = RoundConfigPackage.deserialize((round_dir / 'config.bin').read_bytes())
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
    wait_for(outcome.exists, 240, f'round {round_id} to close')
    assert sorted(json.loads(outcome.read_text())['participants']) == ROBOTS
    assert all(fleet.alive(name) for name in fleet.procs.children)


def test_update_whose_header_claims_another_robot_or_round_is_refused(fleet):
    op = fleet.operator
    if not list(fleet.paths.server.glob('rounds/*/updates/robot_1.tgu')):
        assert fleet.run_round().success  # run alone: one round leaves a signed package of robot_1
    path = max(fleet.paths.server.glob('rounds/*/updates/robot_1.tgu'), key=lambda p: int(p.parent.parent.name))
    blob = path.read_bytes()
    signed = UpdatePackage.deserialize(blob)
    before = op.rejections()
    for robot_id, round_id in [('robot_2', signed.round_id), ('robot_1', 4242), ('robot_2', 4242)]:
        op.send(robot_id, round_id, blob)
    wait_for(lambda: op.rejections().get('header_mismatch', 0) - before.get('header_mismatch', 0) == 3, 30,
             f'three header_mismatch refusals (now {op.rejections()})')
    time.sleep(1.5)  # one more status period: nothing else was refused or accepted
    changed = {r: n - before.get(r, 0) for r, n in op.rejections().items() if n != before.get(r, 0)}
    assert changed == {'header_mismatch': 3}
    logs = ''.join(p.read_text() for p in fleet.procs.log_dir.glob('aggregator*.log'))
    assert "refused update (header_mismatch): claimed 'robot_2', round 4242" in logs
    assert all(fleet.alive(name) for name in fleet.procs.children)


def test_dead_robot_restarted_aggregator_and_restarted_edge_node(fleet):
    op = fleet.operator
    episodes_before = op.robots['robot_3'].episodes_buffered
    # A deadline that robot_3's restart and training meet also on a loaded machine (the test is about
    # what survives the crashes, not about speed).
    reply = op.call(op.trigger, TriggerRound.Request(deadline_seconds=180.0))
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
    wait_for(outcome.exists, 240, f'round {round_id} to close')
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


def test_tampered_kms_audit_log_is_refused_reported_and_recovered(fleet):
    op = fleet.operator
    log = fleet.paths.kms_log
    original = log.read_bytes()
    wait_for(lambda: all(op.diagnosed(n, DiagnosticStatus.OK) for n in SERVER_NODES), 60,
             f'both server nodes to report OK (now {op.diagnostics})')
    before = op.rejections().get('audit_log_tampered', 0)
    lines = original.splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry['time'] = '2000-01-01T00:00:00+00:00'
    lines[1] = (json.dumps(entry, sort_keys=True, separators=(',', ':')) + '\n').encode()
    log.write_bytes(b''.join(lines))
    try:
        wait_for(lambda: all(op.diagnosed(n, DiagnosticStatus.ERROR, 'audit.log') for n in SERVER_NODES), 30,
                 f'both server nodes to report the audit log as ERROR (now {op.diagnostics})')
        reply = op.call(op.trigger, TriggerRound.Request(deadline_seconds=60.0))
        assert not reply.accepted and reply.message.startswith('audit_log_tampered'), reply.message
        wait_for(lambda: op.rejections().get('audit_log_tampered', 0) == before + 1, 30,
                 f'FleetStatus to count the refusal (now {op.rejections()})')
        refused = op.call(op.decrypt, DecryptAggregate.Request(round_id=1, round_config=b'', request=b''))
        assert (refused.success, refused.reason) == (False, 'audit_log_tampered')
        wait_for(lambda: any(v.key == 'refused: audit_log_tampered'
                             for v in op.diagnostics['tensorguard: key_service'].values), 30,
                 'the key service to count its refusal on /diagnostics')
        assert fleet.alive('aggregator') and fleet.alive('key_service')
    finally:
        log.write_bytes(original)
    wait_for(lambda: all(op.diagnosed(n, DiagnosticStatus.OK) for n in SERVER_NODES), 30,
             f'both server nodes to recover (now {op.diagnostics})')
    result = fleet.run_round()
    assert result.success, result.message
    assert all(fleet.alive(name) for name in fleet.procs.children)


def _crafted_update(fleet, config: RoundConfigPackage, robot_id: str, vector) -> bytes:
    """What robot `robot_id`'s edge node would publish for `config` if its update were `vector`:
    the same library calls as EdgeClient.process_round, with the robot's own key."""
    codec = _round_codec(fleet, config)
    round_key = RoundKeyAnnouncement.deserialize(config.round_key)
    parts = update_codec.encrypt_update(
        codec, round_key.public_key, config.aggregator_transport_key,
        update_codec.body_seal_context(robot_id, config.round_id, config.config_digest()), vector)
    identity = load_key(fleet.paths.robot_dir(robot_id) / 'identity.key', fleet.passphrase)
    return UpdatePackage(
        robot_id=robot_id, round_id=config.round_id, round_seed=config.round_seed,
        config_digest=config.config_digest(), model_version=config.model_version, created_at=time.time(),
        body_chunks=parts.body_chunks, expert_metadata=(), safety_stats=SafetyStats(0.1, 1e-5, 0.0, 0.0, 0, 0),
        bodies=parts.bodies, key_ciphertext=parts.key_ciphertext).signed_by(identity).serialize()


def _round_codec(fleet, config: RoundConfigPackage) -> update_codec.RoundCodec:
    """The codec every party derives for `config` from the fleet's shared parameters and the round's model."""
    shared, _ = load_config(DATA / 'fleet_test.yaml', DATA / 'fleet_test_plan.yaml')
    model = MoEPolicy.from_bytes(ModelPackage.deserialize(
        (fleet.paths.server / 'models' / f'{config.model_version}.tgm').read_bytes()).parameters)
    indices = adapter_round_coordinates(config.round_seed, model, config.num_coordinates)
    profile = DPProfile.from_fleet_parameters(shared)
    return update_codec.codec_for_round(config, profile, indices.size + len(model.segment_sizes()),
                                        shared['max_clients'])


def test_robot_revoked_after_its_update_was_accepted_is_out_of_the_aggregate_after_a_restart(fleet):
    """Three extra robots are enrolled and their updates made by the test (known vectors); the
    fleet's own edge nodes are stopped so they do not take part. robot_8's update is accepted,
    then robot_8 is revoked and the aggregator SIGKILLed and restarted: the round closes with
    robot_7 and robot_9, and the decrypted aggregate is their plaintext sum within the DP noise."""
    op = fleet.operator
    for robot in ROBOTS:
        if fleet.alive(f'{robot}_edge'):
            fleet.kill(f'{robot}_edge')
    extra = ['robot_7', 'robot_8', 'robot_9']
    for robot in extra:
        enroll_robot(fleet.paths, robot, fleet.passphrase.encode())
    reply = op.call(op.trigger, TriggerRound.Request(deadline_seconds=45.0))
    assert reply.accepted, reply.message
    round_dir = fleet.paths.server / 'rounds' / str(reply.round_id)
    config = RoundConfigPackage.deserialize((round_dir / 'config.bin').read_bytes())
    dim = _round_codec(fleet, config).skellam.dim
    rng = np.random.default_rng(11)
    vectors = {robot: (lambda v: (v / np.linalg.norm(v)).astype(np.float32))(rng.normal(size=dim)) for robot in extra}
    for robot in ('robot_7', 'robot_8'):
        op.send(robot, config.round_id, _crafted_update(fleet, config, robot, vectors[robot]))
    wait_for(lambda: op.fleet.round_id == config.round_id and sorted(op.fleet.participants) == ['robot_7', 'robot_8'],
             30, 'robot_7 and robot_8 to be accepted')
    reply = op.call(op.revoke, RevokeRobot.Request(robot_id='robot_8', reason='stolen mid-round (test)'))
    assert reply.success, reply.message
    fleet.kill('aggregator')
    op.fleet = None
    fleet.restart('aggregator')
    wait_for(lambda: op.fleet is not None and op.fleet.round_id == config.round_id
             and op.fleet.participants == ['robot_7'], 90, 'the aggregator to resume without robot_8')
    op.send('robot_9', config.round_id, _crafted_update(fleet, config, 'robot_9', vectors['robot_9']))
    outcome = round_dir / 'outcome.json'
    wait_for(outcome.exists, 90, f'round {config.round_id} to close')
    closed = json.loads(outcome.read_text())
    assert closed['outcome'] == 'aggregated' and sorted(closed['participants']) == ['robot_7', 'robot_9']
    result = AggregateResult.deserialize((round_dir / 'aggregate.bin').read_bytes())
    codec = _round_codec(fleet, config)
    decoded = update_codec.decode_aggregate(codec, result.aggregate)
    bound = 6 * codec.skellam.aggregate_stddev(2) + 4 / codec.skellam.scale
    assert np.max(np.abs(decoded - (vectors['robot_7'] + vectors['robot_9']))) < bound
    assert abs(np.corrcoef(decoded - vectors['robot_7'] - vectors['robot_9'], vectors['robot_8'])[0, 1]) < 0.05
    assert (round_dir / 'quarantine' / 'robot_8.tgu').exists() or (round_dir / 'removed' / 'robot_8.tgu').exists()
    assert fleet.alive('aggregator') and fleet.alive('key_service')
