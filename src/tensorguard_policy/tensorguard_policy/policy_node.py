"""The robot's policy node: a thin lifecycle shell around `PolicyController`.

- subscribes ``/tensorguard/model_updates`` (latched) and hands every model to the controller, which
  verifies it exactly as the edge client does and switches only between episodes;
- builds the robot's observation from its standard topics with the edge node's own code
  (`tensorguard_edge.robot_inputs.LiveObservation`, the same ``inputs.*`` mapping parameters);
- follows the edge node's ``episode_markers`` (task, autonomous or demonstration, episode ends);
- at ``control_rate_hz`` publishes the controller's command on the mapping's action topic as the
  controller's message type (`action_message`: Float64MultiArray or JointTrajectory);
- ``~/enable`` (std_srvs/SetBool): a human enables and disables it; it starts disabled;
- publishes ``policy_status`` (RobotStatus: running version, mode, refusals by reason) and ``/diagnostics``.

Lifecycle: configure reads the trust anchors, the mapping and the envelope (a mismatch fails the
transition with the reason in the log); activate subscribes, starts the control timer and serves
``~/enable``; deactivate and shutdown send the safe action if the policy was driving and destroy them.
One thread runs every callback, so the controller needs no lock.
"""
from __future__ import annotations

import sys
from collections import Counter

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from std_srvs.srv import SetBool

from tensorguard_edge.client import TrustAnchors
from tensorguard_edge.robot_inputs import LiveObservation, action_message, declare_input_parameters, message_class
from tensorguard_edge.streams import StreamError, StreamMapping
from tensorguard_learning.deployment import ModelRefused
from tensorguard_msgs.msg import EpisodeMarker, ModelUpdate, RejectionCount, RobotStatus
from tensorguard_policy.runner import PolicyController
from tensorguard_policy.settings import PolicySettings
from tensorguard_ros import qos, topics
from tensorguard_ros.diagnostics import diagnostic_status
from tensorguard_ros.node_main import destroy_entities, enable_autostart, spin_node
from tensorguard_ros.params import declare_dataclass_parameters


