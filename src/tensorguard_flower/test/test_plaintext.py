"""The frontier's rounds without the lattice layer: the same sums as the robots' own code, the mechanism's noise."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tensorguard_aggregator.gate import DeploymentGate, GateSettings
from tensorguard_crypto import update_codec
from tensorguard_edge.client import EdgeSettings, local_training
from tensorguard_flower import frontier
from tensorguard_flower.plaintext import SECURITY_LEVEL, Mechanism, RobotPool, run_rounds
from tensorguard_flower.scale import process_table
from tensorguard_learning.aggregation import ExpertDrivenStrategy
from tensorguard_learning.metaworld_source import record_demonstrations
from tensorguard_learning.policy import MoEConfig, build_policy
from tensorguard_learning.training import train_local

TASKS = ('reach-v3', 'push-v3')
EDGE = EdgeSettings(train_steps=5, batch_size=32)


@pytest.fixture(scope='module')
def fleet():
    demos = [record_demonstrations(TASKS[i % 2], 1, 70_000 + 10 * i) for i in range(5)]
    policy = build_policy(MoEConfig(tasks=TASKS, num_experts=2, top_k=1, expert_hidden=16, router_init='round_robin'))
    return policy, demos


def _vectors(policy, demos):
    budget, envelope = local_training(EDGE)
    reference = policy.flatten_segments()
    return [ExpertDrivenStrategy().flatten_update(train_local(policy.clone(), robot, budget, envelope,
                                                              modules=tuple(EDGE.trainable_modules),
                                                              reference=reference)) for robot in demos]


def test_the_pool_sums_what_the_robots_train_and_the_mechanism_adds_only_its_noise(fleet):
    policy, demos = fleet
    vectors = _vectors(policy, demos)  # training is deterministic: the same vectors the workers compute
    with RobotPool(demos, EDGE, workers=2) as pool:
        trained = []
        plain = pool.round_sum(policy, None, trained.append)
        assert np.allclose(plain, np.sum(vectors, axis=0), atol=1e-5)
        assert sum(trained) == len(demos) and len(trained) > 1  # progress as each worker's share is done
        mechanism = Mechanism(noise_multiplier=1.0, clipping_norm=0.5)
        codec = update_codec.build_codec(mechanism.profile(5), plain.size, 5, SECURITY_LEVEL, bytes(32))
        noisy = pool.round_sum(policy, codec)
    clipped = np.sum([v * min(1.0, 0.5 / np.linalg.norm(v)) for v in vectors], axis=0)
    # The decoded sum is the clipped sum plus noise of the mechanism's own standard deviation (z C = 0.5
    # on the sum, plus rounding): a noise-free or wrongly scaled sum fails.
    error = noisy - clipped
    predicted = codec.skellam.aggregate_stddev(5)
    assert 0.8 * predicted < np.std(error) < 1.2 * predicted
    assert abs(np.mean(error)) < 5 * predicted / np.sqrt(error.size)


def test_rounds_report_the_robots_ledger_epsilon_and_none_without_privacy(fleet):
    policy, demos = fleet
    gate = DeploymentGate(GateSettings(eval_tasks=list(TASKS), eval_episodes_per_task=1))
    with RobotPool(demos, EDGE, workers=1) as pool:
        private = run_rounds(pool, policy, 2, Mechanism(1.5), gate)
        plain = run_rounds(pool, policy, 1, Mechanism(None), gate)
    dim = ExpertDrivenStrategy().vector_length(policy.segment_sizes())
    assert [row['epsilon'] for row in private] == [Mechanism(1.5).epsilon_after(5, dim, r) for r in (1, 2)]
    assert 0 < private[0]['epsilon'] < private[1]['epsilon'] and plain[0]['epsilon'] is None
    assert all(sum(row['episodes'].values()) == 2 for row in private + plain)
    assert plain[0]['frozen_segments'] == 0 < plain[0]['delta_norm']


def test_the_smallest_fleet_an_epsilon_needs_is_read_off_the_runs():
    def run(k, z, final):
        epsilon = None if z is None else 9 / z
        return {'robots': k, 'noise_multiplier': z, 'seconds': 1.0,
                'rows': [{'success': final, 'epsilon': epsilon, 'lower': final / 2, 'frozen_segments': 0}]}
    runs = [run(16, None, 0.8), run(16, 1.5, 0.3), run(16, 3.0, 0.1),
            run(100, None, 0.9), run(100, 1.5, 0.85), run(100, 3.0, 0.5),
            run(1000, None, 0.9), run(1000, 1.5, 0.9), run(1000, 3.0, 0.82)]
    assert frontier.smallest_fleets(runs, gap=10) == [
        {'noise_multiplier': 1.5, 'epsilon': 6.0, 'smallest_k': 100},
        {'noise_multiplier': 3.0, 'epsilon': 3.0, 'smallest_k': 1000}]
    assert frontier.smallest_fleets(runs, gap=5)[1]['smallest_k'] is None
    # Repeats: the median decides, not the best run (100 at z = 1.5: 0.85, 0.2, 0.3 -> median 0.3).
    repeated = runs + [run(100, 1.5, 0.2), run(100, 1.5, 0.3), run(1000, 3.0, 0.9), run(1000, 3.0, 0.1)]
    assert frontier.final_successes(repeated)[100, 1.5] == [0.85, 0.2, 0.3]
    assert [need['smallest_k'] for need in frontier.smallest_fleets(repeated, gap=10)] == [1000, 1000]
    table = frontier.markdown(repeated, frontier.smallest_fleets(repeated, gap=10), 1, 10, 1e-5)
    assert '| 100 | 1.5 | 3 | 0.30 (0.20-0.85) | -60 | 1 of 3 |' in table
    assert '| 1000 | 3.0 | 3 | 0.82 (0.10-0.90) | -8 | 2 of 3 |' in table


@pytest.mark.slow
def test_the_frontier_command_writes_its_report_table_and_plot(tmp_path):
    out = tmp_path / 'frontier'
    assert frontier.main(['--robots', '2', '3', '--noise-multipliers', '2', '--repeats', '2', '--rounds', '1',
                          '--episodes', '1', '--select-per-task', '--tasks', 'reach-v3', 'push-v3',
                          'drawer-close-v3', '--pretrain-tasks', 'window-close-v3',
                          '--train-steps', '3', '--eval-episodes', '1', '--pretrain-steps', '10', '--workers', '2',
                          '--out', str(out), '--cache', str(tmp_path / 'cache')]) == 0
    report = json.loads((out / 'report.json').read_text())
    assert [(run['robots'], run['noise_multiplier']) for run in report['runs']] == [
        (2, None), (2, 2.0), (2, 2.0), (3, None), (3, 2.0), (3, 2.0)]
    assert report['tasks'] == ['reach-v3', 'push-v3', 'drawer-close-v3']
    assert report['pretrain_tasks'] == ['window-close-v3']
    assert all(set(row['selection']['selection_successes']) == set(report['tasks'])
               for run in report['runs'] for row in run['rows'])
    assert all(set(row['selection']['kept_tasks']) <= set(report['tasks'])
               and sum(row['selection']['selection_successes'].values()) <= len(report['tasks'])
               for run in report['runs'] for row in run['rows'])
    assert (out / 'frontier.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert '| 3 | 2.0 |' in (out / 'frontier.md').read_text() and '| 3 | 2.0 | 2 |' in (out / 'frontier.md').read_text()


_CALLER_OF_A_LONG_ROUND = """
from tensorguard_edge.client import EdgeSettings
from tensorguard_flower.plaintext import RobotPool
from tensorguard_learning.metaworld_source import record_demonstrations
from tensorguard_learning.policy import MoEConfig, build_policy
demos = [record_demonstrations('reach-v3', 1, 71_000 + i) for i in range(2)]
policy = build_policy(MoEConfig(tasks=('reach-v3',), num_experts=1, top_k=1, expert_hidden=16))
with RobotPool(demos, EdgeSettings(train_steps=10**7, train_max_seconds=600.0, batch_size=32), workers=2) as pool:
    pool.round_sum(policy, None)
