"""A fleet provisioned with the operator command (`tensorguard fleet init` / `enroll`, `tensorguard robot
install`, run as processes with the passphrase in their environment) runs a round through the real
aggregator, key-service and edge cores, without ROS: what the command writes is what the nodes load."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from tensorguard_aggregator.key_service import KeyServiceCore, KeyServiceSettings
from tensorguard_aggregator.rounds import Aggregator, AggregatorSettings
from tensorguard_crypto.cli import EXIT_OK
from tensorguard_edge.client import EdgeSettings, create_client
from tensorguard_learning.demonstrations import Demonstration
from tensorguard_learning.policy import MoEConfig, build_policy

pytestmark = pytest.mark.slow

SERVER_PASSPHRASE = 'server passphrase for the command test'
ROBOTS = {'robot_1': 'robot_1 passphrase, its own', 'robot_2': 'robot_2 passphrase, its own'}
# The shipped fleet's noise level (config/fleet.yaml): two robots' sum then moves the model.
SHARED = dict(security_level=128, plaintext_bits=20, max_clients=16, clipping_norm=2.0, noise_multiplier=0.003,
              min_clients=2)


def tensorguard(passphrase: str, *argv: str) -> str:
    """Run the `tensorguard` command on PATH as an operator would; returns its stdout."""
    command = shutil.which('tensorguard')
    assert command, 'tensorguard is not on PATH (source scripts/env.sh)'
    result = subprocess.run([command, *argv], capture_output=True, text=True, timeout=300,
                            env={**os.environ, 'TENSORGUARD_KEY_PASSPHRASE': passphrase})
    assert result.returncode == EXIT_OK, result.stderr
    assert passphrase not in result.stdout + result.stderr
    return result.stdout


def demonstration(robot: int) -> Demonstration:
    frames = 20
    return Demonstration(
        task='push-v3',
        observation_state=np.linspace(-1, 1 + robot, frames * 39, dtype=np.float32).reshape(frames, 39),
        action=np.linspace(-0.5, 0.5 - robot / 10, frames * 4, dtype=np.float32).reshape(frames, 4))


def test_a_fleet_provisioned_by_the_command_runs_a_round(tmp_path, monkeypatch):
    fleet_dir = tmp_path / 'server-host' / 'fleet'
    tensorguard(SERVER_PASSPHRASE, 'fleet', 'init', str(fleet_dir))
    robot_dirs = {}
    for robot, passphrase in ROBOTS.items():
        bundle = tmp_path / 'carried' / f'{robot}.tar'
        tensorguard(passphrase, 'fleet', 'enroll', str(fleet_dir), robot, '--bundle', str(bundle))
        robot_dirs[robot] = tmp_path / f'{robot}-host' / 'etc'
        out = tensorguard(passphrase, 'robot', 'install', str(bundle), str(robot_dirs[robot]))
        assert f'trust_path:={robot_dirs[robot] / "trust.json"}' in out
    assert not (fleet_dir / 'robots').exists()  # no robot key stays on the server

    server = SERVER_PASSPHRASE.encode()
    aggregator = Aggregator(AggregatorSettings(fleet_dir=str(fleet_dir), quorum=2, **SHARED), server)
    key_service = KeyServiceCore(KeyServiceSettings(fleet_dir=str(fleet_dir), **{
        k: SHARED[k] for k in ('security_level', 'plaintext_bits', 'max_clients', 'min_clients')}), server)
    model = aggregator.publish_model(build_policy(MoEConfig(tasks=('push-v3',), num_experts=2)), 0, 'initial')

    clients = []
    for index, (robot, passphrase) in enumerate(ROBOTS.items()):
        monkeypatch.setenv('TENSORGUARD_KEY_PASSPHRASE', passphrase)  # each robot opens its own key
        client = create_client(EdgeSettings(
            robot_id=robot, state_dir=str(robot_dirs[robot].parent / 'state'),
            key_path=str(robot_dirs[robot] / 'identity.key'), trust_path=str(robot_dirs[robot] / 'trust.json'),
            train_steps=5, batch_size=16, epsilon_budget=1e7, **{k: SHARED[k] for k in (
                'clipping_norm', 'noise_multiplier', 'min_clients', 'max_clients', 'plaintext_bits')}))
        client.apply_model(model.serialize())
        client.add_demonstration(demonstration(index))
        clients.append(client)

    config = aggregator.open_round(key_service.round_key(aggregator.next_round_id()))
    for client in clients:
        aggregator.accept(client.process_round(config.serialize()).serialize())
    assert aggregator.ready_to_close()
    result, robots = key_service.decrypt(config.serialize(), aggregator.aggregate_request())
    candidate = aggregator.candidate(result)
    assert robots == 2 and sorted(candidate.contributors) == sorted(ROBOTS) and candidate.delta_norm > 0
    aggregator.publish_model(candidate.policy, candidate.round_id, 'deploy')
    aggregator.close_round({'round_id': candidate.round_id, 'outcome': 'aggregated'})

    status = json.loads(tensorguard(SERVER_PASSPHRASE, 'fleet', 'status', str(fleet_dir), '--json'))
    assert status['problems'] == [] and status['current_model'] == 2
    assert (status['rounds'], status['rounds_closed'], status['round_open']) == (1, 1, None)
    assert status['rounds_decrypted'] == 1
    assert [(r['key_id'], r['status']) for r in status['robots']] == [('robot_1', 'active'), ('robot_2', 'active')]
