"""The robot's TensorGuard node: a thin lifecycle shell around `EdgeClient`.

It translates topics, services and parameters into `EdgeClient` calls and nothing more:
- records demonstrations from the standard topics the robot already publishes, chosen by the
  ``inputs.*`` parameters (`tensorguard_edge.streams`, docs/robot-inputs.md), aligned by stamp
  (`tensorguard_edge.alignment`), with episode boundaries from its ``start_episode`` /
  ``end_episode`` services, each published as an ``EpisodeMarker`` on ``episode_markers`` (so
  rosbag2 records boundaries with the streams); completed episodes go to the crash-safe store,
  except ``autonomous`` ones (the policy node drove them: outcomes, not demonstrations), which
  are counted for the model version running at their start and reported in a signed
  ``OutcomeReport`` (`tensorguard_edge.outcomes`, docs/canary.md);
- on a signed ``RoundConfig`` trains and builds the encrypted update in a worker thread (so
  recording and status keep flowing) and publishes one ``EncryptedUpdate``;
- verifies and applies signed ``ModelUpdate``s;
- publishes ``RobotStatus`` and ``/diagnostics``, and counts every refused message by reason.

Lifecycle: configure checks the input mapping against the model's dimensions and opens the
identity key, store, ledger and model; activate starts recording and taking part in rounds;
deactivate stops both; cleanup closes everything. With ``autostart`` (default) the node walks
itself to active, like nav2's lifecycle manager does for its nodes.
"""
from __future__ import annotations

import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from tensorguard_crypto.refusal import Reason
from tensorguard_edge.alignment import EpisodeAligner
from tensorguard_edge.client import EdgeClient, EdgeSettings, ModelRefused, RoundRefused, create_client
from tensorguard_edge.outcomes import OutcomeCounter
from tensorguard_edge.robot_inputs import declare_input_parameters, stamp_ns, subscribe_sources, to_time
from tensorguard_edge.streams import MappingError, StreamError, StreamMapping
from tensorguard_learning.demonstrations import Demonstration
from tensorguard_msgs.msg import (
    EncryptedUpdate,
    EpisodeMarker,
    ModelUpdate,
    OutcomeReport,
    RejectionCount,
    RobotStatus,
    RoundConfig,
)
from tensorguard_msgs.srv import EndEpisode, StartEpisode
from tensorguard_ros import qos, topics
from tensorguard_ros.node_main import destroy_entities, enable_autostart, spin_node
from tensorguard_ros.package_transport import carry_package
from tensorguard_ros.params import declare_dataclass_parameters, follow_parameter_changes

EXPIRE_PERIOD_S = 0.5  # how often ended episodes past the aligner's settle timeout are emitted


@dataclass(frozen=True)
class _Running:
    """The episode between an accepted start_episode and its end_episode."""

    index: int
    task: str
    autonomous: bool
    model_version: int  # autonomous: the version the robot ran when the episode started (0 otherwise)


