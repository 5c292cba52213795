"""A fleet provisioned with the operator commands (`tensorguard fleet init` / `enroll`, `tensorguard robot
install` and the fleet server's `publish_initial_model`, run as processes with the passphrase in their
environment) runs a round through the real aggregator, key-service and edge cores, without ROS: what the
commands write is what the nodes load."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tensorguard_aggregator.held_out import load_held_out
from tensorguard_aggregator.key_service import KeyServiceCore, KeyServiceSettings
from tensorguard_aggregator.rounds import Aggregator, AggregatorSettings
from tensorguard_crypto.cli import EXIT_OK
from tensorguard_edge.client import EdgeSettings, create_client
from tensorguard_learning.demonstrations import Demonstration, DemonstrationStore
from tensorguard_learning.policy import MoEConfig, build_policy

pytestmark = pytest.mark.slow

SERVER_PASSPHRASE = 'server passphrase for the command test'
ROBOTS = {'robot_1': 'robot_1 passphrase, its own', 'robot_2': 'robot_2 passphrase, its own'}
# The shipped fleet's noise level (config/fleet.yaml): two robots' sum then moves the model.
SHARED = dict(security_level=128, plaintext_bits=20, max_clients=16, clipping_norm=2.0, noise_multiplier=0.003,
              min_clients=2)


# What `ros2 run tensorguard_aggregator publish_initial_model` runs.
PUBLISH_INITIAL_MODEL = (Path(__file__).resolve().parents[1] / 'install' / 'tensorguard_aggregator' / 'lib'
                         / 'tensorguard_aggregator' / 'publish_initial_model')


def run(command: str, passphrase: str, *argv: str) -> str:
    """Run an operator command as a process with `passphrase` in its environment; returns its stdout."""
    result = subprocess.run([command, *argv], capture_output=True, text=True, timeout=300,
                            env={**os.environ, 'TENSORGUARD_KEY_PASSPHRASE': passphrase})
    assert result.returncode == EXIT_OK, result.stderr
    assert passphrase not in result.stdout + result.stderr
    return result.stdout


def tensorguard(passphrase: str, *argv: str) -> str:
    """Run the `tensorguard` command on PATH as an operator would; returns its stdout."""
    command = shutil.which('tensorguard')
    assert command, 'tensorguard is not on PATH (source scripts/env.sh)'
    return run(command, passphrase, *argv)


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

    assert 'publish_initial_model' in tensorguard(SERVER_PASSPHRASE, 'fleet', 'status', str(fleet_dir))
    # The operator's inputs: a policy file and the server's own held-out demonstrations.
    policy_file = tmp_path / 'operator' / 'policy.pt'
    policy_file.parent.mkdir()
    policy_file.write_bytes(build_policy(MoEConfig(tasks=('push-v3',), num_experts=2)).state_bytes())
    with DemonstrationStore(tmp_path / 'operator' / 'held_out', max_bytes=1 << 24) as store:
        store.append_episode(demonstration(2))
    assert PUBLISH_INITIAL_MODEL.is_file(), 'tensorguard_aggregator is not built (scripts/bootstrap)'
    out = run(str(PUBLISH_INITIAL_MODEL), SERVER_PASSPHRASE, str(fleet_dir), '--policy', str(policy_file),
              '--held-out', str(tmp_path / 'operator' / 'held_out'))
    assert 'published model version 1' in out and '1 episodes' in out

    server = SERVER_PASSPHRASE.encode()
    aggregator = Aggregator(AggregatorSettings(fleet_dir=str(fleet_dir), quorum=2, **SHARED), server)
    key_service = KeyServiceCore(KeyServiceSettings(fleet_dir=str(fleet_dir), **{
        k: SHARED[k] for k in ('security_level', 'plaintext_bits', 'max_clients', 'min_clients')}), server)
    model = aggregator.model
    assert model.model_version == 1 and len(load_held_out(aggregator.paths, aggregator.model_policy)) == 20

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
