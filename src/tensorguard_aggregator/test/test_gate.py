"""The aggregator's deployment gate and round log, without ROS."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tensorguard_aggregator import gate as gate_module
from tensorguard_aggregator.gate import DeploymentGate, GateSettings, RoundLog
from tensorguard_crypto.fleet import FleetPaths
from tensorguard_learning.evaluation import EvaluationMetrics
from tensorguard_learning.policy import MoEConfig, build_policy

# Decides like config/fleet.yaml: no success floor, KL and regression checks only.
SETTINGS = GateSettings(eval_tasks=['push-v3', 'door-open-v3'], eval_episodes_per_task=10, eval_seed=7_000,
                        min_success_rate=0.0, max_kl_divergence=200.0, deploy_margin=0.05, max_regression=0.10,
                        canary_percentage=0.25)


def _metrics(successes: int, kl: float | None = 1.0, episodes: int = 20) -> EvaluationMetrics:
    return EvaluationMetrics({'push-v3': successes}, {'push-v3': episodes}, kl_divergence=kl)


def test_importing_the_gate_loads_no_ros():
    probe = 'import sys, tensorguard_aggregator.gate; print(sorted(m for m in sys.modules if m.startswith("rclpy")))'
    assert subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True).stdout == '[]\n'


def test_settings_describe_the_evaluation_gate():
    thresholds = SETTINGS.evaluation_gate().thresholds
    assert (thresholds.min_success_rate, thresholds.max_kl_divergence, thresholds.deploy_margin,
            thresholds.max_regression) == (0.0, 200.0, 0.05, 0.10)
    assert thresholds.min_episodes == 10
    assert GateSettings(eval_tasks=['push-v3'], eval_episodes_per_task=3).evaluation_gate().thresholds.min_episodes == 3


def test_each_round_and_its_canary_trial_draw_their_own_seeds():
    assert SETTINGS.evaluation_seed(0) == 7_000
    assert SETTINGS.evaluation_seed(3) == 10_000
    assert SETTINGS.evaluation_seed(3, canary_trial=True) == 10_500
    assert SETTINGS.evaluation_seed(3, selection_trial=True) == 10_250


@pytest.mark.parametrize(('robots', 'expected'), [
    (['robot_3', 'robot_1', 'robot_2', 'robot_4'], ['robot_1']),
    ([f'robot_{i}' for i in range(1, 6)], ['robot_1', 'robot_2']),
    (['robot_9'], ['robot_9']),
])
def test_canary_robots_are_the_first_share_by_id_and_at_least_one(robots, expected):
    assert SETTINGS.canary_robots(robots) == expected


def test_first_candidate_has_no_reference_so_only_kl_can_reject_it():
    gate = DeploymentGate(SETTINGS)
    assert gate.decide(_metrics(5)) == ('deploy', [])
    decision, failures = gate.decide(_metrics(20, kl=500.0))
    assert decision == 'reject' and 'KL divergence' in failures[0]


def test_regression_against_the_deployed_model_rejects():
    gate = DeploymentGate(SETTINGS, deployed_success=0.9)
    worse = _metrics(14)  # 0.70
    worse.reference_success_rate = gate.deployed_success
    decision, failures = gate.decide(worse)
    assert decision == 'reject' and 'max_regression' in failures[0]
    assert gate.settle(decision, worse) == 0.9


def test_a_bound_short_of_the_margin_is_a_canary_promoted_or_rolled_back_by_its_second_trial():
    gate = DeploymentGate(GateSettings(eval_tasks=['push-v3'], eval_episodes_per_task=20, min_success_rate=0.5,
                                       deploy_margin=0.3), deployed_success=0.6)
    first = _metrics(17)  # 0.85, lower bound about 0.66: clears 0.5, not 0.5 + 0.3
    assert gate.decide(first) == ('canary', [])
    failed_trial = _metrics(8)  # bound below 0.5
    promoted, failures = gate.promote(failed_trial)
    assert not promoted and 'success lower bound' in failures[0]
    assert gate.settle('canary', first, promoted) == 0.6  # rolled back: the parent's rate stays
    promoted, failures = gate.promote(_metrics(18))
    assert promoted and failures == []
    assert gate.settle('canary', first, promoted) == 0.85  # promoted: the first trial's rate


def test_evaluate_uses_the_round_seeds_and_the_deployed_reference(monkeypatch):
    calls = []

    def fake_evaluate(policy, tasks, episodes, seed, current=None, held_out=None):
        calls.append((policy, tuple(tasks), episodes, seed, current, held_out))
        return _metrics(10)

    monkeypatch.setattr(gate_module, 'evaluate_policy', fake_evaluate)
    gate = DeploymentGate(SETTINGS, deployed_success=0.4)
    metrics = gate.evaluate('candidate', 2, 'current', 'held_out')
    trial = gate.evaluate('candidate', 2, 'parent', 'held_out', canary_trial=True)
    assert calls == [('candidate', ('push-v3', 'door-open-v3'), 10, 9_000, 'current', 'held_out'),
                     ('candidate', ('push-v3', 'door-open-v3'), 10, 9_500, 'parent', 'held_out')]
    assert metrics.reference_success_rate == trial.reference_success_rate == 0.4


def test_selection_keeps_the_deployed_experts_of_tasks_the_candidate_made_worse(monkeypatch):
    tasks = ('push-v3', 'door-open-v3', 'drawer-close-v3', 'reach-v3')
    current = build_policy(MoEConfig(tasks=tasks, num_experts=4, top_k=1, expert_hidden=8, router_init='round_robin'))
    candidate = current.clone()
    with torch.no_grad():
        for parameter in candidate.adapter.parameters():
            parameter.add_(torch.randn_like(parameter))
    # Selection-trial successes: push got worse, door-open equal (a tie goes to the candidate), drawer better.
    successes = {id(candidate): {'push-v3': 3, 'door-open-v3': 5, 'drawer-close-v3': 9},
                 id(current): {'push-v3': 8, 'door-open-v3': 5, 'drawer-close-v3': 2}}
    calls = []

    def fake_evaluate(policy, tasks, episodes, seed, current=None, held_out=None):
        calls.append(seed)
        return EvaluationMetrics(dict(successes[id(policy)]), dict.fromkeys(tasks, episodes))

    monkeypatch.setattr(gate_module, 'evaluate_policy', fake_evaluate)
    settings = GateSettings(eval_tasks=['push-v3', 'door-open-v3', 'drawer-close-v3'], eval_episodes_per_task=10,
                            eval_seed=7_000, select_per_task=True)
    selected, record = DeploymentGate(settings).select_tasks(candidate, current, 2)
    assert calls == [9_250, 9_250]
    assert record['kept_tasks'] == ['push-v3']
    assert record['selection_successes']['drawer-close-v3'] == 9
    states = torch.randn(8, 39).numpy()
    np.testing.assert_array_equal(selected.act(states, 'push-v3'), current.act(states, 'push-v3'))
    for task in ('door-open-v3', 'drawer-close-v3', 'reach-v3'):  # reach is not evaluated: the candidate's
        np.testing.assert_array_equal(selected.act(states, task), candidate.act(states, task))
    assert DeploymentGate(SETTINGS).select_tasks(candidate, current, 2) == (candidate, None)


def test_at_most_250_episodes_per_task_so_the_trials_never_share_seeds():
    field = {f.name: f for f in dataclasses.fields(GateSettings)}['eval_episodes_per_task']
    assert field.metadata['range'][1] == gate_module.SELECTION_TRIAL_OFFSET == gate_module.CANARY_TRIAL_OFFSET / 2


def test_round_log_appends_and_reads_back(tmp_path):
    paths = FleetPaths(tmp_path / 'fleet')
    paths.server.mkdir(parents=True)
    log = RoundLog.of(paths)
    assert log.path == paths.server / 'rounds.jsonl'
    assert log.deployed_success_rate() is None
    log.append({'round_id': 1, 'outcome': 'aggregated', 'decision': 'deploy', 'deployed_success_rate': 0.5})
    log.append({'round_id': 2, 'outcome': 'failed', 'detail': 'first try'})
    log.append({'round_id': 2, 'outcome': 'aggregated', 'decision': 'reject', 'deployed_success_rate': None})
    assert log.outcome(2)['decision'] == 'reject'
    assert log.outcome(1)['deployed_success_rate'] == 0.5
    assert log.outcome(3) == {}
    assert log.deployed_success_rate() == 0.5
    assert [json.loads(line)['round_id'] for line in log.path.read_text().splitlines()] == [1, 2, 2]


def test_round_log_reports_a_corrupt_line(tmp_path):
    log = RoundLog(tmp_path / 'rounds.jsonl')
    log.path.write_text('{"round_id": 1}\nnot json\n')
    with pytest.raises(ValueError):
        log.outcome(1)
