"""Behaviour cloning: server-side pre-training of the base, robot-side training of the adapter.

`train_local` fits the adapter's mean action to the demonstrations by mean squared error (the
Gaussian log-likelihood with the fixed std of `policy.py`), within a step and time budget, and
returns per-segment parameter deltas plus usage: for expert e, the mean routing weight of e over
the training samples it saw; for task t, the fraction of those samples from task t. Both lie in
[0, 1], so they can ride in the update vector next to the deltas without blowing up its norm.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tensorguard_learning.demonstrations import Demonstration, DemonstrationStore
from tensorguard_learning.envelope import OperatingEnvelope, module_parameters
from tensorguard_learning.errors import ConfigError
from tensorguard_learning.policy import MoEPolicy

_LOSS_PROBE = 512


@dataclass(frozen=True)
class TrainingBudget:
    """How much local work one round may do; whichever limit is hit first stops training.

    `proximal_mu` > 0 adds the FedProx term (Li et al. 2020) mu/2 * ||theta - reference||^2, which
    keeps a robot's local adapter near the global one between synchronisations.
    """

    max_steps: int = 200
    max_seconds: float | None = None
    batch_size: int = 256
    learning_rate: float = 1e-3
    seed: int = 0
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.max_steps <= 0 or self.batch_size <= 0 or self.learning_rate <= 0:
            raise ConfigError('max_steps, batch_size and learning_rate must be positive')
        if self.proximal_mu < 0:
            raise ConfigError(f'proximal_mu must be >= 0, got {self.proximal_mu}')
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError(f'max_seconds must be positive, got {self.max_seconds}')


@dataclass
class BCData:
    """Behaviour-cloning tensors: raw states, expert actions, task ids."""

    states: torch.Tensor
    actions: torch.Tensor
    task_ids: torch.Tensor
    _features: tuple[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def frozen_features(self, policy: MoEPolicy) -> torch.Tensor:
        """Base features of all states, cached per frozen base version."""
        if self._features is None or self._features[0] != policy.base_version:
            with torch.no_grad():
                self._features = (policy.base_version, policy.base(self.states))
        return self._features[1]

    @classmethod
    def from_demonstrations(cls, policy: MoEPolicy, demos: Iterable[Demonstration]) -> BCData:
        """Stack the frames of `demos` (tasks must be in the policy config)."""
        demos = list(demos)
        if not demos:
            raise ConfigError('no demonstrations to train on')
        tasks = [d.task for d in demos for _ in range(d.num_frames)]
        return cls(torch.as_tensor(np.concatenate([d.observation_state for d in demos])),
                   torch.as_tensor(np.concatenate([d.action for d in demos])),
                   policy.task_ids(tasks))

    @classmethod
    def from_store(cls, policy: MoEPolicy, store: DemonstrationStore) -> BCData:
        """All committed episodes of a store."""
        return cls.from_demonstrations(policy, store.iter_episodes())


@dataclass
class LocalUpdate:
    """One robot's round result: deltas per expert and per task segment, and how much each was used."""

    expert_deltas: dict[int, np.ndarray]
    expert_usage: np.ndarray
    task_deltas: dict[int, np.ndarray]
    task_usage: np.ndarray
    base_version: str
    num_samples: int
    steps: int
    loss_before: float
    loss_after: float

    def segment_deltas(self) -> list[np.ndarray]:
        """Deltas in segment order: experts 0..E-1, then tasks 0..T-1."""
        return ([self.expert_deltas[e] for e in range(len(self.expert_usage))]
                + [self.task_deltas[t] for t in range(len(self.task_usage))])

    def dense_delta(self) -> np.ndarray:
        """All segment deltas concatenated (float32)."""
        return np.concatenate(self.segment_deltas()).astype(np.float32)


def _as_data(policy: MoEPolicy, source: DemonstrationStore | BCData | Sequence[Demonstration]) -> BCData:
    if isinstance(source, BCData):
        return source
    if isinstance(source, DemonstrationStore):
        return BCData.from_store(policy, source)
    return BCData.from_demonstrations(policy, source)


