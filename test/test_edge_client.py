"""EdgeClient without ROS: one robot and the aggregator core, provisioned in a temporary fleet."""
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tensorguard_aggregator import rounds
from tensorguard_aggregator.key_service import KeyServiceCore, KeyServiceSettings
from tensorguard_aggregator.rounds import Aggregator, AggregatorSettings, RoundError
from tensorguard_crypto.accountant import DPProfile, smallest_noise_multiplier
from tensorguard_crypto.fleet import FleetPaths, enroll_robot, provision_server
from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.secagg import generate_key_service_keys
from tensorguard_crypto.wire import RoundKeyAnnouncement
from tensorguard_edge.client import EdgeSettings, RoundRefused, create_client
from tensorguard_learning.demonstrations import Demonstration
from tensorguard_learning.policy import MoEConfig, build_policy

PASSPHRASE = b'test passphrase, not a secret'
SHARED = dict(security_level=128, plaintext_bits=20, max_clients=16, clipping_norm=2.0, noise_multiplier=0.5,
              min_clients=2)


@dataclass
class Fleet:
    """A provisioned fleet directory with the aggregator and key-service cores, one robot enrolled."""

    paths: FleetPaths
    aggregator: Aggregator
    key_service: KeyServiceCore
    model: object

    def open_round(self):
        return self.aggregator.open_round(self.key_service.round_key(self.aggregator.next_round_id()))


@pytest.fixture()
def fleet(tmp_path, monkeypatch):
    monkeypatch.setenv('TENSORGUARD_KEY_PASSPHRASE', PASSPHRASE.decode())
    paths = FleetPaths(tmp_path / 'fleet')
    provision_server(paths, PASSPHRASE)
    aggregator = Aggregator(AggregatorSettings(fleet_dir=str(paths.root), quorum=1, **SHARED), PASSPHRASE)
    key_service = KeyServiceCore(KeyServiceSettings(fleet_dir=str(paths.root), **{
        k: SHARED[k] for k in ('security_level', 'plaintext_bits', 'max_clients', 'min_clients')}), PASSPHRASE)
    model = aggregator.publish_model(build_policy(MoEConfig(tasks=('push-v3',), num_experts=2)), 0, 'initial')
    enroll_robot(paths, 'robot_1', PASSPHRASE)
    return Fleet(paths, aggregator, key_service, model)


def _client(paths: Path, model, **overrides):
    robot = paths.robot_dir('robot_1')
    values = dict(robot_id='robot_1', state_dir=str(robot / 'state'), key_path=str(robot / 'identity.key'),
                  trust_path=str(robot / 'trust.json'), train_steps=5, batch_size=16, epsilon_budget=1000.0,
                  clipping_norm=2.0, noise_multiplier=0.5, min_clients=2, max_clients=16, plaintext_bits=20)
    client = create_client(EdgeSettings(**{**values, **overrides}))
    client.apply_model(model.serialize())
    frames = 20
    client.add_demonstration(Demonstration(
        task='push-v3', observation_state=np.linspace(-1, 1, frames * 39, dtype=np.float32).reshape(frames, 39),
        action=np.linspace(-0.5, 0.5, frames * 4, dtype=np.float32).reshape(frames, 4)))
    return client


@pytest.mark.parametrize('dim', [3000, 195312])
def test_the_default_noise_is_the_least_the_default_budget_allows_over_three_rounds(dim):
    # The shipped defaults are one decision: epsilon_budget 8 is the guarantee, and noise_multiplier
    # is calibrated to spend it over three rounds (docs/flower.md, defaults); changing one alone fails here.
    settings = EdgeSettings()
    profile = DPProfile.from_fleet_parameters(dataclasses.asdict(settings))
    assert smallest_noise_multiplier(profile, dim, settings.max_clients, 3, settings.epsilon_budget,
                                     settings.privacy_delta) == settings.noise_multiplier


def test_update_is_accepted_by_the_aggregator_and_the_round_is_not_repeated(fleet):
    paths, aggregator, model = fleet.paths, fleet.aggregator, fleet.model
    client = _client(paths, model)
    config = fleet.open_round()
    package = client.process_round(config.serialize())
    accepted = aggregator.accept(package.serialize())
    assert accepted.robot_id == 'robot_1'
    assert 0 < client.status().epsilon_spent == package.safety_stats.dp_epsilon_consumed
    with pytest.raises(RoundRefused) as refused:
        client.process_round(config.serialize())
    assert refused.value.reason == 'already_contributed'


