"""The fleet server: the key service and the aggregator (with evaluator and gate), each its own process.

    ros2 launch launch/fleet_server.launch.py fleet_dir:=/var/lib/tensorguard/fleet

The fleet directory is provisioned beforehand (`tensorguard fleet init`, then the initial model with
`ros2 run tensorguard_aggregator publish_initial_model`: docs/operations.md); the key passphrase comes
from TENSORGUARD_KEY_PASSPHRASE. `eval_tasks` must be tasks of the initial policy.
"""
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

CONFIG = Path(__file__).resolve().parent.parent / 'config' / 'fleet.yaml'


def generate_launch_description() -> LaunchDescription:
    fleet_dir = LaunchConfiguration('fleet_dir')
    params = LaunchConfiguration('params_file')
    eval_tasks = LaunchConfiguration('eval_tasks')
    return LaunchDescription([
        DeclareLaunchArgument('fleet_dir', description='Provisioned fleet directory (holds server/).'),
        DeclareLaunchArgument('params_file', default_value=str(CONFIG), description='Parameter YAML.'),
        DeclareLaunchArgument('eval_tasks', default_value="['push-v3']",
                              description='Meta-World tasks the evaluator rolls candidates out on.'),
        # launch escalates to SIGTERM this long after SIGINT (its default, 5 s, is shorter than a Python node
        # importing torch and MuJoCo takes to exit on a loaded 2-core machine: docs/fleet-provisioning-trial.md).
        DeclareLaunchArgument('sigterm_timeout', default_value='30',
                              description='Seconds each node may take to stop after SIGINT before SIGTERM.'),
        LifecycleNode(package='tensorguard_aggregator', executable='key_service', name='key_service',
                      namespace='tensorguard', output='screen',
                      parameters=[params, {'fleet_dir': fleet_dir}]),
        LifecycleNode(package='tensorguard_aggregator', executable='aggregator', name='aggregator',
                      namespace='tensorguard', output='screen',
                      parameters=[params, {'fleet_dir': fleet_dir, 'eval_tasks': eval_tasks}]),
    ])
