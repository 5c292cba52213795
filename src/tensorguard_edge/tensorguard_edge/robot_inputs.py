"""Standard ROS messages in and out of a `StreamMapping` (rclpy message types; no node of its own).

`sample` turns one message into a field's values and its stamp (header stamp; for headerless types
and for a zero stamp, which a JointTrajectory uses to mean "now", the caller's fallback: the DDS
source timestamp live, the recorded time from a bag). `subscribe_sources` subscribes a node to
every source a mapping reads, for the edge node and the policy node alike; `LiveObservation` keeps
the newest aligned observation with the aligner's own code; `action_message` builds the command
message a ros2_control forward command controller or a trajectory controller takes.
"""
from __future__ import annotations

import importlib
import threading
from array import array
from collections.abc import Callable
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from rclpy.subscription import Subscription
from trajectory_msgs.msg import JointTrajectoryPoint

from tensorguard_crypto.refusal import Reason
from tensorguard_edge.alignment import EpisodeAligner
from tensorguard_edge.streams import (
    FIELDS,
    FLOAT64_ARRAY,
    HEADERLESS_TYPES,
    JOINT_STATE,
    JOINT_TRAJECTORY,
    POINT_STAMPED,
    POSE_STAMPED,
    MappingError,
    SourceSpec,
    StreamError,
    StreamMapping,
)


def message_class(type_name: str) -> type:
    """The rclpy class of one of the supported types, e.g. ``sensor_msgs/msg/JointState``."""
    if type_name not in FIELDS:
        raise MappingError(f'type {type_name!r} is not one of {", ".join(FIELDS)}')
    package, kind, name = type_name.split('/')
    return getattr(importlib.import_module(f'{package}.{kind}'), name)


def stamp_ns(stamp: Time) -> int:
    """A builtin_interfaces/Time in nanoseconds."""
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def to_time(stamp: int) -> Time:
    """Nanoseconds as a builtin_interfaces/Time."""
    return Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000)


