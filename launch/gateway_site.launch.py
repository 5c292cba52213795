"""A robot site's Zenoh gateway: bridges the site's DDS domain to the fleet router (docs/gateway.md).

    ros2 launch launch/gateway_site.launch.py params_file:=/etc/tensorguard/gateway_site.yaml

The site's robots run as usual (launch/robot.launch.py, one per robot, in the same DDS domain); the
gateway carries their updates, outcome reports and status to the fleet server and brings round configs,
models and the fleet status back. Its parameters (site id, robots, router endpoint, certificate files from
`tensorguard fleet gateway-cert --site`) are in config/gateway_site.yaml.
"""
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

CONFIG = Path(__file__).resolve().parent.parent / 'config' / 'gateway_site.yaml'


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument('params_file', default_value=str(CONFIG), description='Gateway parameter YAML.'),
        Node(package='tensorguard_gateway', executable='gateway', name='gateway', output='screen',
             parameters=[LaunchConfiguration('params_file')]),
    ])
