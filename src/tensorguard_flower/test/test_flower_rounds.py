"""Three TensorGuard rounds with four robots on Flower's simulation engine (Ray), through the real
lattice secure sum: the decoded aggregate against the robots' plaintext mean within the Skellam
noise bound, every robot's privacy ledger against the accountant, and one robot's hard stop."""
import dataclasses
import json
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.common import Code, FitRes, Parameters, Status
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.simulation import run_simulation
from ray import cloudpickle

from tensorguard_aggregator.gate import DeploymentGate, GateSettings, RoundLog
from tensorguard_aggregator.key_service import KeyServiceCore, KeyServiceSettings
from tensorguard_aggregator.rounds import Aggregator, AggregatorSettings
from tensorguard_crypto import update_codec
from tensorguard_crypto.accountant import DPProfile, PrivacyBudget, PrivacyLedger, rdp_to_epsilon, round_rdp
from tensorguard_crypto.fleet import FleetPaths, enroll_robot, provision_server
from tensorguard_crypto.wire import AggregateResult, RoundConfigPackage
from tensorguard_edge.client import EdgeClient, EdgeSettings
from tensorguard_flower.client_app import TensorGuardClient, client_app, robot_settings
from tensorguard_flower.messages import REFUSED, UPDATE_TENSOR
from tensorguard_flower.strategy import TensorGuardStrategy
from tensorguard_learning.aggregation import strategy_from_name
from tensorguard_learning.compression import adapter_round_coordinates
from tensorguard_learning.demonstrations import Demonstration
from tensorguard_learning.policy import MoEConfig, build_policy
from tensorguard_learning.training import BCData

ROUNDS = 3
ROBOTS = ('robot_1', 'robot_2', 'robot_3', 'robot_4')
# robot_4's budget lets it contribute to two rounds; the three others still make the quorum in round 3.
SHORT_BUDGET_ROBOT = 'robot_4'
SHARED = dict(security_level=128, plaintext_bits=20, max_clients=16, clipping_norm=2.0, noise_multiplier=0.5,
              min_clients=3)
TASKS = ('push-v3', 'reach-v3')


class RecordingClient(TensorGuardClient):
    """The robot's client, also writing the plaintext vector it encrypts to the test's directory (the
    test's view of what the robots sent; the robot code path is unchanged)."""

    def edge_client(self) -> EdgeClient:
        client = super().edge_client()
        flatten = client.strategy.flatten_update
        sent = Path(self.settings.state_dir).parent / 'sent'

        def recording(*args):
            vector = flatten(*args)
            sent.mkdir(exist_ok=True)
            np.save(sent / f'{client.last_round_id + 1}.npy', vector)
            return vector

        client.strategy.flatten_update = recording
        return client


def _demonstration(task: str, i: int, frames: int = 20) -> Demonstration:
    return Demonstration(
        task=task,
        observation_state=np.linspace(-1, 1, frames * 39, dtype=np.float32).reshape(frames, 39) * (i + 1) / 4,
        action=np.linspace(-0.5, 0.5, frames * 4, dtype=np.float32).reshape(frames, 4) * (-1) ** i)


def _epsilon(ledger_rounds: int, skellam, delta: float) -> float:
    ledger = PrivacyLedger(PrivacyBudget(1e12, delta))
    return rdp_to_epsilon(ledger.orders, ledger_rounds * round_rdp(skellam, ledger.orders), delta)[0]


