"""`described()`: a dataclass field whose description becomes its ROS parameter descriptor.

Pure Python (no rclpy), so ROS-free cores such as `EdgeClient` declare their configs with it and
`tensorguard_ros.params.declare_dataclass_parameters` turns them into parameters.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


def described(description: str, default: Any = dataclasses.MISSING,
              default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with a default (or factory) and a description for ``ros2 param describe``."""
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={'description': description})
    return dataclasses.field(default=default, metadata={'description': description})
