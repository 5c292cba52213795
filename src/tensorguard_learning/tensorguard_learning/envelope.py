"""OperatingEnvelope: hard limits on what a robot may train, how large its update may be, and what
the fleet's policy may command on it.

Module names a policy can train: ``"experts"`` (expert MLPs), ``"router"`` (task embeddings and
router logits) and ``"base"`` (the encoder; normally frozen after pre-training). Training a module
outside ``trainable_modules``, training more parameters than ``max_trainable_params``, or sending
an update larger than ``target_update_size_kb`` raises `EnvelopeViolation` before anything leaves
the robot.

Commanding (the policy node): every action is kept within ``[action_low, action_high]`` per dimension
and moves at most ``max_action_step`` per dimension from the previous command in one control period;
``safe_action`` is what the robot is sent once when the policy stops commanding (disabled, stale
observation, refused output); an observation older than ``watchdog_periods`` control periods stops it.
Empty action limits mean the envelope allows no commanding at all (`check_commanding` refuses).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tensorguard_learning.errors import ConfigError, EnvelopeViolation
from tensorguard_learning.policy import MoEPolicy

MODULES = ('experts', 'router', 'base')


def module_parameters(policy: MoEPolicy, module: str) -> list:
    """The torch parameters belonging to one named module of the policy."""
    if module == 'experts':
        return list(policy.adapter.experts.parameters())
    if module == 'router':
        return [policy.adapter.task_embedding, policy.adapter.router_logits]
    if module == 'base':
        return list(policy.base.parameters())
    raise ConfigError(f'unknown module {module!r}; known modules are {MODULES}')


@dataclass(frozen=True)
class OperatingEnvelope:
    """Limits from the deployment brief; `round_interval_seconds` also bounds local training time."""

    trainable_modules: tuple[str, ...] = ('experts', 'router')
    max_trainable_params: int = 1_000_000
    target_update_size_kb: float = 500.0
    round_interval_seconds: float = 3600.0
    enable_canary: bool = True
    canary_percentage: float = 0.1
    action_low: tuple[float, ...] = ()
    action_high: tuple[float, ...] = ()
    max_action_step: tuple[float, ...] = ()
    safe_action: tuple[float, ...] = ()
    watchdog_periods: int = 2

    def __post_init__(self) -> None:
        for name in ('trainable_modules', 'action_low', 'action_high', 'max_action_step', 'safe_action'):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = sorted(set(self.trainable_modules) - set(MODULES))
        if unknown:
            raise ConfigError(f'unknown trainable_modules {unknown}; known modules are {MODULES}')
        if self.max_trainable_params <= 0 or self.target_update_size_kb <= 0 or self.round_interval_seconds <= 0:
            raise ConfigError('max_trainable_params, target_update_size_kb and round_interval_seconds must be positive')
        if not 0.0 < self.canary_percentage <= 1.0:
            raise ConfigError(f'canary_percentage must be in (0, 1], got {self.canary_percentage}')
        self._check_action_limits()

    def _check_action_limits(self) -> None:
        limits = {name: getattr(self, name) for name in ('action_low', 'action_high', 'max_action_step', 'safe_action')}
        if len({len(values) for values in limits.values()}) != 1:
            raise ConfigError('action_low, action_high, max_action_step and safe_action need one value per action '
                              f'dimension each, got lengths { {k: len(v) for k, v in limits.items()} }')
        if not all(math.isfinite(v) for values in limits.values() for v in values):
            raise ConfigError(f'action limits must be finite numbers, got {limits}')
        for i, (low, high, step, safe) in enumerate(zip(*limits.values())):
            if not low <= safe <= high:
                raise ConfigError(f'action dimension {i}: safe_action {safe} is outside [{low}, {high}]')
            if step <= 0:
                raise ConfigError(f'action dimension {i}: max_action_step must be positive, got {step}')
        if self.watchdog_periods < 1:
            raise ConfigError(f'watchdog_periods must be at least 1, got {self.watchdog_periods}')

    @property
    def action_dim(self) -> int:
        """Number of action dimensions the commanding limits cover (0: commanding not configured)."""
        return len(self.action_low)

    def check_commanding(self, action_dim: int) -> None:
        """Refuse to command a robot with `action_dim` actions unless every dimension has limits."""
        if self.action_dim == 0 or self.action_dim != action_dim:
            raise EnvelopeViolation(f'the operating envelope limits {self.action_dim} action dimensions, the robot '
                                    f'commands {action_dim}; set action_low/action_high/max_action_step/safe_action '
                                    'for each one')

    def check_training(self, policy: MoEPolicy, modules: Sequence[str]) -> int:
        """Refuse training `modules` unless all are allowed and small enough; returns the parameter count."""
        forbidden = sorted(set(modules) - set(self.trainable_modules))
        if forbidden:
            raise EnvelopeViolation(
                f'training {forbidden} is outside the operating envelope '
                f'(trainable_modules={list(self.trainable_modules)})')
        count = sum(p.numel() for m in modules for p in module_parameters(policy, m))
        if count > self.max_trainable_params:
            raise EnvelopeViolation(
                f'training {list(modules)} touches {count} parameters, over max_trainable_params='
                f'{self.max_trainable_params}')
        return count

    def check_update_size(self, num_bytes: int) -> None:
        """Refuse an update payload larger than `target_update_size_kb` (1 kB = 1024 bytes)."""
        if num_bytes > self.target_update_size_kb * 1024:
            raise EnvelopeViolation(
                f'update of {num_bytes} bytes is over target_update_size_kb={self.target_update_size_kb} '
                f'({int(self.target_update_size_kb * 1024)} bytes); compress more')