"""


def _workers(pid: int) -> set[int]:
    """The pool's workers: the children of the fork server, itself a child of the caller."""
    table = process_table()
    children = {child for child, stat in table.items() if stat.parent == pid}
    return {child for child, stat in table.items() if stat.parent in children}


def _least_cpu_s(pids: set[int]) -> float:
    """The CPU seconds of the one of `pids` that has used least (0 for one that has ended)."""
    table = process_table()
    return min(table[pid].cpu_s if pid in table else 0.0 for pid in pids)


def _running(pids: set[int]) -> set[int]:
    """Those of `pids` still running: an exited process nobody has reaped yet (a zombie) is not."""
    return {pid for pid, stat in process_table().items() if pid in pids and stat.state != 'Z'}


@pytest.mark.skipif(not Path('/proc/self/stat').exists(), reason='reads the process tree from /proc')
@pytest.mark.parametrize('stop', [signal.SIGTERM, signal.SIGKILL])
def test_workers_stop_when_the_caller_is_stopped_mid_round(stop):
    # A frontier run stopped with a signal runs no clean-up; its workers, each training its share for
    # minutes, must not outlive it.
    caller = subprocess.Popen([sys.executable, '-c', _CALLER_OF_A_LONG_ROUND])
    deadline = time.monotonic() + 120
    while len(workers := _workers(caller.pid)) < 2:
        assert caller.poll() is None and time.monotonic() < deadline, 'the pool never started its workers'
        time.sleep(0.5)
    # Both are training once each has used more CPU than starting a worker takes (about 3.2 s here).
    while _least_cpu_s(workers) < 8.0:
        assert caller.poll() is None and time.monotonic() < deadline, 'the workers never started training'
        time.sleep(0.5)
    os.kill(caller.pid, stop)
    caller.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _running(workers):
        if time.monotonic() > deadline:
            for pid in _running(workers):
                os.kill(pid, signal.SIGKILL)
            pytest.fail('worker processes outlived the stopped caller')
        time.sleep(0.5)
