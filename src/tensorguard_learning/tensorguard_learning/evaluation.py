"""Evaluation of a candidate policy and the deployment gate.

Success: per task, s successes in n simulator episodes give a Beta(1 + s, 1 + n - s) posterior
(uniform prior). The gate uses the lower credible bound (the `1 - credibility` quantile), not the
point estimate, so ten lucky episodes cannot clear a 0.85 bar.

KL: both policies are diagonal Gaussians with the same fixed std sigma (`MoEConfig.action_std`),
so KL(new || current) at a state is ||mu_new - mu_cur||^2 / (2 sigma^2); the metric is its mean
over held-out states.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import torch
from scipy.stats import beta

from tensorguard_learning.errors import ConfigError
from tensorguard_learning.metaworld_source import RolloutReport, rollout_success
from tensorguard_learning.policy import MoEPolicy
from tensorguard_learning.training import BCData


def success_lower_bound(successes: int, episodes: int, credibility: float = 0.95) -> float:
    """Lower `credibility` bound of the Beta(1 + s, 1 + n - s) posterior on the success rate."""
    if episodes <= 0 or not 0 <= successes <= episodes:
        raise ConfigError(f'need 0 <= successes <= episodes and episodes > 0, got {successes}/{episodes}')
    if not 0.0 < credibility < 1.0:
        raise ConfigError(f'credibility must be in (0, 1), got {credibility}')
    return float(beta.ppf(1.0 - credibility, 1 + successes, 1 + episodes - successes))


@dataclass
class EvaluationMetrics:
    """What the gate decides on: per-task successes/episodes and the KL to the current policy."""

    successes: dict[str, int]
    episodes: dict[str, int]
    kl_divergence: float | None = None
    credibility: float = 0.95
    reference_success_rate: float | None = None  # the deployed policy's measured rate, if known

    @classmethod
    def from_report(cls, report: RolloutReport, kl_divergence: float | None = None,
                    credibility: float = 0.95) -> EvaluationMetrics:
        """Metrics from a simulator rollout report."""
        return cls({t: r.successes for t, r in report.results.items()},
                   {t: r.episodes for t, r in report.results.items()}, kl_divergence, credibility)

    @property
    def success_rate(self) -> float:
        """Pooled point estimate over all tasks."""
        return sum(self.successes.values()) / sum(self.episodes.values())

    @property
    def success_lower_bound(self) -> float:
        """Lower credible bound of the pooled success rate."""
        return success_lower_bound(sum(self.successes.values()), sum(self.episodes.values()), self.credibility)

    def task_lower_bounds(self) -> dict[str, float]:
        """Lower credible bound per task."""
        return {t: success_lower_bound(self.successes[t], self.episodes[t], self.credibility) for t in self.episodes}


def policy_kl(new: MoEPolicy, current: MoEPolicy, data: BCData, limit: int = 4096) -> float:
    """Mean over (at most `limit`) held-out states of KL(new || current) for fixed-std Gaussians."""
    if new.cfg.action_std != current.cfg.action_std:
        raise ConfigError('KL needs both policies to share action_std')
    idx = torch.linspace(0, len(data) - 1, min(limit, len(data))).long()
    with torch.no_grad():
        mu_new = new(data.states[idx], data.task_ids[idx])[0]
        mu_cur = current(data.states[idx], data.task_ids[idx])[0]
    sq = torch.sum((mu_new - mu_cur) ** 2, dim=-1)
    return float(torch.mean(sq) / (2.0 * new.cfg.action_std ** 2))


def evaluate_policy(policy: MoEPolicy, tasks: Sequence[str], episodes_per_task: int, seed: int = 1_000_000,
                    current: MoEPolicy | None = None, held_out: BCData | None = None,
                    credibility: float = 0.95) -> EvaluationMetrics:
    """Roll `policy` out in Meta-World and (given `current` and `held_out`) measure its KL to `current`."""
    report = rollout_success(policy, tasks, episodes_per_task, seed)
    kl = policy_kl(policy, current, held_out) if current is not None and held_out is not None else None
    return EvaluationMetrics.from_report(report, kl, credibility)


class Decision(str, Enum):
    """Outcome of the gate."""

    REJECT = 'reject'
    CANARY = 'canary'
    DEPLOY = 'deploy'


@dataclass(frozen=True)
class SafetyThresholds:
    """Gate limits. Success limits apply to the lower credible bound (pooled and per task)."""

    min_success_rate: float = 0.85
    max_kl_divergence: float = 0.5
    min_task_success_rate: float = 0.0
    min_episodes: int = 10
    deploy_margin: float = 0.05
    max_regression: float = 1.0  # largest drop below the deployed policy's measured success (1.0: off)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_success_rate <= 1.0 or not 0.0 <= self.min_task_success_rate <= 1.0:
            raise ConfigError('success thresholds must be in [0, 1]')
        if not 0.0 <= self.max_regression <= 1.0:
            raise ConfigError(f'max_regression must be in [0, 1], got {self.max_regression}')
        if self.max_kl_divergence < 0 or self.min_episodes < 1 or self.deploy_margin < 0:
            raise ConfigError('max_kl_divergence, deploy_margin must be >= 0 and min_episodes >= 1')


@dataclass
class EvaluationGate:
    """Decides whether a candidate may replace the fleet's policy."""

    thresholds: SafetyThresholds = field(default_factory=SafetyThresholds)

    def evaluate(self, metrics: EvaluationMetrics) -> tuple[bool, list[str]]:
        """(passed, failures): every failed check is named with its measured value and limit."""
        th = self.thresholds
        failures = []
        total = sum(metrics.episodes.values())
        if total < th.min_episodes:
            failures.append(f'only {total} evaluation episodes, need >= {th.min_episodes}')
        else:
            lcb = metrics.success_lower_bound
            if lcb < th.min_success_rate:
                failures.append(
                    f'success lower bound {lcb:.3f} ({sum(metrics.successes.values())}/{total}, '
                    f'{metrics.credibility:.0%} credible) < min_success_rate {th.min_success_rate:.3f}')
            for task, bound in metrics.task_lower_bounds().items():
                if bound < th.min_task_success_rate:
                    failures.append(f'task {task} success lower bound {bound:.3f} < min_task_success_rate '
                                    f'{th.min_task_success_rate:.3f}')
        reference = metrics.reference_success_rate
        if reference is not None and total and metrics.success_rate < reference - th.max_regression:
            failures.append(f'success {metrics.success_rate:.3f} is more than max_regression {th.max_regression:.3f} '
                            f"below the deployed policy's {reference:.3f}")
        if metrics.kl_divergence is None:
            failures.append('KL divergence to the current policy was not measured')
        elif not np.isfinite(metrics.kl_divergence) or metrics.kl_divergence > th.max_kl_divergence:
            failures.append(f'KL divergence {metrics.kl_divergence:.4f} > max_kl_divergence {th.max_kl_divergence:.4f}')
        return not failures, failures

    def decide(self, metrics: EvaluationMetrics) -> Decision:
        """REJECT if any check fails; DEPLOY if the bound clears the threshold by `deploy_margin`; else CANARY."""
        passed, _ = self.evaluate(metrics)
        if not passed:
            return Decision.REJECT
        if metrics.success_lower_bound >= self.thresholds.min_success_rate + self.thresholds.deploy_margin:
            return Decision.DEPLOY
        return Decision.CANARY
