"""The simulation plan (``config/simulated_fleet.yaml``) and the fleet YAML's shared parameters.

Pure Python and YAML, so launch files import it to start the same robots as `simulated_fleet`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class FleetPlan:
    """The simulation's own settings (``simulated_fleet.yaml``)."""

    robots: int
    rounds: int
    robot_tasks: tuple[tuple[str, ...], ...]
    pretrain_tasks: tuple[str, ...]
    pretrain_episodes_per_task: int
    pretrain_steps: int
    policy: dict
    held_out_episodes_per_task: int
    episodes_before_first_round: int
    timeout_s: float
    # Autonomous episodes of the deployed model the robots report before each round and after the
    # last (the table's on-robot success); 0: none awaited (arms without ``autonomous_every``).
    on_robot_episodes_per_round: int = 0
    on_robot_timeout_s: float = 300.0  # the run fails if they take longer

    @staticmethod
    def seed_of(robot: int) -> int:
        """Public simulator seed of robot `robot`'s (0-based) first episode."""
        return 10_000 * (robot + 1)

    @staticmethod
    def robot_id(robot: int) -> str:
        """Identity and namespace of robot `robot` (0-based)."""
        return f'robot_{robot + 1}'

    def tasks_of(self, robot: int) -> tuple[str, ...]:
        """Tasks robot `robot` (0-based) demonstrates; the list repeats for larger fleets."""
        return self.robot_tasks[robot % len(self.robot_tasks)]

    @property
    def fleet_tasks(self) -> tuple[str, ...]:
        """Every task some robot demonstrates, in first-seen order."""
        return tuple(dict.fromkeys(t for r in range(self.robots) for t in self.tasks_of(r)))


def load_plan(plan_path: Path) -> FleetPlan:
    """The simulation plan from its YAML file."""
    plan = yaml.safe_load(plan_path.read_text())
    return FleetPlan(**{**plan, 'robot_tasks': tuple(tuple(t) for t in plan['robot_tasks']),
                        'pretrain_tasks': tuple(plan['pretrain_tasks'])})


def load_config(params_path: Path, plan_path: Path) -> tuple[dict, FleetPlan]:
    """The shared ROS parameters of the fleet YAML (its ``/**`` section) and the simulation plan."""
    shared = yaml.safe_load(params_path.read_text())['/**']['ros__parameters']
    return shared, load_plan(plan_path)

