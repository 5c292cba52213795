"""The robot's TensorGuard node: a thin lifecycle shell around `EdgeClient`.

It translates topics and parameters into `EdgeClient` calls and nothing more:
- records episodes from the robot's ``observation`` / ``action`` / ``episode_events`` streams (or
  whole ``demonstrations``) into the crash-safe store;
- on a signed ``RoundConfig`` trains and builds the encrypted update in a worker thread (so
  recording and status keep flowing) and publishes one ``EncryptedUpdate``;
- verifies and applies signed ``ModelUpdate``s;
- publishes ``RobotStatus`` and ``/diagnostics``, and counts every refused message by reason.

Lifecycle: configure opens the identity key, store, ledger and model; activate starts recording
and taking part in rounds; deactivate stops both; cleanup closes everything. With ``autostart``
(default) the node walks itself to active, like nav2's lifecycle manager does for its nodes.
"""
from __future__ import annotations

import hashlib
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from std_msgs.msg import Float32MultiArray, String

from tensorguard_edge.client import EdgeClient, EdgeSettings, ModelRefused, RoundRefused, create_client
from tensorguard_edge.recorder import EpisodeAssembler, StreamError
from tensorguard_learning.demonstrations import Demonstration
from tensorguard_msgs.msg import Demonstration as DemonstrationMsg
from tensorguard_msgs.msg import EncryptedUpdate, ModelUpdate, RejectionCount, RobotStatus, RoundConfig
from tensorguard_ros import qos, topics
from tensorguard_ros.node_main import destroy_entities, enable_autostart, spin_node
from tensorguard_ros.params import declare_dataclass_parameters, follow_parameter_changes


