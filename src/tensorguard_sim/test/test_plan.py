"""The simulation plan and the fleet YAML's shared parameters."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from tensorguard_sim.plan import load_config, load_plan

CONFIG = Path(__file__).resolve().parents[3] / 'config'


def test_the_demo_plan_assigns_each_robot_its_tasks_seed_and_identity():
    plan = load_plan(CONFIG / 'simulated_fleet.yaml')
    assert [plan.robot_id(i) for i in range(plan.robots)] == ['robot_1', 'robot_2', 'robot_3', 'robot_4']
    assert [plan.seed_of(i) for i in range(plan.robots)] == [10_000, 20_000, 30_000, 40_000]
    assert plan.tasks_of(0) == ('push-v3', 'door-open-v3')
    assert plan.tasks_of(len(plan.robot_tasks)) == plan.tasks_of(0)  # larger fleets repeat the list
    assert plan.fleet_tasks == ('push-v3', 'door-open-v3', 'drawer-close-v3', 'button-press-topdown-v3',
                                'window-open-v3')


def test_fleet_tasks_are_those_of_the_robots_in_the_fleet():
    plan = replace(load_plan(CONFIG / 'simulated_fleet.yaml'), robots=2)
    assert plan.fleet_tasks == ('push-v3', 'door-open-v3', 'drawer-close-v3', 'button-press-topdown-v3')


def test_the_replay_and_the_plan_import_no_ros():
    # The replay reads its parameter file through rclpy (ros_parameters) only when it runs.
    probe = ('import sys, tensorguard_sim.fleet_replay, tensorguard_sim.plan; '
             'print(sorted(m for m in sys.modules if m.startswith("rclpy")))')
    assert subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True).stdout == '[]\n'


def test_shared_parameters_are_the_yaml_wildcard_section():
    shared, plan = load_config(CONFIG / 'fleet.yaml', CONFIG / 'simulated_fleet.yaml')
    assert shared['min_clients'] == 2 and shared['strategy'] == 'expert_driven' and plan.robots == 4
