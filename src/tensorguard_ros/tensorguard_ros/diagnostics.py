"""A server node's health on ``/diagnostics``: its bad-state conditions and refusal counts.

A node keeps one `Health`. `fault(condition, message)` records that a condition holds (the KMS
audit log does not verify, the fleet directory cannot be written, the key service is unreachable);
`clear(condition)` that it no longer does; `refuse(reason)` counts one refused message or request.
A condition is logged when it starts, when its message changes and when it clears, never on every
timer tick. `DiagnosticsPublisher` reports the health as one ``diagnostic_msgs/DiagnosticStatus``
per node, every second and at once on each change: ERROR while any condition holds, WARN when
refusals were counted since the previous report, OK otherwise.
"""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

from tensorguard_ros import qos, topics


class Logger(Protocol):
    """What `Health` logs through: an rclpy node logger or a `logging.Logger`."""

    def error(self, message: str) -> object:
        """Log an error."""

    def info(self, message: str) -> object:
        """Log an informational message."""


def diagnostic_status(name: str, hardware_id: str, faults: Mapping[str, str], refusals: Mapping[str, int],
                      new_refusals: Mapping[str, int], values: Mapping[str, str]) -> DiagnosticStatus:
    """One node's status: ERROR while `faults` (condition -> message) hold, WARN if `new_refusals`
    were counted since the last report, else OK. Key/values: `values`, then ``refused: <reason>``
    totals, then ``fault: <condition>`` messages."""
    if faults:
        level, message = DiagnosticStatus.ERROR, '; '.join(faults[c] for c in sorted(faults))
    elif new_refusals:
        level = DiagnosticStatus.WARN
        message = 'refused since last report: ' + ', '.join(
            f'{reason} x{count}' for reason, count in sorted(new_refusals.items()))
    else:
        level, message = DiagnosticStatus.OK, 'ok'
    pairs = [*values.items(),
             *((f'refused: {reason}', str(count)) for reason, count in sorted(refusals.items())),
             *((f'fault: {condition}', text) for condition, text in sorted(faults.items()))]
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=key, value=value) for key, value in pairs])


class Health:
    """Thread-safe bad-state conditions and refusal counters of one node (see module docstring)."""

    def __init__(self, logger: Logger) -> None:
        self._logger = logger
        self._lock = threading.Lock()
        self._faults: dict[str, str] = {}
        self._refusals: Counter[str] = Counter()
        self._reported: Counter[str] = Counter()
        self.on_change: Callable[[], None] | None = None

    def fault(self, condition: str, message: str) -> None:
        """`condition` holds; logged (and reported at once) when it starts or its message changes."""
        with self._lock:
            changed = self._faults.get(condition) != message
            self._faults[condition] = message
        if changed:
            self._logger.error(message)
            self._changed()

    def clear(self, condition: str) -> None:
        """`condition` no longer holds; logged (and reported at once) if it did."""
        with self._lock:
            message = self._faults.pop(condition, None)
        if message is not None:
            self._logger.info(f'recovered ({condition}); it was: {message}')
            self._changed()

    def refuse(self, reason: str) -> None:
        """Count one refused message or request under `reason`."""
        with self._lock:
            self._refusals[reason] += 1

    def faults(self) -> dict[str, str]:
        """The conditions that hold now: condition -> message."""
        with self._lock:
            return dict(self._faults)

    def refusals(self) -> dict[str, int]:
        """Refusals counted since the node started, by reason."""
        with self._lock:
            return dict(self._refusals)

    def report(self) -> tuple[dict[str, str], dict[str, int], dict[str, int]]:
        """(faults, refusal totals, refusals since the previous report); marks these as reported."""
        with self._lock:
            new = self._refusals - self._reported
            self._reported = Counter(self._refusals)
            return dict(self._faults), dict(self._refusals), dict(new)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


class DiagnosticsPublisher:
    """Publishes a node's `Health` as ``tensorguard: <node name>`` on /diagnostics, every
    `period_s` seconds and on every change; `values` adds the node's own key/values."""

    def __init__(self, node: Node, health: Health, hardware_id: str, values: Callable[[], Mapping[str, str]],
                 period_s: float = 1.0) -> None:
        self._node = node
        self._health = health
        self._name = f'tensorguard: {node.get_name()}'
        self._hardware_id = hardware_id
        self._values = values
        self._publisher = node.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, qos.DIAGNOSTICS)
        node.create_timer(period_s, self.publish)
        health.on_change = self.publish

    def publish(self) -> None:
        """Publish the current status now."""
        faults, refusals, new = self._health.report()
        msg = DiagnosticArray(status=[diagnostic_status(self._name, self._hardware_id, faults, refusals, new,
                                                        self._values())])
        msg.header.stamp = self._node.get_clock().now().to_msg()
        self._publisher.publish(msg)
