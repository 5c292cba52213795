"""Policy: a frozen-able base encoder plus a task-aware mixture-of-experts adapter (`MoEAdapter`).

Action distribution (used for the KL in evaluation): a diagonal Gaussian N(mu(s, task), sigma^2 I)
with a fixed, configured sigma (``MoEConfig.action_std``); behaviour cloning fits mu by mean
squared error, which is the Gaussian negative log-likelihood up to a constant. The robot executes
clip(mu, -1, 1).

Layout of the federated part. The adapter is cut into *segments*, each a flat float32 vector:
one per expert (that expert's MLP weights) and one per task (its task embedding row and its
router logits row). Only adapter segments are exchanged; the base never leaves the server once
frozen. `segment_sizes()` and `flatten_segments()` / `load_segments()` define the order.

`MoEConfig.expert_input_rank` (set: r >= 0) keeps every expert's input layer at its random
initial weights (buffers, not segments) and trains only a rank-r correction B A on top of it, A a
fixed random projection and B starting at zero; a round then federates B and the two upper layers:
with the fleet's 64 hidden units 4,420 + 64 r instead of 24,388 values per expert. This is FFA-LoRA
(Sun, Li, Li and Ding, "Improving LoRA in Privacy-preserving Federated Learning", ICLR 2024: freeze
the randomly initialised A, federate B) applied to the experts' input layers; r = 0 leaves the upper
layers to learn on fixed random features (Rahimi and Recht, NIPS 2007). It was built to put more of a
clipped update on each value under distributed DP; measured, it did not bring private fleets closer
to their non-private runs (docs/flower.md) and as a compression it held on one split of four
(docs/learning.md, section 6.1), so it is off by default.
"""
from __future__ import annotations

import hashlib
import io
import math
import pickle
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from tensorguard_learning.errors import ConfigError, UpdateFormatError
from tensorguard_learning.metaworld_source import ACTION_DIM, OBS_DIM

_BLOB_MAGIC = b'TGPOL1'


ROUTER_INITS = ('random', 'round_robin')
_ASSIGNED_LOGIT = 4.0


def initial_router_logits(cfg: MoEConfig) -> torch.Tensor:
    """Router logits [tasks, E] a fresh policy starts from.

    'random': N(0, 1), so tasks share experts at random. 'round_robin': task t prefers experts
    t*k ... t*k+k-1 (mod E) by a wide margin, so two tasks share an expert only if E < k * tasks.
    In a non-IID fleet that keeps robots that demonstrate different tasks from averaging their
    updates into the same expert (the expert-weighted mean then only mixes robots that share a task).
    """
    if cfg.router_init == 'random':
        return torch.randn(len(cfg.tasks), cfg.num_experts)
    logits = torch.full((len(cfg.tasks), cfg.num_experts), -_ASSIGNED_LOGIT)
    for t in range(len(cfg.tasks)):
        for j in range(cfg.top_k):
            logits[t, (t * cfg.top_k + j) % cfg.num_experts] = _ASSIGNED_LOGIT
    return logits


@dataclass(frozen=True)
class MoEConfig:
    """Shape of the policy; identical on every robot and on the server."""

    tasks: tuple[str, ...]
    obs_dim: int = OBS_DIM
    action_dim: int = ACTION_DIM
    base_hidden: int = 256
    feature_dim: int = 256
    num_experts: int = 4
    top_k: int = 2
    expert_hidden: int = 128
    task_embed_dim: int = 16
    action_std: float = 0.1
    init_seed: int = 0
    router_init: str = 'random'
    expert_input_rank: int | None = None

    def __post_init__(self) -> None:
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f'tasks must be non-empty and unique, got {self.tasks}')
        if not 1 <= self.top_k <= self.num_experts:
            raise ConfigError(f'top_k must be in [1, num_experts={self.num_experts}], got {self.top_k}')
        if self.action_std <= 0:
            raise ConfigError(f'action_std must be positive, got {self.action_std}')
        if self.router_init not in ROUTER_INITS:
            raise ConfigError(f'router_init must be one of {ROUTER_INITS}, got {self.router_init!r}')
        rank = self.expert_input_rank
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
            raise ConfigError(f'expert_input_rank must be unset or an integer >= 0, got {rank!r}')