def _pick_joints(spec: SourceSpec, names: list[str], values, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.size != len(names):
        raise StreamError(f'{spec.name}: {what} has {values.size} values for {len(names)} joints',
                          reason=Reason.MALFORMED_SAMPLE)
    if not spec.joints:
        return values
    index = {name: i for i, name in enumerate(names)}
    missing = [j for j in spec.joints if j not in index]
    if missing:
        raise StreamError(f'{spec.name}: message lacks joints {missing} (it has {names})',
                          reason=Reason.MALFORMED_SAMPLE)
    return values[[index[j] for j in spec.joints]]


def _values(spec: SourceSpec, selector: str, msg) -> np.ndarray:
    if spec.type == JOINT_STATE:
        return _pick_joints(spec, list(msg.name), getattr(msg, selector), selector)
    if spec.type == JOINT_TRAJECTORY:
        if not msg.points:
            raise StreamError(f'{spec.name}: trajectory has no points', reason=Reason.MALFORMED_SAMPLE)
        return _pick_joints(spec, list(msg.joint_names), msg.points[0].positions, 'positions')
    if spec.type == POSE_STAMPED:
        p, q = msg.pose.position, msg.pose.orientation
        position, orientation = [p.x, p.y, p.z], [q.x, q.y, q.z, q.w]
        return np.array({'position': position, 'orientation': orientation, 'pose': position + orientation}[selector])
    if spec.type == POINT_STAMPED:
        return np.array([msg.point.x, msg.point.y, msg.point.z])
    return np.asarray(msg.data, dtype=np.float64)


def sample(spec: SourceSpec, field: str, msg, fallback_stamp_ns: int) -> tuple[int, np.ndarray]:
    """The stamp and the values of `field` of one message of `spec`; StreamError if it has none."""
    values = _values(spec, field, msg)
    if not np.all(np.isfinite(values)):
        raise StreamError(f'{spec.name}:{field} has non-finite values', reason=Reason.MALFORMED_SAMPLE)
    stamp = 0 if spec.type in HEADERLESS_TYPES else stamp_ns(msg.header.stamp)
    return (stamp or fallback_stamp_ns), values


def source_sample(mapping: StreamMapping, spec: SourceSpec, msg, fallback_stamp_ns: int) -> tuple[int, np.ndarray]:
    """One message as the aligner's sample of its source: the used fields' values concatenated."""
    parts = [sample(spec, name, msg, fallback_stamp_ns) for name in mapping.fields_of(spec.name)]
    return parts[0][0], np.concatenate([values for _, values in parts])


def declare_input_parameters(node: Node, prefix: str = 'inputs.') -> dict[str, Any]:
    """Declare the ``inputs.*`` parameters of a stream mapping (read-only: a mapping does not change
    under a running recorder), the per-source ones for every name ``inputs.sources`` lists; return
    the values that are set, for `StreamMapping.from_parameters`."""
    values: dict[str, Any] = {}

    def declare(name: str, kind: Any, description: str) -> Any:
        value = node.declare_parameter(
            prefix + name, kind, ParameterDescriptor(description=description, read_only=True)).value
        if value is not None:
            values[prefix + name] = list(value) if isinstance(value, (list, tuple, array)) else value
        return value

    sources = declare('sources', Parameter.Type.STRING_ARRAY, 'Names of the source topics (docs/robot-inputs.md).')
    for name in sources or []:
        declare(f'{name}.topic', Parameter.Type.STRING, f'Topic of {name} (relative: the robot namespace applies).')
        declare(f'{name}.type', Parameter.Type.STRING, f'Message type of {name}, e.g. sensor_msgs/msg/JointState.')
        declare(f'{name}.joints', Parameter.Type.STRING_ARRAY,
                f'Joints of {name} (JointState/JointTrajectory) to pick, in order (unset: all, in message order).')
    declare('observation', Parameter.Type.STRING_ARRAY,
            'Observation layout: "<source>:<field>" or "<source>:<field>@prev" entries, concatenated in order.')
    declare('action', Parameter.Type.STRING, 'Action entry "<source>:<field>".')
    declare('tolerance_s', 0.02, 'Seconds within which every source must have a sample for a frame to be kept.')
    return values


def subscribe_sources(node: Node, mapping: StreamMapping, on_sample: Callable[[str, int, np.ndarray], None],
                      on_refused: Callable[[StreamError], None], qos: QoSProfile) -> list[Subscription]:
    """Subscribe `node` to every source `mapping` reads; hand each message to `on_sample(source,
    stamp_ns, values)`, or its refusal to `on_refused`. Headerless types are stamped with the DDS
    source timestamp."""
    def callback_for(spec: SourceSpec) -> Callable:
        def on_message(msg, info) -> None:
            try:
                stamp, values = source_sample(mapping, spec, msg, int(info['source_timestamp']))
                on_sample(spec.name, stamp, values)
            except StreamError as exc:
                on_refused(exc)
        return on_message

    return [node.create_subscription(message_class(spec.type), spec.topic, callback_for(spec), qos)
            for spec in map(mapping.source, mapping.used_sources)]


class LiveObservation:
    """The newest aligned observation of a robot's live sources, for the policy node (episode
    markers go to `aligner.start`/`end` under `lock`, so @prev never reaches into the last episode)."""

    def __init__(self, node: Node, mapping: StreamMapping, qos: QoSProfile,
                 on_refused: Callable[[StreamError], None]) -> None:
        self.aligner = EpisodeAligner(mapping, on_episode=lambda _demo: None)
        self.lock = threading.Lock()
        self.subscriptions = subscribe_sources(node, mapping, self._add, on_refused, qos)

    def _add(self, source: str, stamp: int, values: np.ndarray) -> None:
        with self.lock:
            self.aligner.add(source, stamp, values)

    def latest(self) -> tuple[int, np.ndarray] | None:
        """(clock stamp in ns, observation) of the newest aligned frame, or None if there is none."""
        with self.lock:
            return self.aligner.latest()


def action_message(spec: SourceSpec, values: np.ndarray, stamp: Time):
    """The command message for `values`: Float64MultiArray (forward command controller) or a
    one-point JointTrajectory over `spec.joints` stamped `stamp`."""
    values = [float(v) for v in np.asarray(values).ravel()]
    cls = message_class(spec.type)
    if spec.type == FLOAT64_ARRAY:
        return cls(data=values)
    if spec.type != JOINT_TRAJECTORY:
        raise MappingError(f'action source {spec.name!r} must be {FLOAT64_ARRAY} or {JOINT_TRAJECTORY}, '
                           f'not {spec.type}')
    if len(spec.joints) != len(values):
        raise MappingError(f'action source {spec.name!r} names {len(spec.joints)} joints for {len(values)} values')
    msg = cls(joint_names=list(spec.joints))
    msg.header.stamp = stamp
    msg.points = [JointTrajectoryPoint(positions=values)]
    return msg
