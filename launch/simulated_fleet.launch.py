"""A simulated fleet under `ros2 launch`: the fleet server plus N simulated robots with edge nodes.

Provision a fleet directory first (server keys, initial model, robot enrolment), then launch:

    export TENSORGUARD_KEY_PASSPHRASE=...          # the passphrase the fleet was provisioned with
    ros2 run tensorguard_aggregator simulated_fleet --provision-only --run-dir /tmp/fleet
    ros2 launch launch/simulated_fleet.launch.py fleet_dir:=/tmp/fleet/fleet robots:=4

Rounds start on request (`ros2 action send_goal /tensorguard/run_round tensorguard_msgs/action/RunRound {}`)
or on a schedule (`round_period_s` in config/fleet.yaml). The README's main command runs the same
processes without `ros2 launch`, which the PyPI ROS wheels do not ship.
"""
from pathlib import Path

import yaml
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction,
                            SetEnvironmentVariable)
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

HERE = Path(__file__).resolve().parent
PLAN = HERE.parent / 'config' / 'simulated_fleet.yaml'


def fleet(context):
    """The fleet server, then one robot.launch.py per robot with the plan's non-IID task assignment.

    The evaluator's tasks are those of the robots actually launched, as in `simulated_fleet` (whose
    provisioning builds the policy and the held-out data for exactly these tasks).
    """
    fleet_dir = Path(LaunchConfiguration('fleet_dir').perform(context))
    count = int(LaunchConfiguration('robots').perform(context))
    plan = yaml.safe_load(PLAN.read_text())
    robot_tasks = [plan['robot_tasks'][i % len(plan['robot_tasks'])] for i in range(count)]
    fleet_tasks = list(dict.fromkeys(t for tasks in robot_tasks for t in tasks))
    actions = [IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(HERE / 'fleet_server.launch.py')),
        launch_arguments={'fleet_dir': str(fleet_dir), 'eval_tasks': str(fleet_tasks)}.items())]
    for i, tasks in enumerate(robot_tasks):
        robot_id = f'robot_{i + 1}'
        robot_dir = fleet_dir / 'robots' / robot_id
        actions.append(IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(HERE / 'robot.launch.py')),
            launch_arguments={'robot_id': robot_id, 'state_dir': str(robot_dir / 'state'),
                              'key_path': str(robot_dir / 'identity.key'),
                              'trust_path': str(robot_dir / 'trust.json'),
                              'simulate': 'true', 'tasks': str(list(tasks)),
                              'seed': str(10_000 * (i + 1))}.items()))
    return actions


def generate_launch_description() -> LaunchDescription:
    plan = yaml.safe_load(PLAN.read_text())
    return LaunchDescription([
        DeclareLaunchArgument('fleet_dir', description='Provisioned fleet directory.'),
        DeclareLaunchArgument('robots', default_value=str(plan['robots']),
                              description='Number of robots (as given to --provision-only --robots).'),
        # One compute thread per node, as the README's main command runs them.
        SetEnvironmentVariable('OMP_NUM_THREADS', '1'),
        OpaqueFunction(function=fleet),
    ])
