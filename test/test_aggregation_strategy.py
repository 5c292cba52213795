"""The `strategy` parameter end to end (no ROS): the aggregator announces it in the signed round
config, robots configured otherwise refuse the round, and a FedAvg round decodes to the mean."""
from dataclasses import dataclass

import numpy as np
import pytest

from tensorguard_aggregator.key_service import KeyServiceCore, KeyServiceSettings
from tensorguard_aggregator.rounds import Aggregator, AggregatorSettings
from tensorguard_crypto import update_codec
from tensorguard_crypto.fleet import FleetPaths, enroll_robot, provision_server
from tensorguard_crypto.wire import AggregateResult
from tensorguard_edge.client import EdgeSettings, RoundRefused, create_client
from tensorguard_learning.demonstrations import Demonstration
from tensorguard_learning.errors import ConfigError
from tensorguard_learning.policy import MoEConfig, MoEPolicy, build_policy

PASSPHRASE = b'test passphrase, not a secret'
SHARED = dict(security_level=128, plaintext_bits=20, max_clients=16, clipping_norm=2.0, noise_multiplier=0.003,
              min_clients=2)
ROBOTS = ('robot_1', 'robot_2')


@dataclass
class Fleet:
    """A provisioned fleet directory, its key service and two enrolled robots."""

    paths: FleetPaths
    key_service: KeyServiceCore

    def aggregator(self, strategy: str) -> Aggregator:
        return Aggregator(AggregatorSettings(fleet_dir=str(self.paths.root), quorum=2, strategy=strategy, **SHARED),
                          PASSPHRASE)

    def open_round(self, aggregator: Aggregator):
        return aggregator.open_round(self.key_service.round_key(aggregator.next_round_id()))

    def client(self, robot_id: str, strategy: str, model):
        robot = self.paths.robot_dir(robot_id)
        client = create_client(EdgeSettings(
            robot_id=robot_id, state_dir=str(robot / 'state'), key_path=str(robot / 'identity.key'),
            trust_path=str(robot / 'trust.json'), train_steps=5, batch_size=16, epsilon_budget=1e9,
            strategy=strategy, **{k: v for k, v in SHARED.items() if k != 'security_level'}))
        client.apply_model(model.serialize())
        frames = 20
        client.add_demonstration(Demonstration(
            task='push-v3', observation_state=np.linspace(-1, 1, frames * 39, dtype=np.float32).reshape(frames, 39),
            action=np.linspace(-0.5, 0.5, frames * 4, dtype=np.float32).reshape(frames, 4)))
        return client


@pytest.fixture()
def fleet(tmp_path, monkeypatch) -> Fleet:
    monkeypatch.setenv('TENSORGUARD_KEY_PASSPHRASE', PASSPHRASE.decode())
    paths = FleetPaths(tmp_path / 'fleet')
    provision_server(paths, PASSPHRASE)
    key_service = KeyServiceCore(KeyServiceSettings(fleet_dir=str(paths.root), **{
        k: SHARED[k] for k in ('security_level', 'plaintext_bits', 'max_clients', 'min_clients')}), PASSPHRASE)
    for robot in ROBOTS:
        enroll_robot(paths, robot, PASSPHRASE)
    return Fleet(paths, key_service)


@pytest.mark.parametrize('server, robot', [('expert_driven', 'fedavg'), ('fedavg', 'expert_driven')])
def test_robot_refuses_a_round_announcing_another_strategy_and_spends_nothing(fleet, server, robot):
    aggregator = fleet.aggregator(server)
    model = aggregator.publish_model(build_policy(MoEConfig(tasks=('push-v3',), num_experts=2)), 0, 'initial')
    config = fleet.open_round(aggregator)
    assert config.aggregation_strategy == server
    client = fleet.client('robot_1', robot, model)
    with pytest.raises(RoundRefused, match=f'strategy {server}') as refused:
        client.process_round(config.serialize())
    assert refused.value.reason == 'round_parameters_mismatch'
    assert client.status().epsilon_spent == 0.0 and client.last_round_id == 0


def test_fedavg_round_decodes_to_the_mean_of_the_robots_clipped_vectors(fleet, monkeypatch):
    aggregator = fleet.aggregator('fedavg')
    model = aggregator.publish_model(build_policy(MoEConfig(tasks=('push-v3',), num_experts=2)), 0, 'initial')
    config = fleet.open_round(aggregator)
    sent = []
    for robot in ROBOTS:
        client = fleet.client(robot, 'fedavg', model)
        flatten = client.strategy.flatten_update
        monkeypatch.setattr(client.strategy, 'flatten_update', lambda *a, _f=flatten: sent.append(_f(*a)) or sent[-1])
        aggregator.accept(client.process_round(config.serialize()).serialize())
    total = sum(aggregator.model_policy.segment_sizes())
    assert [v.shape for v in sent] == [(total + 1,)] * 2 and all(v[-1] == 1.0 for v in sent)
    assert aggregator.current.codec.skellam.dim == total + 1
    result, _ = fleet.key_service.decrypt(config.serialize(), aggregator.aggregate_request())
    candidate = aggregator.candidate(result)
    clip = [min(1.0, SHARED['clipping_norm'] / float(np.linalg.norm(v))) for v in sent]
    expected = sum(c * v[:-1] for c, v in zip(clip, sent)) / sum(clip)
    codec = aggregator.current.codec
    noise = codec.skellam.aggregate_stddev(len(ROBOTS))  # per coordinate of the decoded sum
    summed = update_codec.decode_aggregate(codec, AggregateResult.deserialize(result).aggregate)
    assert abs(summed[-1] - sum(clip)) < 6 * noise
    before = MoEPolicy.from_bytes(model.parameters).flatten_segments()
    delta = np.concatenate(candidate.policy.flatten_segments()) - np.concatenate(before)
    np.testing.assert_allclose(delta, expected, atol=6 * noise / sum(clip))
    assert np.std(delta - expected) < 1.2 * noise / sum(clip)
    assert candidate.frozen_segments == 0


def test_aggregator_restarted_with_another_strategy_abandons_the_open_round(fleet):
    aggregator = fleet.aggregator('fedavg')
    aggregator.publish_model(build_policy(MoEConfig(tasks=('push-v3',), num_experts=2)), 0, 'initial')
    fleet.open_round(aggregator)
    restarted = fleet.aggregator('expert_driven')
    assert restarted.current is None and restarted.state_problems['round_state_unreadable'] == 1


def test_an_unknown_strategy_name_is_refused_at_start_up(fleet):
    with pytest.raises(ConfigError, match='expert_driven, fedavg'):
        fleet.aggregator('fed_avg')