def _bc_loss(policy: MoEPolicy, features: torch.Tensor | None, data: BCData, idx: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    states = data.states[idx]
    feats = features[idx] if features is not None else policy.base(states)
    mean, gates = policy.adapter(feats, policy.base.normalise(states), data.task_ids[idx])
    return torch.mean((mean - data.actions[idx]) ** 2), gates


def bc_loss(policy: MoEPolicy, data: BCData, limit: int = _LOSS_PROBE) -> float:
    """Mean squared action error over (at most `limit`, evenly spaced) samples of `data`."""
    idx = torch.linspace(0, len(data) - 1, min(limit, len(data))).long()
    with torch.no_grad():
        return float(_bc_loss(policy, None, data, idx)[0])


def _fit(policy: MoEPolicy, data: BCData, params: list, budget: TrainingBudget, frozen_base: bool,
         deadline: float, anchors: list[tuple[torch.Tensor, torch.Tensor]] = ()) -> tuple[int, np.ndarray, np.ndarray]:
    gen = torch.Generator().manual_seed(budget.seed)
    optimiser = torch.optim.Adam(params, lr=budget.learning_rate)
    features = data.frozen_features(policy) if frozen_base else None
    gate_sum = torch.zeros(policy.cfg.num_experts)
    task_count = torch.zeros(len(policy.cfg.tasks))
    steps = 0
    while steps < budget.max_steps and time.monotonic() < deadline:
        idx = torch.randint(len(data), (budget.batch_size,), generator=gen)
        loss, gates = _bc_loss(policy, features, data, idx)
        if anchors:
            loss = loss + 0.5 * budget.proximal_mu * sum(torch.sum((p - a) ** 2) for p, a in anchors)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        gate_sum += gates.detach().sum(0)
        task_count += torch.bincount(data.task_ids[idx], minlength=len(policy.cfg.tasks))
        steps += 1
    seen = max(steps * budget.batch_size, 1)
    return steps, (gate_sum / seen).numpy().astype(np.float32), (task_count / seen).numpy().astype(np.float32)


def train_local(policy: MoEPolicy, source: DemonstrationStore | BCData | Sequence[Demonstration],
                budget: TrainingBudget, envelope: OperatingEnvelope,
                modules: Sequence[str] = ('experts', 'router'),
                reference: Sequence[np.ndarray] | None = None) -> LocalUpdate:
    """Train `modules` of `policy` in place by behaviour cloning; return deltas against `reference`.

    `reference` is the adapter (per-segment vectors) the deltas are measured from: the current
    global model. It defaults to the adapter before training; error feedback passes the global
    model while training starts from global + residual.
    """
    envelope.check_training(policy, modules)
    if 'base' in modules:
        raise ConfigError('train_local federates the adapter only; pre-train the base with pretrain()')
    data = _as_data(policy, source)
    reference = [np.asarray(s, dtype=np.float32).copy() for s in (reference or policy.flatten_segments())]
    trainable = {id(p) for m in modules for p in module_parameters(policy, m)}
    for p in policy.adapter.parameters():
        p.requires_grad_(id(p) in trainable)
    params = [p for p in policy.adapter.parameters() if p.requires_grad]
    limit = min(budget.max_seconds or envelope.round_interval_seconds, envelope.round_interval_seconds)
    anchors = []
    if budget.proximal_mu > 0:
        anchor = policy.clone()
        anchor.load_segments(reference)
        anchors = [(p, a.detach()) for p, a in zip(policy.adapter.parameters(), anchor.adapter.parameters())
                   if p.requires_grad]
    loss_before = bc_loss(policy, data)
    steps, expert_usage, task_usage = _fit(policy, data, params, budget, True, time.monotonic() + limit, anchors)
    for p in policy.adapter.parameters():
        p.requires_grad_(True)
    deltas = [after - before for after, before in zip(policy.flatten_segments(), reference)]
    num_experts = policy.cfg.num_experts
    return LocalUpdate(
        expert_deltas={e: deltas[e] for e in range(num_experts)},
        expert_usage=expert_usage,
        task_deltas={t: deltas[num_experts + t] for t in range(len(policy.cfg.tasks))},
        task_usage=task_usage,
        base_version=policy.base_version,
        num_samples=len(data),
        steps=steps,
        loss_before=loss_before,
        loss_after=bc_loss(policy, data),
    )


def pretrain(policy: MoEPolicy, source: BCData | Sequence[Demonstration], budget: TrainingBudget,
             freeze: bool = True) -> float:
    """Server-side: fix the normaliser, train base and adapter together, then freeze the base.

    Returns the final BC loss. Run once on the tasks the server has data for.
    """
    data = _as_data(policy, source)
    policy.set_normaliser(data.states.numpy())
    for p in policy.parameters():
        p.requires_grad_(True)
    deadline = time.monotonic() + (budget.max_seconds or float('inf'))
    _fit(policy, data, list(policy.parameters()), budget, False, deadline)
    if freeze:
        policy.freeze_base()
    return bc_loss(policy, data)
