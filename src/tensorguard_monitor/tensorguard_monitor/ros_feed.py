"""Feed a `FleetState` from ROS: ``FleetStatus``, every robot's ``RobotStatus`` and ``/diagnostics``.

`FleetStateFeed` subscribes on an existing node (the dashboard's own, or the rqt plugin's), so it
adds no node, executor or thread of its own. Robots are discovered from
``FleetStatus.enrolled_robots`` (and ``revoked_robots``): a ``/<robot>/status`` subscription is
created the first time a robot is named. Subscriptions use best-effort QoS, which matches both the
best-effort status writers and the reliable ``/diagnostics`` writers of the server nodes.
"""
from __future__ import annotations

import threading

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.subscription import Subscription

from tensorguard_monitor.fleet_state import DiagnosticRecord, FleetState, FleetStatusRecord, RobotStatusRecord
from tensorguard_msgs.msg import FleetStatus, RobotStatus
from tensorguard_ros import qos, topics


def stamp_seconds(stamp) -> float:
    """A ``builtin_interfaces/Time`` in seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def fleet_status_record(msg: FleetStatus) -> FleetStatusRecord:
    """The ROS-free record of one ``FleetStatus``."""
    return FleetStatusRecord(
        round_id=msg.round_id, phase=msg.phase, model_version=msg.model_version, quorum=msg.quorum,
        participants=tuple(msg.participants), enrolled_robots=tuple(msg.enrolled_robots),
        revoked_robots=tuple(msg.revoked_robots), rejections={r.reason: r.count for r in msg.rejections},
        last_success_rate=msg.last_success_rate, last_success_lower_bound=msg.last_success_lower_bound,
        last_gate_decision=msg.last_gate_decision, deployed_success_rate=msg.deployed_success_rate,
        stamp=stamp_seconds(msg.header.stamp))


def robot_status_record(msg: RobotStatus) -> RobotStatusRecord:
    """The ROS-free record of one ``RobotStatus``."""
    return RobotStatusRecord(
        robot_id=msg.robot_id, lifecycle_state=msg.lifecycle_state, activity=msg.activity,
        episodes_buffered=msg.episodes_buffered, frames_buffered=msg.frames_buffered, store_bytes=msg.store_bytes,
        model_version=msg.model_version, last_round_id=msg.last_round_id, last_update_bytes=msg.last_update_bytes,
        epsilon_spent=msg.epsilon_spent, epsilon_budget=msg.epsilon_budget,
        rejections={r.reason: r.count for r in msg.rejections}, stamp=stamp_seconds(msg.header.stamp))


def diagnostic_records(msg: DiagnosticArray) -> list[DiagnosticRecord]:
    """The ROS-free records of every status in one ``DiagnosticArray``."""
    return [DiagnosticRecord(name=s.name, level=int.from_bytes(s.level, 'little') if isinstance(s.level, bytes)
                             else int(s.level), message=s.message, hardware_id=s.hardware_id,
                             values={kv.key: kv.value for kv in s.values}) for s in msg.status]


class FleetStateFeed:
    """Subscriptions on `node` that fold the fleet's status topics into `state`.

    Callbacks run on whatever executor spins `node`; `FleetState` is thread-safe. `robots` names
    robots to watch before the first ``FleetStatus`` lists them. `destroy()` removes every
    subscription (the node stays)."""

    def __init__(self, node: Node, state: FleetState, robots: tuple[str, ...] = ()) -> None:
        self.node = node
        self.state = state
        self._lock = threading.Lock()
        self._robot_subscriptions: dict[str, Subscription] = {}
        self._subscriptions = [
            node.create_subscription(FleetStatus, topics.FLEET_STATUS, self._on_fleet_status, qos.STATUS),
            node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diagnostics, qos.STATUS),
        ]
        self.watch_robots(robots)

    @property
    def robots(self) -> tuple[str, ...]:
        """Robots whose ``/<robot>/status`` is subscribed."""
        with self._lock:
            return tuple(sorted(self._robot_subscriptions))

    def watch_robots(self, robot_ids: tuple[str, ...] | list[str]) -> None:
        """Subscribe ``/<robot>/status`` of every robot in `robot_ids` not yet watched."""
        with self._lock:
            for robot_id in robot_ids:
                if robot_id and robot_id not in self._robot_subscriptions:
                    self._robot_subscriptions[robot_id] = self.node.create_subscription(
                        RobotStatus, f'/{robot_id}/status', self._on_robot_status, qos.STATUS)

    def destroy(self) -> None:
        """Destroy every subscription this feed created."""
        with self._lock:
            subscriptions = self._subscriptions + list(self._robot_subscriptions.values())
            self._subscriptions, self._robot_subscriptions = [], {}
        for subscription in subscriptions:
            self.node.destroy_subscription(subscription)

    def _on_fleet_status(self, msg: FleetStatus) -> None:
        self.watch_robots([*msg.enrolled_robots, *msg.revoked_robots])
        self.state.apply_fleet_status(fleet_status_record(msg))

    def _on_robot_status(self, msg: RobotStatus) -> None:
        self.state.apply_robot_status(robot_status_record(msg))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for record in diagnostic_records(msg):
            self.state.apply_diagnostics(record)
