"""Meta-World (MuJoCo) glue: scripted experts record demonstrations; policies are rolled out for success.

Environments are the goal-observable Meta-World v3 tasks (39-dim state, 4-dim action in [-1, 1],
``info['success']``), with the goal and object positions re-drawn at every reset from the env's
own seeded generator. Simulator seeds are public, ordinary integers (they pick goal positions,
not secrets). Envs are created once per (task, slot) and cached, because MuJoCo model loading is
the slow part. An episode counts as a success if ``info['success']`` is set at any step within
``max_steps`` (Meta-World's convention; 500 steps is the benchmark horizon).
"""
from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tensorguard_learning.demonstrations import Demonstration
from tensorguard_learning.errors import ConfigError

MT10_TASKS: tuple[str, ...] = (
    'reach-v3', 'push-v3', 'pick-place-v3', 'door-open-v3', 'drawer-open-v3', 'drawer-close-v3',
    'button-press-topdown-v3', 'peg-insert-side-v3', 'window-open-v3', 'window-close-v3')
OBS_DIM = 39
ACTION_DIM = 4
MAX_EPISODE_STEPS = 500


class ActingPolicy(Protocol):
    """Anything that maps a batch of states of one task to a batch of actions."""

    def act(self, observations: np.ndarray, task: str) -> np.ndarray:
        """Return actions [B, 4] for states [B, 39] of `task`."""


@functools.lru_cache(maxsize=None)
def task_env(task: str, slot: int):
    """The goal-observable Meta-World env of `task` in slot `slot`, cached (loading MuJoCo is the slow part)."""
    import metaworld

    key = f'{task}-goal-observable'
    if key not in metaworld.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE:
        raise ConfigError(f'unknown Meta-World task {task!r}')
    env = metaworld.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[key]()
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    return env


@functools.lru_cache(maxsize=None)
def _expert(task: str):
    from metaworld.policies import ENV_POLICY_MAP

    if task not in ENV_POLICY_MAP:
        raise ConfigError(f'no scripted expert for Meta-World task {task!r}')
    return ENV_POLICY_MAP[task]()


def reset_env(env, seed: int) -> np.ndarray:
    """Reset `env` to the goal the public simulator seed `seed` picks; its first observation."""
    env.seed(seed)
    obs, _ = env.reset()
    return obs


def record_demonstrations(task: str, episodes: int, seed: int, max_steps: int = MAX_EPISODE_STEPS,
                          extra_steps_after_success: int = 10) -> list[Demonstration]:
    """Roll the scripted expert of `task` out from `episodes` random goals; keep successful episodes.

    Recording stops `extra_steps_after_success` steps after the first success, so demonstrations
    show the task being completed and held. Episode i uses simulator seed `seed + i`.
    """
    env, expert = task_env(task, 0), _expert(task)
    demos = []
    for i in range(episodes):
        obs = reset_env(env, seed + i)
        states, actions = [], []
        success_at = None
        for t in range(max_steps):
            action = np.clip(expert.get_action(obs), -1.0, 1.0)
            states.append(obs.astype(np.float32))
            actions.append(action.astype(np.float32))
            obs, _, _, truncated, info = env.step(action)
            if info['success'] and success_at is None:
                success_at = t
            if (success_at is not None and t - success_at >= extra_steps_after_success) or truncated:
                break
        if success_at is not None:
            demos.append(Demonstration(task=task, observation_state=np.stack(states),
                                       action=np.stack(actions), episode_index=i,
                                       timestamp=np.arange(len(states), dtype=np.float32)))
    return demos


@dataclass
class TaskResult:
    """Successes out of episodes for one task, plus simulator steps spent."""

    task: str
    successes: int
    episodes: int
    steps: int

    @property
    def success_rate(self) -> float:
        """Point estimate successes / episodes."""
        return self.successes / self.episodes


@dataclass
class RolloutReport:
    """Per-task results of rolling one policy out in the simulator."""

    results: dict[str, TaskResult] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def mean_success(self) -> float:
        """Mean over tasks of the per-task success rate."""
        return float(np.mean([r.success_rate for r in self.results.values()]))

    @property
    def episodes(self) -> int:
        """Total evaluation episodes over tasks."""
        return sum(r.episodes for r in self.results.values())


def rollout_success(policy: ActingPolicy, tasks: Iterable[str], episodes_per_task: int, seed: int,
                    max_steps: int = MAX_EPISODE_STEPS) -> RolloutReport:
    """Roll `policy` out `episodes_per_task` times per task (batched in lockstep); report success.

    Episode i of a task uses simulator seed `seed + i`; pick a seed range disjoint from the
    demonstration seeds so evaluation goals are held out.
    """
    if episodes_per_task <= 0:
        raise ConfigError(f'episodes_per_task must be positive, got {episodes_per_task}')
    start = time.perf_counter()
    report = RolloutReport()
    for task in tasks:
        envs = [task_env(task, slot) for slot in range(episodes_per_task)]
        obs = np.stack([reset_env(env, seed + i) for i, env in enumerate(envs)])
        done = np.zeros(len(envs), dtype=bool)
        success = np.zeros(len(envs), dtype=bool)
        steps = 0
        for _ in range(max_steps):
            active = np.flatnonzero(~done)
            if active.size == 0:
                break
            actions = np.clip(policy.act(obs[active].astype(np.float32), task), -1.0, 1.0)
            for row, i in enumerate(active):
                o, _, _, truncated, info = envs[i].step(actions[row].astype(np.float64))
                obs[i] = o
                steps += 1
                if info['success']:
                    success[i] = done[i] = True
                elif truncated:
                    done[i] = True
        report.results[task] = TaskResult(task, int(success.sum()), len(envs), steps)
    report.seconds = time.perf_counter() - start
    return report


def expert_success(tasks: Sequence[str], episodes_per_task: int, seed: int) -> RolloutReport:
    """Success of the scripted experts themselves (a sanity bound for behaviour cloning)."""

    class _Experts:
        def act(self, observations: np.ndarray, task: str) -> np.ndarray:
            expert = _expert(task)
            return np.stack([expert.get_action(o.astype(np.float64)) for o in observations])

    return rollout_success(_Experts(), tasks, episodes_per_task, seed)