class EdgeNode(LifecycleNode):
    """Lifecycle node owning one robot's `EdgeClient`."""

    def __init__(self) -> None:
        super().__init__('edge_node')
        self.config: EdgeSettings = declare_dataclass_parameters(self, EdgeSettings)
        self.topics = {name: self.declare_parameter(
            f'{name}_topic', default, ParameterDescriptor(description=f"Topic of the robot's {name} stream "
                                                          '(relative names resolve in the robot namespace).')).value
            for name, default in (('observation', topics.OBSERVATION), ('action', topics.ACTION),
                                  ('episode_events', topics.EPISODE_EVENTS), ('demonstrations', topics.DEMONSTRATIONS))}
        self.status_period = self.declare_parameter(
            'status_period_s', 1.0, ParameterDescriptor(description='Seconds between RobotStatus messages.')).value
        self.client: EdgeClient | None = None
        self.assembler: EpisodeAssembler | None = None
        self.rejections: Counter[str] = Counter()
        self.activity = 'idle'
        self.worker: ThreadPoolExecutor | None = None
        self.round_busy = threading.Lock()
        self.awaiting_model: bytes | None = None
        self.lock = threading.Lock()
        self.publishers_ = []  # from configure to cleanup
        self.handles = []  # subscriptions and the status timer, while active
        follow_parameter_changes(self, EdgeSettings, self._apply_settings)
        enable_autostart(self)

    def _apply_settings(self, settings: EdgeSettings) -> None:
        """`ros2 param set` of a writable training parameter: used from the next round."""
        with self.lock:
            self.config = settings
            if self.client is not None:
                self.client.retune(settings)

    # Lifecycle transitions.
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.client = create_client(self.config)
        except Exception as exc:  # noqa: BLE001 - any start-up failure is reported and refused.
            self.get_logger().error(f'configure failed: {type(exc).__name__}: {exc}')
            return TransitionCallbackReturn.FAILURE
        self.assembler = EpisodeAssembler(self._store_episode, self.config.state_dim, self.config.action_dim)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix='round')
        self.update_pub = self.create_lifecycle_publisher(EncryptedUpdate, topics.ENCRYPTED_UPDATES, qos.UPDATES)
        self.status_pub = self.create_lifecycle_publisher(RobotStatus, 'status', qos.STATUS)
        self.diag_pub = self.create_lifecycle_publisher(DiagnosticArray, topics.DIAGNOSTICS, qos.DIAGNOSTICS)
        self.publishers_ = [self.update_pub, self.status_pub, self.diag_pub]
        self.get_logger().info(f'{self.config.robot_id}: configured, {self.client.status().episodes} episodes '
                               f'in store, model version {self.client.status().model_version}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        self.handles = [
            self.create_subscription(Float32MultiArray, self.topics['observation'], self._on_observation,
                                     qos.SENSOR_STREAM),
            self.create_subscription(Float32MultiArray, self.topics['action'], self._on_action, qos.SENSOR_STREAM),
            self.create_subscription(String, self.topics['episode_events'], self._on_event, qos.DEMONSTRATIONS),
            self.create_subscription(DemonstrationMsg, self.topics['demonstrations'], self._on_demonstration,
                                     qos.DEMONSTRATIONS),
            self.create_subscription(RoundConfig, topics.ROUND_CONFIG, self._on_round_config, qos.LATCHED),
            self.create_subscription(ModelUpdate, topics.MODEL_UPDATES, self._on_model_update, qos.LATCHED),
            self.create_timer(self.status_period, self._publish_status),
        ]
        self.activity = 'recording'
        self.get_logger().info(f'{self.config.robot_id}: active')
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        destroy_entities(self, self.handles)
        self.activity = 'idle'
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        destroy_entities(self, self.handles)
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Undo on_configure: finish a round being built, close the client, drop the publishers."""
        if self.worker is not None:
            self.worker.shutdown(wait=True)
            self.worker = None
        if self.client is not None:
            self.client.close()
            self.client = None
        destroy_entities(self, self.publishers_)
        self.assembler = None

    # Recording.
    def _reject(self, reason: str, detail: str) -> None:
        with self.lock:
            self.rejections[reason] += 1
        self.get_logger().warning(f'refused ({reason}): {detail}')

    def _on_observation(self, msg: Float32MultiArray) -> None:
        self._feed(self.assembler.on_observation, msg)

    def _on_action(self, msg: Float32MultiArray) -> None:
        self._feed(self.assembler.on_action, msg)

    def _feed(self, handler, msg: Float32MultiArray) -> None:
        dims = msg.layout.dim
        if len(dims) != 2 or dims[1].label != 'episode':
            self._reject('malformed_frame', 'frame layout must be [vector, episode] (see tensorguard_ros.topics)')
            return
        try:
            with self.lock:
                handler(int(dims[1].stride), int(msg.layout.data_offset), np.asarray(msg.data, dtype=np.float32))
        except StreamError as exc:
            self._reject(exc.reason, str(exc))

    def _on_event(self, msg: String) -> None:
        try:
            with self.lock:
                self.assembler.expire()
                self.assembler.on_event(msg.data)
        except StreamError as exc:
            self._reject(exc.reason, str(exc))

    def _on_demonstration(self, msg: DemonstrationMsg) -> None:
        if not msg.success:
            return
        try:
            states = np.asarray(msg.observation_state, dtype=np.float32)
            actions = np.asarray(msg.action, dtype=np.float32)
            if (msg.state_dim != self.config.state_dim or msg.action_dim != self.config.action_dim
                    or states.size != msg.num_frames * msg.state_dim
                    or actions.size != msg.num_frames * msg.action_dim):
                raise ValueError('sizes do not match num_frames x dims of this robot')
            demo = Demonstration(task=msg.task, observation_state=states.reshape(msg.num_frames, msg.state_dim),
                                 action=actions.reshape(msg.num_frames, msg.action_dim),
                                 episode_index=int(msg.episode_index))
        except ValueError as exc:
            self._reject('malformed_demonstration', str(exc))
            return
        self._store_episode(demo)

    def _store_episode(self, demo: Demonstration) -> None:
        try:
            self.client.add_demonstration(demo)
        except ValueError as exc:
            self._reject('demonstration_refused', str(exc))

    # Rounds and models.
    def _on_round_config(self, msg: RoundConfig) -> None:
        self._start_round(bytes(msg.package))

    def _start_round(self, package: bytes) -> None:
        if not self.round_busy.acquire(blocking=False):
            self._reject('round_busy', 'a round config arrived while a round is being processed')
            return
        self.worker.submit(self._run_round, package)

    def _run_round(self, package: bytes) -> None:
        try:
            self.activity = 'training'
            update = self.client.process_round(package, progress=self._set_activity)
            blob = update.serialize()
            msg = EncryptedUpdate(robot_id=update.robot_id, round_id=update.round_id,
                                  package_size=len(blob), package=blob)
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.package_sha256 = list(hashlib.sha256(blob).digest())
            self.update_pub.publish(msg)
            self.get_logger().info(
                f'round {update.round_id}: sent {len(blob):,} bytes, '
                f'epsilon spent {self.client.status().epsilon_spent:.3f}')
        except RoundRefused as exc:
            if exc.reason == 'model_mismatch':
                self.awaiting_model = package
            if exc.reason != 'already_contributed':
                self._reject(exc.reason, str(exc))
        except Exception as exc:  # noqa: BLE001 - a failed round must not kill the robot's node.
            self._reject('round_failed', f'{type(exc).__name__}: {exc}')
        finally:
            self.activity = 'budget_exhausted' if self.client.status().budget_exhausted else 'recording'
            self.round_busy.release()

    def _set_activity(self, activity: str) -> None:
        self.activity = activity

    def _on_model_update(self, msg: ModelUpdate) -> None:
        targets = list(msg.target_robots)
        if targets and self.config.robot_id not in targets:
            return
        try:
            version = self.client.apply_model(bytes(msg.package))
            self.get_logger().info(f'applied model version {version} ({msg.rollout})')
        except ModelRefused as exc:
            if exc.reason != 'not_newer':
                self._reject(exc.reason, str(exc))
            return
        # The latched round config may have arrived before the model it trains (e.g. after a
        # restart): try that round again now that the model is here.
        if self.awaiting_model is not None:
            package, self.awaiting_model = self.awaiting_model, None
            self._start_round(package)

    # Status.
    def _publish_status(self) -> None:
        status = self.client.status()
        msg = RobotStatus(robot_id=self.config.robot_id, lifecycle_state='active', activity=self.activity,
                          episodes_buffered=status.episodes, frames_buffered=status.frames,
                          store_bytes=status.store_bytes, model_version=status.model_version,
                          last_round_id=status.last_round_id, last_update_bytes=status.last_update_bytes,
                          epsilon_spent=status.epsilon_spent, epsilon_budget=status.epsilon_budget)
        msg.header.stamp = self.get_clock().now().to_msg()
        with self.lock:
            counts = {**self.rejections, 'episode_abandoned': self.assembler.abandoned_episodes,
                      'episode_failed': self.assembler.failed_episodes}
            msg.rejections = [RejectionCount(reason=r, count=c) for r, c in sorted(counts.items()) if c]
        self.status_pub.publish(msg)
        diag = DiagnosticArray()
        diag.header.stamp = msg.header.stamp
        level = DiagnosticStatus.WARN if status.budget_exhausted else DiagnosticStatus.OK
        diag.status = [DiagnosticStatus(
            level=level, name=f'tensorguard/{self.config.robot_id}/edge', hardware_id=self.config.robot_id,
            message='privacy budget exhausted' if status.budget_exhausted else self.activity,
            values=[KeyValue(key='episodes', value=str(status.episodes)),
                    KeyValue(key='model_version', value=str(status.model_version)),
                    KeyValue(key='epsilon_spent', value=f'{status.epsilon_spent:.4f}'),
                    KeyValue(key='epsilon_budget', value=f'{status.epsilon_budget:.4f}'),
                    KeyValue(key='rejected', value=str(sum(self.rejections.values())))])]
        self.diag_pub.publish(diag)


def main(args: list[str] | None = None) -> int:
    """Entry point: ``ros2 run tensorguard_edge edge_node``."""
    return spin_node(EdgeNode, args, threads=2)


if __name__ == '__main__':
    sys.exit(main())
