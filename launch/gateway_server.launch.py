"""The fleet server with its Zenoh gateway, and optionally the fleet router on the same machine.

    ros2 launch launch/gateway_server.launch.py fleet_dir:=/var/lib/tensorguard/fleet [router:=true]

Starts launch/fleet_server.launch.py (key service and aggregator), the server gateway with
config/gateway_server.yaml, and with ``router:=true`` the fleet's Zenoh router (`gateway_router`) with
config/gateway_network.yaml. Certificates: `tensorguard fleet gateway-cert FLEET_DIR --server` and
`--router --host <name>` (docs/gateway.md).
"""
from pathlib import Path

from ament_index_python.packages import get_package_prefix
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

ROOT = Path(__file__).resolve().parent.parent


def generate_launch_description() -> LaunchDescription:
    router = Path(get_package_prefix('tensorguard_gateway')) / 'lib' / 'tensorguard_gateway' / 'gateway_router'
    return LaunchDescription([
        DeclareLaunchArgument('fleet_dir', description='Provisioned fleet directory (holds server/).'),
        DeclareLaunchArgument('gateway_params', default_value=str(ROOT / 'config' / 'gateway_server.yaml'),
                              description='Server gateway parameter YAML.'),
        DeclareLaunchArgument('router', default_value='false',
                              description='Also run the fleet router here (router_config says where it listens).'),
        DeclareLaunchArgument('router_config', default_value=str(ROOT / 'config' / 'gateway_network.yaml'),
                              description="The router's network YAML: listen endpoints, TLS files, sites."),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(ROOT / 'launch' / 'fleet_server.launch.py')),
                                 launch_arguments={'fleet_dir': LaunchConfiguration('fleet_dir')}.items()),
        Node(package='tensorguard_gateway', executable='gateway', name='gateway', namespace='tensorguard',
             output='screen', parameters=[LaunchConfiguration('gateway_params')]),
        ExecuteProcess(cmd=[str(router), '--config', LaunchConfiguration('router_config')], output='screen',
                       condition=IfCondition(LaunchConfiguration('router'))),
    ])
