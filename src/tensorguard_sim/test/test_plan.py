"""The simulation plan and the node parameters read from the fleet YAML."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from tensorguard_aggregator.gate import GateSettings
from tensorguard_sim.plan import load_config, load_plan, node_parameters

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


def test_node_parameters_layer_defaults_shared_and_node_sections():
    shared, plan = load_config(CONFIG / 'fleet.yaml', CONFIG / 'simulated_fleet.yaml')
    assert shared['min_clients'] > 0 and plan.robots == 4
    settings = node_parameters(CONFIG / 'fleet.yaml', 'aggregator', GateSettings)
    assert settings.eval_episodes_per_task == 20 and settings.max_regression == 0.10
    assert settings.eval_seed == GateSettings().eval_seed  # not in the YAML: the dataclass default


def test_the_replay_and_the_plan_load_no_ros():
    probe = ('import sys, tensorguard_sim.fleet_replay, tensorguard_sim.plan; '
             'print(sorted(m for m in sys.modules if m.startswith("rclpy")))')
    assert subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True).stdout == '[]\n'
