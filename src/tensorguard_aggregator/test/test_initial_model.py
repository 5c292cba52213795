"""Publishing a fleet's initial model from the operator's files (ROS-free): what is installed, and every
refusal leaving the fleet directory as it was."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tensorguard_aggregator.held_out import held_out_dir, load_held_out
from tensorguard_aggregator.initial_model import (
    EXIT_HELD_OUT,
    EXIT_POLICY,
    InvalidHeldOutSet,
    InvalidPolicyFile,
    ModelAlreadyPublished,
    main,
    publish_initial_model,
)
from tensorguard_aggregator.rounds import Aggregator, AggregatorSettings
from tensorguard_crypto.cli import EXIT_FLEET, EXIT_KEY_FILE, EXIT_OK
from tensorguard_crypto.fleet import FleetNotProvisioned, FleetPaths, provision_server
from tensorguard_crypto.keystore import WrongPassphrase
from tensorguard_crypto.verify import verify_model_package
from tensorguard_learning.demonstrations import LOG_NAME, Demonstration, DemonstrationStore
from tensorguard_learning.policy import MoEConfig, MoEPolicy, build_policy

PASSPHRASE = b'test passphrase, not a secret'
TASKS = ('push-v3', 'door-open-v3')


@pytest.fixture(scope='module')
def provisioned(tmp_path_factory) -> Path:
    """One provisioned fleet (three scrypt key files), copied by each test."""
    root = tmp_path_factory.mktemp('template') / 'fleet'
    provision_server(FleetPaths(root), PASSPHRASE)
    return root


@pytest.fixture
def fleet(provisioned, tmp_path) -> FleetPaths:
    root = tmp_path / 'server-host' / 'fleet'
    shutil.copytree(provisioned, root)
    return FleetPaths(root)


def tiny_policy(tasks: tuple[str, ...] = TASKS) -> MoEPolicy:
    policy = build_policy(MoEConfig(tasks=tasks, base_hidden=32, feature_dim=32, expert_hidden=16, num_experts=2))
    policy.freeze_base()
    return policy


def demonstration(task: str, frames: int = 6, obs_dim: int = 39) -> Demonstration:
    return Demonstration(task=task, observation_state=np.linspace(-1, 1, frames * obs_dim).reshape(frames, obs_dim),
                         action=np.linspace(-0.5, 0.5, frames * 4).reshape(frames, 4))


@pytest.fixture
def policy_file(tmp_path) -> Path:
    path = tmp_path / 'operator' / 'policy.pt'
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(tiny_policy().state_bytes())
    return path


def held_out_store(directory: Path, demos: list[Demonstration]) -> Path:
    with DemonstrationStore(directory, max_bytes=1 << 24) as store:
        for demo in demos:
            store.append_episode(demo)
    return directory


@pytest.fixture
def held_out(tmp_path) -> Path:
    demos = [demonstration(task, 5 + i) for i, task in enumerate(TASKS * 2)]
    return held_out_store(tmp_path / 'operator' / 'held_out', demos)


def server_entries(paths: FleetPaths) -> list[str]:
    """Everything under server/, to compare before and after a refusal."""
    return sorted(str(p.relative_to(paths.server)) for p in paths.server.rglob('*'))


def refused(paths: FleetPaths, policy: Path, held: Path, error: type[Exception], match: str,
            passphrase: bytes = PASSPHRASE) -> None:
    before = server_entries(paths)
    with pytest.raises(error, match=match):
        publish_initial_model(paths, policy, held, passphrase)
    assert server_entries(paths) == before  # nothing staged, installed or signed stays behind


def test_publishes_the_policy_as_signed_version_1_and_copies_the_held_out_set(fleet, policy_file, held_out):
    operator_files = sorted(os.listdir(held_out))
    published = publish_initial_model(fleet, policy_file, held_out, PASSPHRASE)
    assert published.model_version == 1 and published.model_path == fleet.models_dir / '1.tgm'
    assert published.held_out_episodes == {'push-v3': 2, 'door-open-v3': 2} and published.held_out_frames == 26
    package = verify_model_package(published.model_path.read_bytes(), fleet.kms())
    assert (package.model_version, package.parent_version, package.round_id, package.gate_decision) == (
        1, 0, 0, 'initial')
    assert MoEPolicy.from_bytes(package.parameters).state_bytes() == MoEPolicy.from_bytes(
        policy_file.read_bytes()).state_bytes()
    aggregator = Aggregator(AggregatorSettings(fleet_dir=str(fleet.root)), PASSPHRASE)
    assert aggregator.model.model_version == 1 and aggregator.model_policy.cfg.tasks == TASKS
    assert len(load_held_out(fleet, aggregator.model_policy)) == 26
    assert sorted(os.listdir(held_out)) == operator_files  # the operator's store is only read
    assert not [p for p in fleet.server.iterdir() if p.name.startswith('.')]


def test_the_initial_model_is_published_once(fleet, policy_file, held_out):
    publish_initial_model(fleet, policy_file, held_out, PASSPHRASE)
    refused(fleet, policy_file, held_out, ModelAlreadyPublished, 'already has a model')
    (fleet.models_dir / '1.tgm').unlink()
    refused(fleet, policy_file, held_out, ModelAlreadyPublished, 'held-out set is published once')


def test_refuses_a_file_that_is_not_a_policy(fleet, policy_file, held_out, tmp_path):
    junk = tmp_path / 'notes.yaml'
    junk.write_text('tasks: [push-v3]\n')
    refused(fleet, junk, held_out, InvalidPolicyFile, 'not a TensorGuard policy file.*magic')
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(policy_file.read_bytes()[:500])
    refused(fleet, truncated, held_out, InvalidPolicyFile, 'malformed')
    refused(fleet, tmp_path / 'missing.pt', held_out, InvalidPolicyFile, 'not a regular file')


def test_refuses_a_policy_whose_base_weights_were_changed(fleet, held_out, tmp_path):
    policy = tiny_policy()
    state = policy.state_dict()
    name = next(key for key in state if key.startswith('base.') and key.endswith('weight'))
    state[name] = state[name] + 0.01
    buffer = io.BytesIO()
    torch.save({'config': {**policy.cfg.__dict__, 'tasks': list(TASKS)}, 'state': state,
                'base_version': policy.base_version}, buffer)
    tampered = tmp_path / 'tampered.pt'
    tampered.write_bytes(b'TGPOL1' + buffer.getvalue())
    refused(fleet, tampered, held_out, InvalidPolicyFile, 'base_version does not match')


class RunsCode:
    """Pickles to a call of os.mkdir: a plain unpickler would create the marker directory."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_refuses_a_pickle_that_would_run_code_without_running_it(fleet, held_out, tmp_path):
    marker = tmp_path / 'code-ran'
    buffer = io.BytesIO()
    torch.save({'config': RunsCode(marker), 'state': {}, 'base_version': ''}, buffer)
    crafted = tmp_path / 'crafted.pt'
    crafted.write_bytes(b'TGPOL1' + buffer.getvalue())
    refused(fleet, crafted, held_out, InvalidPolicyFile, 'UnpicklingError')
    assert not marker.exists()


