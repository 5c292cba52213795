"""A simulated fleet under `ros2 launch`: the fleet server plus N simulated robots with edge nodes and
policy nodes (the arms run episodes driven by the deployed model: `autonomous_every` in config/fleet.yaml).

Provision a fleet directory first (server keys, initial model, robot enrolment), then launch:

    export TENSORGUARD_KEY_PASSPHRASE=...          # the passphrase the fleet was provisioned with
    ros2 run tensorguard_sim simulated_fleet --provision-only --run-dir /tmp/fleet
    ros2 launch launch/simulated_fleet.launch.py fleet_dir:=/tmp/fleet/fleet robots:=4

Rounds start on request (`ros2 action send_goal /tensorguard/run_round tensorguard_msgs/action/RunRound {}`)
or on a schedule (`round_period_s` in config/fleet.yaml). The README's main command runs the same
processes without `ros2 launch`, which the PyPI ROS wheels do not ship.
"""
from dataclasses import replace
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction, SetEnvironmentVariable
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

from tensorguard_sim.plan import load_plan

HERE = Path(__file__).resolve().parent
PLAN = HERE.parent / 'config' / 'simulated_fleet.yaml'


def fleet(context):
    """The fleet server, then one robot.launch.py per robot with the plan's non-IID task assignment.

    Robots, tasks, seeds and the evaluator's tasks (those of the robots actually launched) come from
    the same `FleetPlan` as in `simulated_fleet`, whose provisioning builds the policy and the
    held-out data for exactly these tasks.
    """
    fleet_dir = Path(LaunchConfiguration('fleet_dir').perform(context))
    plan = replace(load_plan(PLAN), robots=int(LaunchConfiguration('robots').perform(context)))
    actions = [IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(HERE / 'fleet_server.launch.py')),
        launch_arguments={'fleet_dir': str(fleet_dir), 'eval_tasks': str(list(plan.fleet_tasks))}.items())]
    for i in range(plan.robots):
        robot_id = plan.robot_id(i)
        robot_dir = fleet_dir / 'robots' / robot_id
        actions.append(IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(HERE / 'robot.launch.py')),
            launch_arguments={'robot_id': robot_id, 'state_dir': str(robot_dir / 'state'),
                              'key_path': str(robot_dir / 'identity.key'),
                              'trust_path': str(robot_dir / 'trust.json'),
                              'simulate': 'true', 'tasks': str(list(plan.tasks_of(i))),
                              'seed': str(plan.seed_of(i)), 'policy': 'true'}.items()))
    return actions


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument('fleet_dir', description='Provisioned fleet directory.'),
        DeclareLaunchArgument('robots', default_value=str(load_plan(PLAN).robots),
                              description='Number of robots (as given to --provision-only --robots).'),
        # One compute thread per node, as the README's main command runs them.
        SetEnvironmentVariable('OMP_NUM_THREADS', '1'),
        OpaqueFunction(function=fleet),
    ])
