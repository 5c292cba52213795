"""One robot: its TensorGuard edge node, and optionally a simulated Meta-World robot feeding it.

    ros2 launch launch/robot.launch.py robot_id:=robot_1 \
        state_dir:=/var/lib/tensorguard/robot_1 key_path:=/etc/tensorguard/robot_1/identity.key \
        trust_path:=/etc/tensorguard/robot_1/trust.json [simulate:=true tasks:="['push-v3']"]

`robot_id`, `key_path` and `trust_path` are what `tensorguard robot install` prints. The identity key's
passphrase comes from TENSORGUARD_KEY_PASSPHRASE in the environment. With `policy:=true` the robot's
policy node runs the fleet's model too (it starts disabled: docs/policy.md), reading the edge node's
`inputs.*` from the same parameter file so both see one observation layout.
Everything else is in config/fleet.yaml (`/**` keys, so the same file serves every robot), including
the topics the edge node records from (`inputs.*`): there, the simulated arm's. A real robot passes a
`params_file` mapping its own joint-state, pose and command topics (docs/robot-inputs.md).
"""
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from tensorguard_ros.params import parameters_from_file

CONFIG = Path(__file__).resolve().parent.parent / 'config' / 'fleet.yaml'


def policy_node(context) -> list[LifecycleNode]:
    """The policy node with the edge node's ``inputs.*`` as the parameter file resolves them for it."""
    robot_id = LaunchConfiguration('robot_id').perform(context)
    params = LaunchConfiguration('params_file').perform(context)
    inputs = {key: value for key, value in parameters_from_file(params, f'/{robot_id}/edge_node').items()
              if key.startswith('inputs.')}
    return [LifecycleNode(
        package='tensorguard_policy', executable='policy_node', name='policy_node', namespace=robot_id,
        output='screen', parameters=[params, inputs, {'robot_id': robot_id,
                                                      'trust_path': LaunchConfiguration('trust_path')}])]


def generate_launch_description() -> LaunchDescription:
    robot_id = LaunchConfiguration('robot_id')
    params = LaunchConfiguration('params_file')
    return LaunchDescription([
        DeclareLaunchArgument('robot_id', description='Enrolled robot identity; also its namespace.'),
        DeclareLaunchArgument('state_dir', description='Directory for the store, model and privacy ledger.'),
        DeclareLaunchArgument('key_path', description='Encrypted identity key of this robot.'),
        DeclareLaunchArgument('trust_path', description='Trust file written at enrolment.'),
        DeclareLaunchArgument('params_file', default_value=str(CONFIG), description='Parameter YAML.'),
        DeclareLaunchArgument('simulate', default_value='false',
                              description='Also start a simulated Meta-World robot as the demonstrator.'),
        DeclareLaunchArgument('tasks', default_value="['push-v3']", description='Tasks of the simulated robot.'),
        DeclareLaunchArgument('seed', default_value='0', description='Simulator seed of the first episode.'),
        DeclareLaunchArgument('policy', default_value='false',
                              description="Also start the robot's policy node (disabled until enabled)."),
        # launch escalates to SIGTERM this long after SIGINT (its default, 5 s, is shorter than a Python node
        # importing torch and MuJoCo takes to exit on a loaded 2-core machine: docs/fleet-provisioning-trial.md).
        DeclareLaunchArgument('sigterm_timeout', default_value='30',
                              description='Seconds each node may take to stop after SIGINT before SIGTERM.'),
        LifecycleNode(
            package='tensorguard_edge', executable='edge_node', name='edge_node', namespace=robot_id,
            output='screen',
            parameters=[params, {'robot_id': robot_id, 'state_dir': LaunchConfiguration('state_dir'),
                                 'key_path': LaunchConfiguration('key_path'),
                                 'trust_path': LaunchConfiguration('trust_path')}]),
        Node(
            package='tensorguard_sim', executable='sim_robot', name='sim_robot', namespace=robot_id,
            output='screen', condition=IfCondition(LaunchConfiguration('simulate')),
            parameters=[params, {'robot_id': robot_id, 'tasks': LaunchConfiguration('tasks'),
                                 'seed': LaunchConfiguration('seed')}]),
        OpaqueFunction(function=policy_node, condition=IfCondition(LaunchConfiguration('policy'))),
    ])