class EdgeNode(LifecycleNode):
    """Lifecycle node owning one robot's `EdgeClient`."""

    def __init__(self) -> None:
        super().__init__('edge_node')
        self.config: EdgeSettings = declare_dataclass_parameters(self, EdgeSettings)
        self.inputs = declare_input_parameters(self)
        self.status_period = self.declare_parameter(
            'status_period_s', 1.0, ParameterDescriptor(description='Seconds between RobotStatus messages.')).value
        self.client: EdgeClient | None = None
        self.mapping: StreamMapping | None = None
        self.aligner: EpisodeAligner | None = None
        self.outcomes: OutcomeCounter | None = None
        self.next_episode = 0
        self.running: _Running | None = None
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
            self.mapping = StreamMapping.from_parameters(self.inputs)
            self.mapping.check_dims(self.config.state_dim, self.config.action_dim)
        except MappingError as exc:
            self.get_logger().error(f'configure failed: inputs: {exc} (docs/robot-inputs.md)')
            return TransitionCallbackReturn.FAILURE
        try:
            self.client = create_client(self.config)
        except Exception as exc:  # noqa: BLE001 - any start-up failure is reported and refused.
            self.get_logger().error(f'configure failed: {type(exc).__name__}: {exc}')
            return TransitionCallbackReturn.FAILURE
        self.aligner = EpisodeAligner(self.mapping, self._store_episode, self.config.state_dim, self.config.action_dim)
        self.next_episode = self.client.status().episodes
        try:
            self.outcomes = OutcomeCounter(self.client.state_dir / 'outcomes.json', self.client.identity)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.get_logger().error(f'configure failed: outcome tally unreadable: {type(exc).__name__}: {exc}')
            return TransitionCallbackReturn.FAILURE
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix='round')
        self.update_pub = self.create_lifecycle_publisher(EncryptedUpdate, topics.ENCRYPTED_UPDATES, qos.UPDATES)
        self.status_pub = self.create_lifecycle_publisher(RobotStatus, 'status', qos.STATUS)
        self.diag_pub = self.create_lifecycle_publisher(DiagnosticArray, topics.DIAGNOSTICS, qos.DIAGNOSTICS)
        self.marker_pub = self.create_lifecycle_publisher(EpisodeMarker, topics.EPISODE_MARKERS, qos.EPISODE_MARKERS)
        self.outcome_pub = self.create_lifecycle_publisher(OutcomeReport, topics.OUTCOME_REPORTS, qos.UPDATES)
        self.publishers_ = [self.update_pub, self.status_pub, self.diag_pub, self.marker_pub, self.outcome_pub]
        self.get_logger().info(f'{self.config.robot_id}: configured, {self.client.status().episodes} episodes '
                               f'in store, model version {self.client.status().model_version}, recording '
                               f'{", ".join(self.mapping.observation)} -> {self.mapping.action}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers
        self.handles = [
            *subscribe_sources(self, self.mapping, self._on_sample, self._on_refused, qos.ROBOT_INPUTS),
            self.create_service(StartEpisode, topics.START_EPISODE, self._on_start_episode),
            self.create_service(EndEpisode, topics.END_EPISODE, self._on_end_episode),
            self.create_subscription(RoundConfig, topics.ROUND_CONFIG, self._on_round_config, qos.LATCHED),
            self.create_subscription(ModelUpdate, topics.MODEL_UPDATES, self._on_model_update, qos.LATCHED),
            self.create_timer(self.status_period, self._publish_status),
            self.create_timer(EXPIRE_PERIOD_S, self._expire),
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
        self.aligner, self.running = None, None

    # Recording.
    def _reject(self, reason: str, detail: str) -> None:
        with self.lock:
            self.rejections[reason] += 1
        self.get_logger().warning(f'refused ({reason}): {detail}')

    def _on_sample(self, source: str, stamp: int, values: np.ndarray) -> None:
        try:
            with self.lock:
                self.aligner.add(source, stamp, values)
        except StreamError as exc:
            self._on_refused(exc)

    def _on_refused(self, exc: StreamError) -> None:
        self._reject(exc.reason, str(exc))

    def _expire(self) -> None:
        with self.lock:
            self.aligner.expire()

    def _boundary(self, stamp: Time) -> int:
        """A request's boundary stamp in ns; zero means now."""
        return stamp_ns(stamp) or self.get_clock().now().nanoseconds

    def _on_start_episode(self, request: StartEpisode.Request, response: StartEpisode.Response):
        stamp = self._boundary(request.stamp)
        with self.lock:
            try:
                if self.running is not None:
                    raise StreamError(f'episode {self.running.index} is still running: end it first',
                                      reason=Reason.EPISODE_RUNNING)
                if not request.autonomous:  # a policy-driven episode is an outcome, not a demonstration
                    self.aligner.start(stamp, request.task, self.next_episode)
            except StreamError as exc:
                return self._refuse_marker(exc, response)
            version = self.client.status().model_version if request.autonomous else 0
            self.running = _Running(self.next_episode, request.task, request.autonomous, version)
            self.next_episode += 1
        self._publish_marker(EpisodeMarker.START, stamp, self.running, False)
        response.accepted, response.episode_index = True, self.running.index
        return response

    def _on_end_episode(self, request: EndEpisode.Request, response: EndEpisode.Response):
        stamp = self._boundary(request.stamp)
        with self.lock:
            episode = self.running
            try:
                if episode is None:
                    raise StreamError('no episode is running: call start_episode first', reason=Reason.NO_EPISODE)
                if not episode.autonomous:
                    response.frames = self.aligner.aligned_frames(self.aligner.running.start_ns, stamp)
                    self.aligner.end(stamp, request.success, episode.index)
            except StreamError as exc:
                return self._refuse_marker(exc, response)
            self.running = None
            report = self.outcomes.record(episode.model_version, request.success) if episode.autonomous else None
        self._publish_marker(EpisodeMarker.END, stamp, episode, request.success)
        if report is not None:
            msg = OutcomeReport(robot_id=report.robot_id, package=report.serialize())
            msg.header.stamp = self.get_clock().now().to_msg()
            self.outcome_pub.publish(msg)
        response.accepted, response.episode_index = True, episode.index
        return response

    def _refuse_marker(self, exc: StreamError, response):
        """Count a refused start/end and answer it with the reason."""
        self.rejections[exc.reason] += 1
        self.get_logger().warning(f'refused ({exc.reason}): {exc}')
        response.accepted, response.message = False, f'{exc.reason}: {exc}'
        return response

    def _publish_marker(self, kind: int, stamp: int, episode: _Running, success: bool) -> None:
        msg = EpisodeMarker(kind=kind, episode_index=episode.index, task=episode.task, success=success,
                            autonomous=episode.autonomous, model_version=episode.model_version)
        msg.header.stamp = to_time(stamp)
        msg.header.frame_id = self.config.robot_id
        self.marker_pub.publish(msg)

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
            self.update_pub.publish(carry_package(EncryptedUpdate(robot_id=update.robot_id, round_id=update.round_id),
                                                  blob, self.get_clock().now().to_msg()))
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
            counts = self.rejections + self.aligner.counts
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
                    KeyValue(key='rejected', value=str(sum(counts.values())))])]
        self.diag_pub.publish(diag)


def main(args: list[str] | None = None) -> int:
    """Entry point: ``ros2 run tensorguard_edge edge_node``."""
    return spin_node(EdgeNode, args, threads=2)


if __name__ == '__main__':
    sys.exit(main())