class BaseEncoder(nn.Module):
    """State normaliser + MLP: the shared, pre-trained and then frozen part of the policy."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.register_buffer('obs_mean', torch.zeros(cfg.obs_dim))
        self.register_buffer('obs_std', torch.ones(cfg.obs_dim))
        self.net = nn.Sequential(
            nn.Linear(cfg.obs_dim, cfg.base_hidden), nn.ReLU(),
            nn.Linear(cfg.base_hidden, cfg.feature_dim), nn.ReLU())

    def normalise(self, obs: torch.Tensor) -> torch.Tensor:
        """Standardise raw states with the statistics fixed at pre-training."""
        return (obs - self.obs_mean) / self.obs_std

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(obs))


class LowRankInput(nn.Module):
    """An expert's input layer under `MoEConfig.expert_input_rank`: weight and bias drawn as `nn.Linear`
    draws them and then fixed, plus the trained rank-r correction B A (A fixed, B from zero), so it
    starts as the layer `nn.Linear` would have been. A is public model layout, drawn from
    `projection_seed`, not a secret; weight, bias and A are buffers and travel in the model blob.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, projection_seed: int) -> None:
        super().__init__()
        drawn = nn.Linear(in_features, out_features)
        self.register_buffer('weight', drawn.weight.detach().clone())
        self.register_buffer('bias', drawn.bias.detach().clone())
        generator = torch.Generator().manual_seed(projection_seed)
        bound = 1.0 / math.sqrt(in_features)
        self.register_buffer('projection', (2 * torch.rand(rank, in_features, generator=generator) - 1) * bound)
        self.correction = nn.Parameter(torch.zeros(out_features, rank)) if rank else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(x, self.weight, self.bias)
        if self.correction is None:
            return out
        return out + nn.functional.linear(nn.functional.linear(x, self.projection), self.correction)


def _projection_seed(cfg: MoEConfig, expert: int) -> int:
    """Seed of expert `expert`'s fixed projection A: from the config alone, the same on every party."""
    digest = hashlib.sha256(f'tensorguard/expert-input/{cfg.init_seed}/{expert}'.encode()).digest()
    return int.from_bytes(digest[:8], 'big') >> 1


