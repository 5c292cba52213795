"""A node's parameters as ROS itself resolves a parameter file for it, as a settings dataclass.

The file is resolved by `tensorguard_ros.params.parameters_from_file` (rcl's parser, rclpy's node-name
rules), imported inside the call so the plan and the replay import without ROS.
"""
from __future__ import annotations

from pathlib import Path


def node_parameters(params_path: Path, node_fqn: str, dataclass_type):
    """`dataclass_type` filled from the parameters `params_path` gives node `node_fqn` (e.g.
    ``/tensorguard/aggregator``); fields the file does not set keep their defaults."""
    from tensorguard_ros.params import parameters_from_file

    values = parameters_from_file(params_path, node_fqn)
    return dataclass_type(**{k: v for k, v in values.items() if k in dataclass_type.__dataclass_fields__})
