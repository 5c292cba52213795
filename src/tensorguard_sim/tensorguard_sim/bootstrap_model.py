"""The fleet's first model (ROS-free): a base encoder pre-trained on the server's own public
demonstrations, then frozen; the MoE adapter is what the fleet federates from then on.

Also records the server's held-out demonstrations of the evaluation tasks into the fleet
directory, where the aggregator loads them (`tensorguard_aggregator.held_out`) to measure a
candidate's KL divergence to the current policy. None of this data comes from a robot.
"""
from __future__ import annotations

from dataclasses import dataclass

from tensorguard_aggregator.held_out import MAX_BYTES, held_out_dir
from tensorguard_crypto.fleet import FleetPaths
from tensorguard_learning.demonstrations import Demonstration, DemonstrationStore
from tensorguard_learning.metaworld_source import record_demonstrations
from tensorguard_learning.policy import MoEConfig, MoEPolicy, build_policy
from tensorguard_learning.training import TrainingBudget, pretrain

HELD_OUT_SEED = 500_000


@dataclass(frozen=True)
class BootstrapSpec:
    """What the initial model is pre-trained on and how the held-out set is drawn.

    `policy_options` are `MoEConfig` fields other than the task list (experts, top-k, ...).
    """

    policy_tasks: tuple[str, ...]
    pretrain_tasks: tuple[str, ...]
    pretrain_episodes_per_task: int
    pretrain_steps: int
    policy_options: dict
    held_out_episodes_per_task: int
    seed: int = 900_000


def build_initial_policy(spec: BootstrapSpec) -> MoEPolicy:
    """Pre-train base + adapter on the server's demonstrations of `pretrain_tasks`; freeze the base."""
    policy = build_policy(MoEConfig(tasks=spec.policy_tasks, **spec.policy_options))
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
    with DemonstrationStore(held_out_dir(paths), max_bytes=MAX_BYTES) as store:
        for demo in held_out_demonstrations(tasks, episodes_per_task):
            store.append_episode(demo)
