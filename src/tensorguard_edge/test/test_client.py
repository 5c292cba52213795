"""EdgeClient without ROS: one robot and the aggregator core, provisioned in a temporary fleet."""
import json
from pathlib import Path

import numpy as np
import pytest

from tensorguard_aggregator.provisioning import FleetPaths, enroll_robot, provision_server
from tensorguard_aggregator.rounds import Aggregator, RoundPolicy
from tensorguard_crypto.params import standard_params
from tensorguard_edge.client import EdgeConfig, RoundRefused, create_client
from tensorguard_learning.demonstrations import Demonstration
from tensorguard_learning.policy import PolicyConfig, build_policy

PASSPHRASE = b'test passphrase, not a secret'
SHARED = dict(security_level=128, plaintext_bits=20, max_clients=16, clipping_norm=2.0, noise_multiplier=0.5,
              min_clients=2)


@pytest.fixture()
def fleet(tmp_path, monkeypatch):
    monkeypatch.setenv('TENSORGUARD_KEY_PASSPHRASE', PASSPHRASE.decode())
    paths = FleetPaths(tmp_path / 'fleet')
    provision_server(paths, PASSPHRASE, standard_params(128, 20, 16, 2))
    aggregator = Aggregator(RoundPolicy(fleet_dir=str(paths.root), quorum=1, **SHARED), PASSPHRASE)
    model = aggregator.publish_model(build_policy(PolicyConfig(tasks=('push-v3',), num_experts=2)), 0, 'initial')
    enroll_robot(paths, 'robot_1', PASSPHRASE)
    return paths, aggregator, model


def _client(paths: Path, model, **overrides):
    robot = paths.robot_dir('robot_1')
    values = dict(robot_id='robot_1', state_dir=str(robot / 'state'), key_path=str(robot / 'identity.key'),
                  trust_path=str(robot / 'trust.json'), train_steps=5, batch_size=16, epsilon_budget=1000.0,
                  clipping_norm=2.0, noise_multiplier=0.5, min_clients=2, max_clients=16, plaintext_bits=20)
    client = create_client(EdgeConfig(**{**values, **overrides}))
    client.apply_model(model.serialize())
    frames = 20
    client.add_demonstration(Demonstration(
        task='push-v3', observation_state=np.linspace(-1, 1, frames * 39, dtype=np.float32).reshape(frames, 39),
        action=np.linspace(-0.5, 0.5, frames * 4, dtype=np.float32).reshape(frames, 4)))
    return client


def test_update_is_accepted_by_the_aggregator_and_the_round_is_not_repeated(fleet):
    paths, aggregator, model = fleet
    client = _client(paths, model)
    config = aggregator.open_round()
    package = client.process_round(config.serialize())
    accepted = aggregator.accept(package.serialize())
    assert accepted.robot_id == 'robot_1'
    assert 0 < client.status().epsilon_spent == package.safety_stats.dp_epsilon_consumed
    with pytest.raises(RoundRefused) as refused:
        client.process_round(config.serialize())
    assert refused.value.reason == 'already_contributed'


def test_hard_stop_refuses_the_round_that_would_exceed_the_budget_and_spends_nothing(fleet):
    paths, aggregator, model = fleet
    client = _client(paths, model, epsilon_budget=0.5)
    with pytest.raises(RoundRefused) as refused:
        client.process_round(aggregator.open_round().serialize())
    assert refused.value.reason == 'budget_exhausted'
    assert client.status().epsilon_spent == 0.0 and client.last_round_id == 0


def test_robot_refuses_a_round_with_weaker_noise_than_its_own_policy(fleet):
    paths, aggregator, model = fleet
    client = _client(paths, model, noise_multiplier=1.0)
    with pytest.raises(RoundRefused) as refused:
        client.process_round(aggregator.open_round().serialize())
    assert refused.value.reason == 'round_parameters_mismatch'


def test_robot_refuses_a_key_service_key_it_does_not_pin(fleet):
    paths, aggregator, model = fleet
    trust_path = paths.robot_dir('robot_1') / 'trust.json'
    trust = json.loads(trust_path.read_text())
    trust['key_service_public_key_sha256'] = '00' * 32
    trust_path.write_text(json.dumps(trust))
    client = _client(paths, model)
    with pytest.raises(RoundRefused) as refused:
        client.process_round(aggregator.open_round().serialize())
    assert refused.value.reason == 'untrusted_key_service'


def test_tampered_round_config_is_refused(fleet):
    paths, aggregator, model = fleet
    client = _client(paths, model)
    blob = bytearray(aggregator.open_round().serialize())
    blob[-10] ^= 0x01
    with pytest.raises(RoundRefused) as refused:
        client.process_round(bytes(blob))
    assert refused.value.reason in ('bad_signature', 'malformed')


def test_compressed_round_sends_fewer_bytes_and_is_accepted(fleet):
    paths, aggregator, model = fleet
    client = _client(paths, model)
    dense = client.process_round(aggregator.open_round().serialize())
    aggregator.accept(dense.serialize())
    aggregator.close_round({'outcome': 'test'})
    aggregator.policy.coordinates_per_round = 200
    compressed = client.process_round(aggregator.open_round().serialize())
    assert aggregator.accept(compressed.serialize()).robot_id == 'robot_1'
    assert len(compressed.bodies) < len(dense.bodies) / 4
