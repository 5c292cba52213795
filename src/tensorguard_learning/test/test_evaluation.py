"""Beta bound, KL, the gate, and simulator rollouts."""
import numpy as np
import pytest
import torch

from tensorguard_learning.errors import ConfigError
from tensorguard_learning.evaluation import (
    Decision,
    EvaluationGate,
    EvaluationMetrics,
    SafetyThresholds,
    evaluate_policy,
    policy_kl,
    success_lower_bound,
)
from tensorguard_learning.metaworld_source import expert_success, record_demonstrations
from tensorguard_learning.training import BCData

GATE = EvaluationGate(SafetyThresholds(min_success_rate=0.85, max_kl_divergence=0.5, min_episodes=10))


def test_lower_bound_known_values():
    for n in (10, 40):
        assert success_lower_bound(n, n) == pytest.approx(0.05 ** (1 / (n + 1)))
    assert success_lower_bound(0, 10) == pytest.approx(1 - 0.95 ** (1 / 11))
    assert success_lower_bound(9, 10) < 0.9
    with pytest.raises(ConfigError):
        success_lower_bound(11, 10)


def test_gate_passes():
    metrics = EvaluationMetrics({'a': 100, 'b': 99}, {'a': 100, 'b': 100}, kl_divergence=0.1)
    assert GATE.evaluate(metrics) == (True, [])
    assert GATE.decide(metrics) == Decision.DEPLOY


def test_gate_fails_on_success_bound_not_point_estimate():
    metrics = EvaluationMetrics({'a': 18}, {'a': 20}, kl_divergence=0.1)
    assert metrics.success_rate == 0.9 > 0.85
    passed, failures = GATE.evaluate(metrics)
    assert not passed and len(failures) == 1 and 'success lower bound' in failures[0]
    assert GATE.decide(metrics) == Decision.REJECT


def test_gate_fails_on_kl():
    metrics = EvaluationMetrics({'a': 100}, {'a': 100}, kl_divergence=0.7)
    passed, failures = GATE.evaluate(metrics)
    assert not passed and failures == ['KL divergence 0.7000 > max_kl_divergence 0.5000']
    passed, failures = GATE.evaluate(EvaluationMetrics({'a': 100}, {'a': 100}))
    assert not passed and 'not measured' in failures[0]


def test_gate_fails_on_regression_below_the_deployed_policy():
    gate = EvaluationGate(SafetyThresholds(min_success_rate=0.0, max_kl_divergence=100.0, max_regression=0.15))
    worse = EvaluationMetrics({'a': 29}, {'a': 50}, kl_divergence=1.0, reference_success_rate=0.98)
    passed, failures = gate.evaluate(worse)
    assert not passed and failures == ["success 0.580 is more than max_regression 0.150 below the deployed "
                                       "policy's 0.980"]
    assert gate.decide(worse) == Decision.REJECT
    within = EvaluationMetrics({'a': 42}, {'a': 50}, kl_divergence=1.0, reference_success_rate=0.98)
    assert gate.evaluate(within) == (True, [])
    unknown = EvaluationMetrics({'a': 5}, {'a': 50}, kl_divergence=1.0)
    assert gate.evaluate(unknown) == (True, [])
    with pytest.raises(ConfigError):
        SafetyThresholds(max_regression=1.5)


def test_gate_canary_band_and_too_few_episodes():
    metrics = EvaluationMetrics({'a': 57}, {'a': 60}, kl_divergence=0.1)
    assert 0.85 <= metrics.success_lower_bound < 0.90
    assert GATE.decide(metrics) == Decision.CANARY
    passed, failures = GATE.evaluate(EvaluationMetrics({'a': 5}, {'a': 5}, kl_divergence=0.0))
    assert not passed and 'evaluation episodes' in failures[0]
    gate = EvaluationGate(SafetyThresholds(min_success_rate=0.3, min_task_success_rate=0.5))
    passed, failures = gate.evaluate(EvaluationMetrics({'a': 100, 'b': 0}, {'a': 100, 'b': 100}, 0.0))
    assert not passed and len(failures) == 1 and failures[0].startswith('task b success lower bound 0.00')


def test_kl_of_fixed_std_gaussians(tiny_policy, demos):
    data = BCData.from_demonstrations(tiny_policy, demos)
    assert policy_kl(tiny_policy, tiny_policy.clone(), data) == pytest.approx(0.0, abs=1e-9)
    shifted = tiny_policy.clone()
    with torch.no_grad():
        for expert in shifted.adapter.experts:
            expert[-1].bias += 0.1
    expected = 4 * 0.1 ** 2 / (2 * tiny_policy.cfg.action_std ** 2)
    assert policy_kl(shifted, tiny_policy, data) == pytest.approx(expected, rel=1e-4)


def test_expert_demonstrations_and_rollouts_succeed():
    demos = record_demonstrations('drawer-close-v3', 2, seed=5)
    assert len(demos) == 2 and demos[0].observation_state.shape[1] == 39 and demos[0].action.shape[1] == 4
    report = expert_success(['drawer-close-v3'], 2, seed=7)
    assert report.results['drawer-close-v3'].successes == 2


def test_evaluate_policy_of_untrained_policy_reports_metrics(tiny_policy):
    metrics = evaluate_policy(tiny_policy, ['drawer-close-v3'] if 'drawer-close-v3' in tiny_policy.cfg.tasks
                              else ['push-v3'], 1, current=tiny_policy,
                              held_out=BCData(torch.zeros(3, 39), torch.zeros(3, 4), torch.zeros(3, dtype=torch.long)))
    assert sum(metrics.episodes.values()) == 1 and metrics.kl_divergence == 0.0
    assert np.isfinite(metrics.success_lower_bound)