def test_refuses_episodes_outside_the_policy_vocabulary(fleet, policy_file, tmp_path):
    held = held_out_store(tmp_path / 'mixed', [demonstration('push-v3'), demonstration('reach-v3')])
    refused(fleet, policy_file, held, InvalidHeldOutSet, r"episode 1 is of task 'reach-v3', not in the policy")


def test_refuses_episodes_of_other_sizes(fleet, policy_file, tmp_path):
    held = held_out_store(tmp_path / 'sizes', [demonstration('push-v3', obs_dim=12)])
    refused(fleet, policy_file, held, InvalidHeldOutSet, r'sizes \(12, 4\)')


def test_refuses_an_empty_missing_or_torn_held_out_set(fleet, policy_file, tmp_path):
    refused(fleet, policy_file, held_out_store(tmp_path / 'empty', []), InvalidHeldOutSet, 'no complete episode')
    refused(fleet, policy_file, tmp_path / 'nowhere', InvalidHeldOutSet, 'not a directory')
    (tmp_path / 'plain').mkdir()
    refused(fleet, policy_file, tmp_path / 'plain', InvalidHeldOutSet, f'holds no {LOG_NAME}')
    torn = held_out_store(tmp_path / 'torn', [demonstration('push-v3')])
    with open(torn / LOG_NAME, 'ab') as log:
        log.write(b'TGD1\x01\x40\x00')
    refused(fleet, policy_file, torn, InvalidHeldOutSet, 'not a complete episode')


def test_refuses_a_wrong_passphrase_and_an_unprovisioned_directory(fleet, policy_file, held_out, tmp_path):
    refused(fleet, policy_file, held_out, WrongPassphrase, 'wrong passphrase', passphrase=b'not the passphrase')
    with pytest.raises(FleetNotProvisioned):
        publish_initial_model(FleetPaths(tmp_path / 'nothing'), policy_file, held_out, PASSPHRASE)
    assert not (tmp_path / 'nothing').exists()


def test_command_exit_codes_and_output(fleet, policy_file, held_out, tmp_path, monkeypatch, capsys):
    def run(*argv: str) -> tuple[int, str, str]:
        code = main([str(fleet.root), *argv])
        out, err = capsys.readouterr()
        assert 'passphrase' not in out and PASSPHRASE.decode() not in out + err
        return code, out, err

    monkeypatch.setenv('TENSORGUARD_KEY_PASSPHRASE', 'not the passphrase')
    assert run('--policy', str(policy_file), '--held-out', str(held_out))[0] == EXIT_KEY_FILE
    monkeypatch.setenv('TENSORGUARD_KEY_PASSPHRASE', PASSPHRASE.decode())
    junk = tmp_path / 'junk.pt'
    junk.write_bytes(os.urandom(64))
    code, _, err = run('--policy', str(junk), '--held-out', str(held_out))
    assert code == EXIT_POLICY and err.startswith(f'error: {junk}: not a TensorGuard policy file')
    code, _, err = run('--policy', str(policy_file), '--held-out', str(tmp_path / 'nowhere'))
    assert code == EXIT_HELD_OUT and 'not a directory' in err
    code, out, _ = run('--policy', str(policy_file), '--held-out', str(held_out))
    assert code == EXIT_OK and 'published model version 1' in out and 'held-out set' in out
    assert run('--policy', str(policy_file), '--held-out', str(held_out))[0] == EXIT_FLEET
    assert sorted(os.listdir(held_out_dir(fleet))) == ['.lock', LOG_NAME]


def test_a_failed_signature_write_takes_the_installed_held_out_set_back(fleet, policy_file, held_out, monkeypatch):
    def disk_full(*_args, **_kwargs):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(Aggregator, 'publish_model', disk_full)
    refused(fleet, policy_file, held_out, OSError, 'No space left')
