"""A node's parameters as ROS itself resolves a parameter file for it.

rcl parses the YAML and rclpy applies its node-name rules (``/**``, ``/*``, namespaces, later
sections overriding earlier ones), exactly as for a node started with ``--params-file``: a
throwaway node in a private context reads its overrides; nothing is announced on any topic.
"""
from __future__ import annotations

from array import array
from pathlib import Path


def node_parameters(params_path: Path, node_fqn: str, dataclass_type):
    """`dataclass_type` filled from the parameters `params_path` gives node `node_fqn` (e.g.
    ``/tensorguard/aggregator``); fields the file does not set keep their defaults."""
    import rclpy  # here, not at module level: the plan and the replay import without ROS
    from rclpy.context import Context
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions

    namespace, _, name = node_fqn.rpartition('/')
    context = Context()
    rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = Node(name, namespace=namespace or '/', context=context, use_global_arguments=False,
                    cli_args=['--ros-args', '--params-file', str(params_path)], start_parameter_services=False,
                    enable_rosout=False, automatically_declare_parameters_from_overrides=True)
        try:
            values = {key: list(p.value) if isinstance(p.value, array) else p.value
                      for key, p in node.get_parameters_by_prefix('').items()}
        finally:
            node.destroy_node()
    finally:
        context.try_shutdown()
    return dataclass_type(**{k: v for k, v in values.items() if k in dataclass_type.__dataclass_fields__})
