"""The fleet's first model (ROS-free): a base encoder pre-trained on the server's own public
demonstrations, then frozen; the MoE adapter is what the fleet federates from then on.

The server also keeps a held-out set of its own demonstrations of the evaluation tasks: the gate
measures the candidate's KL divergence to the current policy on those states. None of this data
comes from a robot.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tensorguard_crypto.fleet import FleetPaths
from tensorguard_learning.demonstrations import Demonstration, DemonstrationStore
from tensorguard_learning.metaworld_source import record_demonstrations
from tensorguard_learning.policy import PolicyConfig, build_policy
from tensorguard_learning.training import BCData, TrainingBudget, pretrain

HELD_OUT_SEED = 500_000


@dataclass(frozen=True)
class BootstrapSpec:
    """What the initial model is pre-trained on and how the held-out set is drawn.

    `policy_options` are `PolicyConfig` fields other than the task list (experts, top-k, ...).
    """

    policy_tasks: tuple[str, ...]
    pretrain_tasks: tuple[str, ...]
    pretrain_episodes_per_task: int
    pretrain_steps: int
    policy_options: dict
    held_out_episodes_per_task: int
    seed: int = 900_000


def held_out_dir(paths: FleetPaths) -> Path:
    """Where the server's held-out demonstrations live."""
    return paths.server / 'held_out'


def build_initial_policy(spec: BootstrapSpec):
    """Pre-train base + adapter on the server's demonstrations of `pretrain_tasks`; freeze the base."""
    policy = build_policy(PolicyConfig(tasks=spec.policy_tasks, **spec.policy_options))
    demos = [d for i, task in enumerate(spec.pretrain_tasks)
             for d in record_demonstrations(task, spec.pretrain_episodes_per_task, spec.seed + 1000 * i)]
    pretrain(policy, demos, TrainingBudget(max_steps=spec.pretrain_steps), freeze=True)
    return policy


def held_out_demonstrations(tasks: tuple[str, ...], episodes_per_task: int) -> list[Demonstration]:
    """The server's held-out demonstrations of the evaluation tasks (for the KL check)."""
    return [demo for i, task in enumerate(tasks)
            for demo in record_demonstrations(task, episodes_per_task, HELD_OUT_SEED + 1000 * i)]


def record_held_out(paths: FleetPaths, tasks: tuple[str, ...], episodes_per_task: int) -> None:
    """Record the held-out demonstrations into the server's store."""
    with DemonstrationStore(held_out_dir(paths), max_bytes=1 << 30) as store:
        for demo in held_out_demonstrations(tasks, episodes_per_task):
            store.append_episode(demo)


def load_held_out(paths: FleetPaths, policy) -> BCData:
    """The held-out states, as behaviour-cloning tensors of `policy`'s task vocabulary."""
    with DemonstrationStore(held_out_dir(paths), max_bytes=1 << 30) as store:
        return BCData.from_store(policy, store)