class MoEAdapter(nn.Module):
    """Task-aware router over E expert MLPs; the output is the gate-weighted sum of the top-k experts."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.task_embedding = nn.Parameter(torch.randn(len(cfg.tasks), cfg.task_embed_dim) * 0.1)
        self.router_logits = nn.Parameter(initial_router_logits(cfg))
        in_dim = cfg.feature_dim + cfg.obs_dim + cfg.task_embed_dim

        def input_layer(expert: int) -> nn.Module:
            if cfg.expert_input_rank is None:
                return nn.Linear(in_dim, cfg.expert_hidden)
            return LowRankInput(in_dim, cfg.expert_hidden, cfg.expert_input_rank, _projection_seed(cfg, expert))

        self.experts = nn.ModuleList(
            nn.Sequential(input_layer(e), nn.ReLU(),
                          nn.Linear(cfg.expert_hidden, cfg.expert_hidden), nn.ReLU(),
                          nn.Linear(cfg.expert_hidden, cfg.action_dim))
            for e in range(cfg.num_experts))

    def routing_weights(self, task_ids: torch.Tensor) -> torch.Tensor:
        """Gate weights [B, E]: softmax over each task's top-k router logits, zero elsewhere."""
        logits = self.router_logits[task_ids]
        top = torch.topk(logits, self.cfg.top_k, dim=-1)
        gates = torch.zeros_like(logits)
        return gates.scatter(-1, top.indices, torch.softmax(top.values, dim=-1))

    def forward(self, features: torch.Tensor, obs_norm: torch.Tensor, task_ids: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        gates = self.routing_weights(task_ids)
        x = torch.cat([features, obs_norm, self.task_embedding[task_ids]], dim=-1)
        used = torch.nonzero(gates.sum(0) > 0).flatten().tolist()
        out = torch.zeros(x.shape[0], self.cfg.action_dim)
        for e in used:
            out = out + gates[:, e:e + 1] * self.experts[e](x)
        return out, gates


class MoEPolicy(nn.Module):
    """Base encoder + MoE adapter; mean action of a fixed-std Gaussian policy."""

    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        torch.manual_seed(cfg.init_seed)
        self.base = BaseEncoder(cfg)
        self.adapter = MoEAdapter(cfg)
        self.base_version = ''
        self.refresh_base_version()

    def task_ids(self, tasks: Sequence[str]) -> torch.Tensor:
        """Integer ids of task names under this config."""
        index = {t: i for i, t in enumerate(self.cfg.tasks)}
        missing = sorted(set(tasks) - index.keys())
        if missing:
            raise ConfigError(f'tasks {missing} are not in the policy config {self.cfg.tasks}')
        return torch.tensor([index[t] for t in tasks], dtype=torch.long)

    def forward(self, obs: torch.Tensor, task_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.adapter(self.base(obs), self.base.normalise(obs), task_ids)

    @torch.no_grad()
    def act(self, observations: np.ndarray, task: str) -> np.ndarray:
        """Mean actions [B, 4] for raw states [B, 39] of one task (for simulator rollouts)."""
        obs = torch.as_tensor(observations, dtype=torch.float32)
        ids = self.task_ids([task]).expand(obs.shape[0])
        return self(obs, ids)[0].numpy()

    def routing_weights(self, tasks: Sequence[str]) -> np.ndarray:
        """Gate weights [len(tasks), E] of the router, one row per task name."""
        with torch.no_grad():
            return self.adapter.routing_weights(self.task_ids(tasks)).numpy()

    def set_normaliser(self, states: np.ndarray, min_std: float = 0.05) -> None:
        """Fix the base's state statistics from pre-training data (std floored at `min_std`)."""
        self.base.obs_mean.copy_(torch.as_tensor(states.mean(0), dtype=torch.float32))
        self.base.obs_std.copy_(torch.as_tensor(np.maximum(states.std(0), min_std), dtype=torch.float32))
        self.refresh_base_version()

    def refresh_base_version(self) -> None:
        """Recompute `base_version`: a SHA-256 prefix of the base's parameters and buffers."""
        digest = hashlib.sha256()
        for tensor in self.base.state_dict().values():
            digest.update(tensor.detach().numpy().tobytes())
        self.base_version = digest.hexdigest()[:16]

    def freeze_base(self) -> None:
        """Stop gradients into the base (after pre-training) and record its version."""
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.refresh_base_version()

    def segment_sizes(self) -> list[int]:
        """Sizes of the adapter segments: E experts, then one per task."""
        sizes = [sum(p.numel() for p in expert.parameters()) for expert in self.adapter.experts]
        per_task = self.cfg.task_embed_dim + self.cfg.num_experts
        return sizes + [per_task] * len(self.cfg.tasks)

    def flatten_segments(self) -> list[np.ndarray]:
        """Adapter parameters as float32 vectors, one per segment (see module docstring)."""
        segs = [torch.cat([p.detach().reshape(-1) for p in expert.parameters()]).numpy().copy()
                for expert in self.adapter.experts]
        for t in range(len(self.cfg.tasks)):
            segs.append(torch.cat([self.adapter.task_embedding[t].detach(),
                                   self.adapter.router_logits[t].detach()]).numpy().copy())
        return segs

    @torch.no_grad()
    def load_segments(self, segments: Sequence[np.ndarray]) -> None:
        """Overwrite adapter parameters from per-segment vectors (inverse of `flatten_segments`)."""
        sizes = self.segment_sizes()
        if len(segments) != len(sizes) or any(np.asarray(s).size != n for s, n in zip(segments, sizes)):
            raise UpdateFormatError(
                f'expected {len(sizes)} segments of sizes {sizes}, got '
                f'{[np.asarray(s).size for s in segments]}')
        for expert, seg in zip(self.adapter.experts, segments):
            torch.nn.utils.vector_to_parameters(torch.as_tensor(np.asarray(seg, dtype=np.float32)),
                                                expert.parameters())
        d = self.cfg.task_embed_dim
        for t, seg in enumerate(segments[self.cfg.num_experts:]):
            vec = torch.as_tensor(np.asarray(seg, dtype=np.float32))
            self.adapter.task_embedding[t].copy_(vec[:d])
            self.adapter.router_logits[t].copy_(vec[d:])

    def state_bytes(self) -> bytes:
        """Serialise config + all weights for model publication (no pickle of code objects)."""
        buf = io.BytesIO()
        torch.save({'config': asdict(self.cfg), 'state': self.state_dict(),
                    'base_version': self.base_version}, buf)
        return _BLOB_MAGIC + buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> MoEPolicy:
        """Rebuild a policy published with `state_bytes`.

        The pickle inside is read by torch's weights-only unpickler: tensors, dicts, lists and plain values
        only, so a blob that names any other object (code to run) is refused as malformed, never executed.
        """
        if not blob.startswith(_BLOB_MAGIC):
            raise UpdateFormatError('model blob does not start with the TensorGuard policy magic')
        try:
            data = torch.load(io.BytesIO(blob[len(_BLOB_MAGIC):]), weights_only=True)
            cfg = data['config']
            policy = cls(MoEConfig(**{**cfg, 'tasks': tuple(cfg['tasks'])}))
            policy.load_state_dict(data['state'])
            base_version = data['base_version']
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, KeyError, IndexError, TypeError,
                AttributeError, ConfigError) as exc:
            detail = (str(exc).strip().splitlines() or [''])[0][:200]
            raise UpdateFormatError(f'model blob is malformed: {type(exc).__name__}: {detail}') from exc
        policy.refresh_base_version()
        if policy.base_version != base_version:
            raise UpdateFormatError('model blob base_version does not match its base weights')
        return policy

    def clone(self) -> MoEPolicy:
        """Deep copy (same config and weights, same frozen flags)."""
        other = MoEPolicy(self.cfg)
        other.load_state_dict(self.state_dict())
        if not any(p.requires_grad for p in self.base.parameters()):
            other.freeze_base()
        other.refresh_base_version()
        return other


def build_policy(config: MoEConfig | dict) -> MoEPolicy:
    """Build a fresh policy from a `MoEConfig` or a plain dict (e.g. parsed YAML)."""
    if isinstance(config, dict):
        config = MoEConfig(**{**config, 'tasks': tuple(config['tasks'])})
    return MoEPolicy(config)



@dataclass(frozen=True)
class TaskGroup:
    """Tasks whose actions depend on the same adapter segments: each one's routing segment and every
    expert any of them is routed to. Two models that differ only in one group's segments act
    identically on the tasks of every other group."""

    tasks: tuple[str, ...]
    segments: tuple[int, ...]


def task_groups(policies: Sequence[MoEPolicy], tasks: Sequence[str]) -> list[TaskGroup]:
    """`tasks` partitioned into `TaskGroup`s under the routing of every policy in `policies` (same
    config): tasks share a group when some policy routes them to a common expert."""
    cfg = policies[0].cfg
    if any(policy.cfg != cfg for policy in policies):
        raise ConfigError('task groups need policies of one config')
    tasks = list(dict.fromkeys(tasks))
    used = np.any([policy.routing_weights(tasks) > 0 for policy in policies], axis=0)  # [task, expert]
    group_of = list(range(len(tasks)))

    def root(i: int) -> int:
        while group_of[i] != i:
            i = group_of[i]
        return i

    for expert in range(cfg.num_experts):
        sharing = np.flatnonzero(used[:, expert])
        for other in sharing[1:]:
            group_of[root(int(other))] = root(int(sharing[0]))
    members: dict[int, list[int]] = {}
    for i in range(len(tasks)):
        members.setdefault(root(i), []).append(i)
    task_index = {task: i for i, task in enumerate(cfg.tasks)}
    return [TaskGroup(tuple(tasks[i] for i in rows),
                      tuple(sorted({int(e) for e in np.flatnonzero(used[rows].any(axis=0))}
                                   | {cfg.num_experts + task_index[tasks[i]] for i in rows})))
            for rows in members.values()]


def merge_segments(base: MoEPolicy, donor: MoEPolicy, segments: Sequence[int]) -> MoEPolicy:
    """A copy of `base` with the listed adapter segments taken from `donor` (same config)."""
    merged, donated = base.flatten_segments(), donor.flatten_segments()
    for index in segments:
        merged[index] = donated[index]
    result = base.clone()
    result.load_segments(merged)
    return result
