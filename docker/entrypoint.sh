#!/usr/bin/env bash
# Source ROS 2, the TensorGuard venv and the workspace, then run the given command.
set -e
source /opt/ros/kilted/setup.bash
source /opt/tensorguard-venv/bin/activate
source /ws/install/setup.bash
exec "$@"
