"""Declare a node's parameters from a library config dataclass, with descriptors.

Library configs (``EdgeConfig``, ``AggregatorConfig``...) stay ROS-free dataclasses whose fields
carry a ``description`` in their metadata; this turns each field into a declared ROS parameter of
the same name, type and default, so ``config/*.yaml`` files set them and ``ros2 param describe``
explains them. A value of the wrong type is refused by rclpy at declaration, naming the parameter.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import TypeVar

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
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


def declare_dataclass_parameters(node: Node, config_type: type[C], prefix: str = '') -> C:
    """Declare one parameter per field of `config_type`; return the config built from their values."""
    hints = typing.get_type_hints(config_type)
    values = {}
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
        descriptor = ParameterDescriptor(description=field.metadata.get('description', ''), type=_TYPES[kind])
        value = node.declare_parameter(prefix + field.name, default, descriptor).value
        values[field.name] = list(value) if isinstance(value, (list, tuple)) else value
    return config_type(**values)
