"""Shared fixtures: one thread for torch, tiny policies, a few cached real Meta-World demonstrations."""
import functools

import pytest
import torch

from tensorguard_learning.metaworld_source import record_demonstrations
from tensorguard_learning.policy import MoEConfig, build_policy

torch.set_num_threads(1)
TASKS = ('push-v3', 'door-open-v3')


@functools.lru_cache(maxsize=None)
def _demos(task: str, episodes: int, seed: int):
    return tuple(record_demonstrations(task, episodes, seed))


@pytest.fixture
def demos():
    """Two real scripted-expert episodes per task (recorded once per test session)."""
    return [d for t in TASKS for d in _demos(t, 2, 0)]


@pytest.fixture
def tiny_policy():
    """A small policy over TASKS."""
    return build_policy(MoEConfig(tasks=TASKS, expert_hidden=16, base_hidden=32, feature_dim=32,
                                  num_experts=4, top_k=2))
