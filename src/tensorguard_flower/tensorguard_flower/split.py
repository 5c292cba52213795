"""The scale commands' fleet: its tasks, every robot's own demonstrations and the server's initial model.

Shared by `flower-scale` and `flower-frontier` so that both measure the same split. Robot i
demonstrates one task, ``tasks[i % len(tasks)]`` (``--tasks``, by default `FLEET_TASKS`), from
simulator seeds ``ROBOT_SEED + 1000 i + k`` (k < episodes): no two robots share an episode, and none
shares one with the server's pre-training (``PRETRAIN_SEED``, on ``--pretrain-tasks``, which no robot
demonstrates), held-out (``HELD_OUT_SEED``) or evaluation (the gate's, 2,000,000 + 1000 r) seeds.
Recorded episodes are cached as one ``.npz`` per task and seed range and reused.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tensorguard_learning.demonstrations import Demonstration
from tensorguard_learning.metaworld_source import record_demonstrations
from tensorguard_learning.policy import MoEConfig, MoEPolicy, build_policy
from tensorguard_learning.training import BCData, TrainingBudget, pretrain

FLEET_TASKS = ('push-v3', 'door-open-v3', 'drawer-close-v3', 'button-press-topdown-v3', 'window-open-v3')
PRETRAIN_TASKS = ('reach-v3', 'window-close-v3', 'drawer-open-v3')
ROBOT_SEED = 3_000_000
PRETRAIN_SEED = 900_000
HELD_OUT_SEED = 500_000
SEED_STRIDE = 1000


def cached_demonstrations(cache: Path, task: str, episodes: int, seed: int) -> list[Demonstration]:
    """`record_demonstrations(task, episodes, seed)`, from `cache` when recorded before."""
    path = cache / task / f'{seed}-{episodes}.npz'
    if path.exists():
        with np.load(path) as saved:
            count = len([name for name in saved.files if name.startswith('state_')])
            return [Demonstration(task=task, observation_state=saved[f'state_{k}'], action=saved[f'action_{k}'])
                    for k in range(count)]
    demos = record_demonstrations(task, episodes, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f'{kind}_{k}': value for k, demo in enumerate(demos)
              for kind, value in (('state', demo.observation_state), ('action', demo.action))}
    tmp = path.with_name(f'.{path.stem}.tmp.npz')
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return demos


def robot_demonstrations(cache: Path, robots: int, episodes: int,
                         tasks: Sequence[str] = FLEET_TASKS) -> list[list[Demonstration]]:
    """Each of `robots` robots' own demonstrations (robot i: task ``tasks[i % len(tasks)]``, its own seeds)."""
    return [cached_demonstrations(cache, tasks[i % len(tasks)], episodes, ROBOT_SEED + SEED_STRIDE * i)
            for i in tqdm(range(robots), desc='demonstrations')]


@dataclass
class InitialModel:
    """The server's starting point: the shipped adapter shape, its base pre-trained and frozen on
    tasks no robot demonstrates, and its held-out states of the fleet tasks (for the gate's KL)."""

    policy: MoEPolicy
    held_out: BCData


def initial_model(cache: Path, pretrain_steps: int, expert_hidden: int = 64, expert_input_rank: int | None = None,
                  tasks: Sequence[str] = FLEET_TASKS, pretrain_tasks: Sequence[str] = PRETRAIN_TASKS) -> InitialModel:
    """One expert per task of `tasks` and `pretrain_tasks` (8 by default), top-1, round-robin router,
    `expert_hidden` units per expert (the shipped 64: 24,388 federated values per expert, 4,420 + 64 r
    with `expert_input_rank` r); base pre-trained on `pretrain_tasks`."""
    every_task = tuple(tasks) + tuple(pretrain_tasks)
    policy = build_policy(MoEConfig(tasks=every_task, num_experts=len(every_task), top_k=1,
                                    expert_hidden=expert_hidden, router_init='round_robin',
                                    expert_input_rank=expert_input_rank))
    pretrain(policy, [d for j, task in enumerate(pretrain_tasks)
                      for d in cached_demonstrations(cache, task, 10, PRETRAIN_SEED + SEED_STRIDE * j)],
             TrainingBudget(max_steps=pretrain_steps), freeze=True)
    held_out = BCData.from_demonstrations(policy, [
        d for j, task in enumerate(tasks)
        for d in cached_demonstrations(cache, task, 3, HELD_OUT_SEED + SEED_STRIDE * j)])
    return InitialModel(policy, held_out)


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both scale commands take for this split: tasks, rounds, data, training, model, gate, cache
    (check them with `check_fleet_arguments`)."""
    parser.add_argument('--tasks', nargs='+', default=list(FLEET_TASKS), metavar='TASK',
                        help='Meta-World tasks the robots demonstrate (robot i: task i mod n); the gate scores these')
    parser.add_argument('--pretrain-tasks', nargs='+', default=list(PRETRAIN_TASKS), metavar='TASK',
                        help="tasks of the server's pre-training of the frozen base; no robot demonstrates them")
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--episodes', type=int, default=3, help='demonstrations each robot records (its own seeds)')
    parser.add_argument('--clipping-norm', type=float, default=2.0)
    parser.add_argument('--train-steps', type=int, default=100)
    parser.add_argument('--pretrain-steps', type=int, default=1500)
    parser.add_argument('--expert-hidden', type=int, default=64,
                        help="units per expert: fewer federated values, less DP noise on each expert's mean")
    parser.add_argument('--expert-input-rank', type=int, default=None, metavar='R',
                        help="keep every expert's input layer at its random initial weights and train a rank-R "
                             "correction (MoEConfig.expert_input_rank): 4,420 + 64 R instead of 24,388 federated "
                             "values per expert")
    parser.add_argument('--select-per-task', action='store_true',
                        help="the gate's per-task selection (GateSettings.select_per_task): a task group keeps "
                             "the previous model's experts when the candidate's lowered its successes")
    parser.add_argument('--cache', type=Path, default=Path('.state/flower-demos'), help='demonstration cache')


def check_fleet_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (through `parser.error`) a split whose task lists repeat a task or share one."""
    for option, tasks in (('--tasks', args.tasks), ('--pretrain-tasks', args.pretrain_tasks)):
        repeated = sorted({task for task in tasks if tasks.count(task) > 1})
        if repeated:
            parser.error(f'{option} names {", ".join(repeated)} more than once')
    shared = sorted(set(args.tasks) & set(args.pretrain_tasks))
    if shared:
        parser.error(f'{", ".join(shared)} in both --tasks and --pretrain-tasks: the pre-training must not see '
                     "a robot's task")