@pytest.fixture()
def fleet(tmp_path, monkeypatch):
    passphrase = secrets.token_urlsafe(32)  # OS CSPRNG; reaches the Ray workers through the environment
    monkeypatch.setenv('TENSORGUARD_KEY_PASSPHRASE', passphrase)
    paths = FleetPaths(tmp_path / 'fleet')
    provision_server(paths, passphrase.encode())
    aggregator = Aggregator(AggregatorSettings(fleet_dir=str(paths.root), quorum=3, round_deadline_s=600.0,
                                               **SHARED), passphrase.encode())
    policy = build_policy(MoEConfig(tasks=TASKS, num_experts=2, expert_hidden=32))
    aggregator.publish_model(policy, 0, 'initial')
    sizes = policy.segment_sizes()
    dim = strategy_from_name('expert_driven').vector_length(
        sizes, adapter_round_coordinates(bytes(32), policy, sum(sizes)))
    skellam = DPProfile.from_fleet_parameters(SHARED).skellam_config(dim, SHARED['max_clients'])
    shared = EdgeSettings(train_steps=5, batch_size=16, epsilon_budget=1e9,
                          **{k: v for k, v in SHARED.items() if k != 'security_level'})
    budgets = {robot: 1e9 for robot in ROBOTS}
    budgets[SHORT_BUDGET_ROBOT] = (_epsilon(2, skellam, shared.privacy_delta)
                                   + _epsilon(3, skellam, shared.privacy_delta)) / 2
    robots = [dataclasses.replace(robot_settings(str(paths.root), robot, shared), epsilon_budget=budgets[robot])
              for robot in ROBOTS]
    for i, (robot, settings) in enumerate(zip(ROBOTS, robots)):
        enroll_robot(paths, robot, passphrase.encode())
        client = EdgeClient(settings)
        client.add_demonstration(_demonstration(TASKS[i // 2], i))  # non-IID: robots 1-2 push, robots 3-4 reach
        client.close()
    held_out = BCData.from_demonstrations(policy, [_demonstration(task, 4 + i) for i, task in enumerate(TASKS)])
    gate = GateSettings(eval_tasks=['push-v3'], eval_episodes_per_task=2, min_success_rate=0.0, deploy_margin=0.0,
                        max_kl_divergence=1e9)
    key_service = KeyServiceCore(KeyServiceSettings(fleet_dir=str(paths.root), min_quorum=3, **{
        k: SHARED[k] for k in ('security_level', 'plaintext_bits', 'max_clients', 'min_clients')}),
        passphrase.encode())
    strategy = TensorGuardStrategy(aggregator, key_service, DeploymentGate(gate), RoundLog.of(paths), held_out)
    return paths, strategy, robots, budgets, dim


@pytest.mark.slow
def test_three_rounds_of_four_robots_on_the_simulation_engine(fleet):
    paths, strategy, robots, budgets, dim = fleet
    delta = robots[0].privacy_delta
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module

    def server_fn(_context):
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=ROUNDS, round_timeout=600.0))

    run_simulation(server_app=ServerApp(server_fn=server_fn),
                   client_app=client_app(robots, RecordingClient),
                   num_supernodes=len(ROBOTS),
                   backend_config={'client_resources': {'num_cpus': 1, 'num_gpus': 0.0},
                                   'init_args': {'num_cpus': 2, 'logging_level': 'error'}})

    outcomes = strategy.outcomes
    assert [o['outcome'] for o in outcomes] == ['aggregated'] * ROUNDS, outcomes
    assert [o['decision'] for o in outcomes] == ['deploy'] * ROUNDS
    assert [o['model_version'] for o in outcomes] == [2, 3, 4] and strategy.aggregator.model.model_version == 4
    assert [sorted(o['participants']) for o in outcomes] == [list(ROBOTS)] * 2 + [list(ROBOTS[:3])]
    assert outcomes[2]['refused'] == {'budget_exhausted': 1} and not strategy.rejected
    assert [json.loads(line)['round_id'] for line in RoundLog.of(paths).path.read_text().splitlines()] == [1, 2, 3]

    profile = DPProfile.from_fleet_parameters(SHARED)
    for outcome in outcomes:
        round_dir = paths.rounds_dir / str(outcome['round_id'])
        config = RoundConfigPackage.deserialize((round_dir / 'config.bin').read_bytes())
        codec = update_codec.build_codec(profile, dim, SHARED['max_clients'], SHARED['security_level'],
                                         config.round_seed)
        decoded = update_codec.decode_aggregate(
            codec, AggregateResult.deserialize((round_dir / 'aggregate.bin').read_bytes()).aggregate)
        sent = [np.load(paths.robot_dir(robot) / 'sent' / f"{outcome['round_id']}.npy")
                for robot in outcome['participants']]
        clipped = [v * min(1.0, SHARED['clipping_norm'] / float(np.linalg.norm(v))) for v in sent]
        n = len(sent)
        # Noise on the decoded sum, per coordinate: Skellam variance sigma_local^2 = (z gamma C)^2 / min_clients
        # and rounding variance <= 1/4 from each of the n robots, in units of the scale gamma.
        sigma = codec.skellam.aggregate_stddev(n)
        error = decoded / n - np.mean(clipped, axis=0)
        assert np.max(np.abs(error)) < 6 * sigma / n, (np.max(np.abs(error)), sigma / n)
        # The noise is there and is the mechanism's: its spread matches the prediction.
        assert 0.8 * sigma / n < np.std(error) < 1.1 * sigma / n, (np.std(error), sigma / n)

    for robot in ROBOTS:
        contributed = [o for o in outcomes if robot in o['participants']]
        ledger = PrivacyLedger.from_dict(PrivacyBudget(budgets[robot], delta),
                                         json.loads((paths.robot_dir(robot) / 'state' / 'privacy.json').read_text()))
        assert ledger.rounds == [str(o['round_id']) for o in contributed]
        round_config = RoundConfigPackage.deserialize(
            (paths.rounds_dir / str(contributed[0]['round_id']) / 'config.bin').read_bytes())
        skellam = update_codec.build_codec(profile, dim, SHARED['max_clients'], SHARED['security_level'],
                                           round_config.round_seed).skellam
        assert ledger.epsilon() == pytest.approx(_epsilon(len(contributed), skellam, delta),
                                                 rel=1e-12)
        assert ledger.epsilon() <= budgets[robot]
    assert len(PrivacyLedger.from_dict(PrivacyBudget(1.0), json.loads(
        (paths.robot_dir(SHORT_BUDGET_ROBOT) / 'state' / 'privacy.json').read_text())).rounds) == 2


@pytest.mark.slow
def test_bad_replies_are_refused_with_their_reason_counted_and_the_round_closes_below_quorum(fleet):
    _paths, strategy, _robots, _budgets, _dim = fleet
    aggregator = strategy.aggregator
    config = aggregator.open_round(strategy.key_service.round_key(aggregator.next_round_id()))
    replies = [FitRes(Status(Code.OK, ''), Parameters([b'not a package'], UPDATE_TENSOR), 0, {}),
               FitRes(Status(Code.OK, ''), Parameters([b'x', b'y'], UPDATE_TENSOR), 0, {}),
               FitRes(Status(Code.OK, ''), Parameters([], ''), 0, {REFUSED: 'budget_exhausted'})]
    parameters, metrics = strategy.aggregate_fit(1, [(None, reply) for reply in replies], [RuntimeError('lost')])
    assert metrics['outcome'] == 'below_quorum' and metrics['contributors'] == 0
    assert metrics['rejected'] == 2 and metrics['refused'] == 1 and metrics['round_id'] == config.round_id
    assert strategy.rejected == {'malformed': 2} and strategy.refused == {'budget_exhausted': 1}
    assert strategy.outcomes[-1]['failures'] == 1
    assert aggregator.current is None and parameters.tensors == [aggregator.model.serialize()]
    recorded = json.loads((aggregator.rounds_dir / str(config.round_id) / 'outcome.json').read_text())
    assert recorded['outcome'] == 'below_quorum' and recorded['rejected'] == {'malformed': 2}


@pytest.mark.slow
def test_the_flower_modules_load_without_ros():
    probe = ('import sys, tensorguard_flower.strategy, tensorguard_flower.client_app; '
             'print(sorted(m for m in sys.modules if m.split(".")[0] in ("rclpy", "rosidl_runtime_py")))')
    result = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'
