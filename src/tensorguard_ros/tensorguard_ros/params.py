"""Declare a node's parameters from a library config dataclass, with descriptors.

Library configs (``EdgeSettings``, ``AggregatorConfig``...) stay ROS-free dataclasses whose fields
carry a ``description`` (and optionally a range and ``read_only``) in their metadata, see
`tensorguard_ros.config_fields.described`; this turns each field into a declared ROS parameter of
the same name, type and default, so ``config/*.yaml`` files set them and ``ros2 param describe``
explains them. A value of the wrong type or out of range is refused by rclpy at declaration, naming
the parameter; at runtime rclpy refuses out-of-range values and any change of a read-only one, and
`follow_parameter_changes` hands every accepted change of a writable one to the node at once.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.node import Node

C = TypeVar('C')

_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
    list[str]: ParameterType.PARAMETER_STRING_ARRAY,
    list[int]: ParameterType.PARAMETER_INTEGER_ARRAY,
    list[float]: ParameterType.PARAMETER_DOUBLE_ARRAY,
}
_INT64 = (-2 ** 63, 2 ** 63 - 1)


def field_descriptor(field: dataclasses.Field, kind: type) -> ParameterDescriptor:
    """The descriptor of one `described` field: description, type, read-only flag and range."""
    descriptor = ParameterDescriptor(description=field.metadata.get('description', ''), type=_TYPES[kind],
                                     read_only=field.metadata.get('read_only', False))
    if 'range' not in field.metadata:
        return descriptor
    low, high, step = field.metadata['range']
    if kind is int:
        descriptor.integer_range = [IntegerRange(
            from_value=_INT64[0] if low is None else low, to_value=_INT64[1] if high is None else high, step=step)]
    elif kind is float:
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=-math.inf if low is None else low, to_value=math.inf if high is None else high,
            step=float(step))]
    else:
        raise TypeError(f'{field.name}: a range needs an int or float field, not {kind}')
    return descriptor


def declare_dataclass_parameters(node: Node, config_type: type[C], prefix: str = '') -> C:
    """Declare one parameter per field of `config_type`; return the config built from their values."""
    hints = typing.get_type_hints(config_type)
    for field in dataclasses.fields(config_type):
        kind = hints[field.name]
        if kind not in _TYPES:
            raise TypeError(f'{config_type.__name__}.{field.name}: unsupported parameter type {kind}')
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            raise TypeError(f'{config_type.__name__}.{field.name} needs a default to become a parameter')
        node.declare_parameter(prefix + field.name, default, field_descriptor(field, kind))
    return current_dataclass_parameters(node, config_type, prefix)


def current_dataclass_parameters(node: Node, config_type: type[C], prefix: str = '') -> C:
    """The config built from the node's current values of parameters declared from `config_type`."""
    values = {}
    for field in dataclasses.fields(config_type):
        value = node.get_parameter(prefix + field.name).value
        values[field.name] = list(value) if isinstance(value, (list, tuple, array)) else value
    return config_type(**values)


def follow_parameter_changes(node: Node, config_type: type[C], apply: Callable[[C], None], prefix: str = '') -> None:
    """Call `apply` with the rebuilt config after every accepted change of one of `config_type`'s parameters.

    Without this a writable parameter would be accepted by `ros2 param set` and silently ignored;
    read-only and out-of-range values never get here (rclpy refuses them first).
    """
    names = {prefix + field.name for field in dataclasses.fields(config_type)}

    def on_set(parameters: list) -> None:
        if any(parameter.name in names for parameter in parameters):
            apply(current_dataclass_parameters(node, config_type, prefix))

    node.add_post_set_parameters_callback(on_set)


def parameters_from_file(params_path: str | Path, node_fqn: str) -> dict[str, Any]:
    """The parameter values `params_path` gives node `node_fqn` (e.g. ``/robot_1/edge_node``), resolved
    as for a node started with ``--params-file`` (rcl parses the YAML, rclpy applies ``/**``, ``/*``,
    namespaces and later-overrides-earlier), so operator commands read a robot's own file the way its
    nodes do: a throwaway node in a private context reads its overrides and announces nothing."""
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    namespace, _, name = node_fqn.rpartition('/')
    context = Context()
    rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = Node(name, namespace=namespace or '/', context=context, use_global_arguments=False,
                    cli_args=['--ros-args', '--params-file', str(params_path)], start_parameter_services=False,
                    enable_rosout=False, automatically_declare_parameters_from_overrides=True)
        try:
            return {key: list(p.value) if isinstance(p.value, array) else p.value
                    for key, p in node.get_parameters_by_prefix('').items()}
        finally:
            node.destroy_node()
    finally:
        context.try_shutdown()