def test_hard_stop_refuses_the_round_that_would_exceed_the_budget_and_spends_nothing(fleet):
    paths, model = fleet.paths, fleet.model
    client = _client(paths, model, epsilon_budget=0.5)
    with pytest.raises(RoundRefused) as refused:
        client.process_round(fleet.open_round().serialize())
    assert refused.value.reason == 'budget_exhausted'
    assert client.status().epsilon_spent == 0.0 and client.last_round_id == 0


def test_robot_refuses_a_round_with_weaker_noise_than_its_own_policy(fleet):
    paths, model = fleet.paths, fleet.model
    client = _client(paths, model, noise_multiplier=1.0)
    with pytest.raises(RoundRefused) as refused:
        client.process_round(fleet.open_round().serialize())
    assert refused.value.reason == 'round_parameters_mismatch'


def test_robot_refuses_a_round_at_another_security_level_than_its_own(fleet):
    paths, model = fleet.paths, fleet.model
    client = _client(paths, model, security_level=192)
    with pytest.raises(RoundRefused) as refused:
        client.process_round(fleet.open_round().serialize())
    assert refused.value.reason == 'round_parameters_mismatch' and 'security level 128' in str(refused.value)


def test_robot_refuses_a_round_key_the_aggregator_made_itself(fleet, monkeypatch):
    """The aggregator plays key service: it announces a lattice key whose secret it holds, signed by
    an identity it controls under the key service's name. The robot checks the announcement
    against the key-service identity it pins and sends nothing."""
    paths, aggregator, model = fleet.paths, fleet.aggregator, fleet.model
    client = _client(paths, model)
    honest = RoundKeyAnnouncement.deserialize(fleet.key_service.round_key(aggregator.next_round_id()))
    impostor = Identity.generate('key_service', Role.KEY_SERVICE)
    _, public = generate_key_service_keys(fleet.key_service.params)
    forged = RoundKeyAnnouncement(
        round_id=honest.round_id, security_level=honest.security_level, ring_degree=honest.ring_degree,
        modulus_bits=honest.modulus_bits, plaintext_bits=honest.plaintext_bits, public_key=public.to_bytes(),
        signer_key_id='key_service', created_at=honest.created_at).signed_by(impostor)
    monkeypatch.setattr(rounds, 'verify_round_key', lambda *_: None)  # a compromised aggregator skips its check
    config = aggregator.open_round(forged.serialize())
    with pytest.raises(RoundRefused) as refused:
        client.process_round(config.serialize())
    assert refused.value.reason in ('bad_signature', 'untrusted_round_key')
    assert client.status().epsilon_spent == 0.0


def test_robot_refuses_a_round_key_issued_for_another_round(fleet, monkeypatch):
    paths, aggregator, model = fleet.paths, fleet.aggregator, fleet.model
    client = _client(paths, model)
    other_round_key = fleet.key_service.round_key(aggregator.next_round_id() + 5)
    with pytest.raises(RoundError) as honest:
        aggregator.open_round(other_round_key)
    assert honest.value.reason == 'untrusted_round_key'
    monkeypatch.setattr(rounds, 'verify_round_key', lambda *_: None)
    config = aggregator.open_round(other_round_key)
    with pytest.raises(RoundRefused) as refused:
        client.process_round(config.serialize())
    assert refused.value.reason == 'untrusted_round_key'


def test_tampered_round_config_is_refused(fleet):
    paths, model = fleet.paths, fleet.model
    client = _client(paths, model)
    blob = bytearray(fleet.open_round().serialize())
    blob[-10] ^= 0x01
    with pytest.raises(RoundRefused) as refused:
        client.process_round(bytes(blob))
    assert refused.value.reason in ('bad_signature', 'malformed')


def test_compressed_round_sends_fewer_bytes_and_is_accepted(fleet):
    paths, aggregator, model = fleet.paths, fleet.aggregator, fleet.model
    client = _client(paths, model)
    dense = client.process_round(fleet.open_round().serialize())
    aggregator.accept(dense.serialize())
    aggregator.close_round({'outcome': 'test'})
    aggregator.settings.coordinates_per_round = 200
    compressed = client.process_round(fleet.open_round().serialize())
    assert aggregator.accept(compressed.serialize()).robot_id == 'robot_1'
    assert len(compressed.bodies) < len(dense.bodies) / 4