class PolicyNode(LifecycleNode):
    """Lifecycle node running the fleet's verified policy on one robot (see module docstring)."""

    def __init__(self) -> None:
        super().__init__('policy_node')
        self.settings: PolicySettings = declare_dataclass_parameters(self, PolicySettings)
        self.mapping_parameters = declare_input_parameters(self)
        self.mapping: StreamMapping | None = None
        self.controller: PolicyController | None = None
        self.live: LiveObservation | None = None
        self.lifecycle_state = 'unconfigured'
        self.publishers_ = []  # from configure to cleanup
        self.handles = []  # subscriptions, timers and the enable service, while active
        self.reported: dict[str, int] = {}
        enable_autostart(self)

    # Lifecycle transitions.
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.mapping = StreamMapping.from_parameters(self.mapping_parameters)
            envelope = self.settings.envelope()
            envelope.check_commanding(self.mapping.action_dim or envelope.action_dim)
            self.controller = PolicyController(
                TrustAnchors.load(self.settings.trust_path).keys, self.settings.robot_id, envelope,
                1.0 / self.settings.control_rate_hz, self.mapping.state_dim)
        except Exception as exc:  # noqa: BLE001 - any start-up failure is reported and refused.
            self.get_logger().error(f'configure failed: {type(exc).__name__}: {exc}')
            return TransitionCallbackReturn.FAILURE
        self.action_spec = self.mapping.source(self.mapping.action_entry.source)
        self.action_pub = self.create_lifecycle_publisher(message_class(self.action_spec.type),
                                                          self.action_spec.topic, qos.COMMANDS)
        self.status_pub = self.create_lifecycle_publisher(RobotStatus, 'policy_status', qos.STATUS)
        self.diag_pub = self.create_lifecycle_publisher(DiagnosticArray, topics.DIAGNOSTICS, qos.DIAGNOSTICS)
        self.publishers_ = [self.action_pub, self.status_pub, self.diag_pub]
        self.lifecycle_state = 'inactive'
        self.get_logger().info(f'{self.settings.robot_id}: configured, commanding {self.action_spec.topic} '
                               f'({self.action_spec.type}) at {self.settings.control_rate_hz} Hz')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        self.live = LiveObservation(self, self.mapping, qos.ROBOT_INPUTS, self.controller.refuse)
        self.handles = [
            *self.live.subscriptions,
            self.create_subscription(ModelUpdate, topics.MODEL_UPDATES, self._on_model_update, qos.LATCHED),
            self.create_subscription(EpisodeMarker, topics.EPISODE_MARKERS, self._on_marker, qos.EPISODE_MARKERS),
            self.create_service(SetBool, '~/enable', self._on_enable),
            self.create_timer(1.0 / self.settings.control_rate_hz, self._control),
            self.create_timer(self.settings.status_period_s, self._publish_status),
        ]
        self.lifecycle_state = 'active'
        self.get_logger().info(f'{self.settings.robot_id}: active, disabled until enabled through ~/enable')
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        self.lifecycle_state = 'inactive'
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        destroy_entities(self, self.publishers_)
        self.controller = None
        self.lifecycle_state = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.handles:
            self._stop()
        destroy_entities(self, self.publishers_)
        self.lifecycle_state = 'finalized'
        return TransitionCallbackReturn.SUCCESS

    def _stop(self) -> None:
        """Disable the policy (the safe action once if it was driving) and drop what activate made."""
        self.controller.set_enabled(False)
        self._control()
        destroy_entities(self, self.handles)
        self.live = None

    # Inputs.
    def _on_model_update(self, msg: ModelUpdate) -> None:
        try:
            model = self.controller.offer_model(bytes(msg.package), list(msg.target_robots))
        except ModelRefused as exc:
            if exc.reason != 'not_newer':  # the latched model again, e.g. after a re-subscription
                self.controller.refuse(exc)
                self.get_logger().warning(f'model {msg.model_version} refused ({exc.reason}): {exc}')
            return
        if model is not None:
            status = self.controller.status()
            when = 'now' if status.model_version == model.version else 'when the running episode ends'
            self.get_logger().info(f'model {model.version} ({msg.rollout}) verified; runs {when}')

    def _on_marker(self, msg: EpisodeMarker) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        try:
            with self.live.lock:
                if msg.kind == EpisodeMarker.START:
                    self.live.aligner.start(stamp, msg.task, msg.episode_index)
                else:
                    self.live.aligner.end(stamp, msg.success, msg.episode_index)
        except StreamError as exc:
            self.controller.refuse(exc)
            self.get_logger().warning(f'episode marker refused ({exc.reason}): {exc}')
            return
        if msg.kind == EpisodeMarker.START:
            self.controller.start_episode(msg.episode_index, msg.task, msg.autonomous)
        else:
            self.controller.end_episode()

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self.controller.set_enabled(request.data)
        response.success = True
        response.message = f'policy {"enabled" if request.data else "disabled"}; now {self.controller.mode()}'
        self.get_logger().info(response.message)
        return response

    # Control.
    def _control(self) -> None:
        now = self.get_clock().now()
        command = self.controller.tick(now.nanoseconds, self.live.latest() if self.live else None)
        if command is not None:
            self.action_pub.publish(action_message(self.action_spec, command, now.to_msg()))

    # Status.
    def _publish_status(self) -> None:
        status = self.controller.status()
        refusals = dict(Counter(status.refusals) + Counter(self.live.aligner.counts))
        msg = RobotStatus(robot_id=self.settings.robot_id, lifecycle_state=self.lifecycle_state,
                          activity=status.mode, model_version=status.model_version,
                          rejections=[RejectionCount(reason=r, count=c) for r, c in sorted(refusals.items())])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.status_pub.publish(msg)
        values = {'mode': status.mode, 'enabled': str(status.enabled), 'model_version': str(status.model_version),
                  'pending_version': str(status.pending_version), 'episode': str(status.episode_index),
                  'task': status.task, 'commands': str(status.commands),
                  'watchdog_stops': str(status.watchdog_stops)}
        new = dict(Counter(refusals) - Counter(self.reported))
        self.reported = refusals
        diag = DiagnosticArray(status=[diagnostic_status(
            f'tensorguard: {self.get_fully_qualified_name()}', self.settings.robot_id, {}, refusals, new, values)])
        diag.header.stamp = msg.header.stamp
        self.diag_pub.publish(diag)


def main(args: list[str] | None = None) -> int:
    """Entry point: ``ros2 run tensorguard_policy policy_node``."""
    return spin_node(PolicyNode, args)


if __name__ == '__main__':
    sys.exit(main())
