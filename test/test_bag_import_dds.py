"""A bag recorded from a live robot imports into what its edge node stored: the simulated arm and an
edge node run in their own processes over DDS; the test records, like `ros2 bag record`, the raw CDR
of every mapped topic and the episode markers, writes MCAP and sqlite3 bags with the `rosbags` writer
and imports each with `tensorguard robot-import-bag` into a fresh store (docs/datasets.md)."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import StoragePlugin

from tensorguard_edge.bag_import import MARKER_TYPE
from tensorguard_edge.commands import import_bag_command
from tensorguard_edge.robot_inputs import message_class
from tensorguard_edge.streams import StreamMapping
from tensorguard_learning.demonstrations import DemonstrationStore
from tensorguard_msgs.msg import EpisodeMarker, RobotStatus
from tensorguard_ros import qos, topics
from tensorguard_ros.params import parameters_from_file
from tensorguard_sim.simulated_fleet import Processes

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src' / 'tensorguard_edge' / 'test'))
from bag_test_support import write_bag  # noqa: E402
from test_fleet_integration import wait_for  # noqa: E402
from test_node_lifecycle import fleet  # noqa: E402, F401 - the provisioned one-robot fleet fixture

pytestmark = [pytest.mark.ros, pytest.mark.slow]

NAMESPACE = '/robot_1'
FLEET_CONFIG = Path(__file__).resolve().parents[1] / 'config' / 'fleet.yaml'
LIVE_EPISODES = 3


class BagRecorder(Node):
    """The test's rosbag2 recorder: raw serialized messages of every topic of the robot's mapping and
    its episode markers, with their receive time (what `ros2 bag record` stores as log time)."""

    def __init__(self, mapping: StreamMapping, context: rclpy.Context) -> None:
        super().__init__('test_bag_recorder', context=context)
        self.lock = threading.Lock()
        self.messages: list[tuple[str, int, bytes]] = []
        self.types = {f'{NAMESPACE}/{topics.EPISODE_MARKERS}': MARKER_TYPE}
        self.marker_subscription = self.create_subscription(
            EpisodeMarker, self._topic(topics.EPISODE_MARKERS, MARKER_TYPE),
            self._on(f'{NAMESPACE}/{topics.EPISODE_MARKERS}'), qos.EPISODE_MARKERS, raw=True)
        for spec in map(mapping.source, mapping.used_sources):
            topic = self._topic(spec.topic, spec.type)
            self.create_subscription(message_class(spec.type), topic, self._on(topic), qos.ROBOT_INPUTS, raw=True)
        self.status: RobotStatus | None = None
        self.create_subscription(RobotStatus, f'{NAMESPACE}/status', self._on_status, qos.STATUS)

    def _topic(self, relative: str, type_name: str) -> str:
        topic = f'{NAMESPACE}/{relative}'
        self.types[topic] = type_name
        return topic

    def _on(self, topic: str):
        def record(raw: bytes, info) -> None:
            with self.lock:
                self.messages.append((topic, int(info['received_timestamp']), raw))
        return record

    def _on_status(self, msg: RobotStatus) -> None:
        self.status = msg

    def markers(self) -> list[EpisodeMarker]:
        """The episode markers recorded so far."""
        with self.lock:
            return [deserialize_message(raw, EpisodeMarker) for topic, _, raw in self.messages
                    if topic.endswith(topics.EPISODE_MARKERS)]


def test_a_bag_of_the_live_arm_imports_into_what_the_live_edge_node_stored(fleet, tmp_path, monkeypatch,  # noqa: F811
                                                                         capsys):
    paths, env = fleet
    robot = paths.robot_dir('robot_1')
    monkeypatch.setenv('TENSORGUARD_KEY_PASSPHRASE', env['TENSORGUARD_KEY_PASSPHRASE'])
    # The robot's own parameter file: the fleet's (its inputs.* map the simulated arm) and its identity.
    params = tmp_path / 'robot.yaml'
    params.write_text(FLEET_CONFIG.read_text() + f"""
{NAMESPACE}/edge_node:
  ros__parameters:
    robot_id: robot_1
    key_path: {robot / 'identity.key'}
    trust_path: {robot / 'trust.json'}
    state_dir: {tmp_path / 'live'}
{NAMESPACE}/sim_robot:
  ros__parameters:
    tasks: [push-v3, reach-v3]
    max_episodes: {LIVE_EPISODES}
    episode_period_s: 2.5
""")
    mapping = StreamMapping.from_parameters(parameters_from_file(params, f'{NAMESPACE}/edge_node'))
    context = rclpy.Context()
    rclpy.init(context=context)
    recorder = BagRecorder(mapping, context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(recorder)
    threading.Thread(target=executor.spin, daemon=True).start()
    procs = Processes(tmp_path, env)
    try:
        procs.start('edge', 'tensorguard_edge.edge_node', params, NAMESPACE)
        # The recorder must hear all of the first episode, as a `ros2 bag record` started before the robot
        # would: the arm starts once the edge node's marker writer is matched, and its first episode comes
        # episode_period_s after it started, time for the recorder to match the arm's topics too.
        wait_for(lambda: recorder.marker_subscription.get_publisher_count() > 0, 60,
                 'the edge node to publish episode markers', procs)
        procs.start('sim', 'tensorguard_sim.sim_robot', params, NAMESPACE)
        ends = lambda: [m for m in recorder.markers() if m.kind == EpisodeMarker.END]  # noqa: E731
        wait_for(lambda: len(ends()) == LIVE_EPISODES, 120, f'{LIVE_EPISODES} episodes', procs)
        starts = [m.episode_index for m in recorder.markers() if m.kind == EpisodeMarker.START]
        assert starts == [m.episode_index for m in ends()], 'the recorder missed a marker'
        stored = sum(m.success and not m.autonomous for m in ends())
        wait_for(lambda: recorder.status is not None and recorder.status.episodes_buffered == stored, 30,
                 f'the edge node to store {stored} episodes', procs)
    finally:
        executor.shutdown()
        recorder.destroy_node()
        rclpy.try_shutdown(context=context)
        procs.stop_all()
    with DemonstrationStore(tmp_path / 'live' / 'demos', 1 << 30) as store:
        live = list(store.iter_episodes())
    assert len(live) == stored >= 1
    for plugin in (StoragePlugin.MCAP, StoragePlugin.SQLITE3):
        bag = tmp_path / f'bag-{plugin.name.lower()}'
        write_bag(bag, plugin, recorder.messages, recorder.types)
        state = tmp_path / f'imported-{plugin.name.lower()}'
        assert import_bag_command([str(bag), '--params', str(params), '--namespace', NAMESPACE,
                                   '--state-dir', str(state), '--quiet']) == 0, capsys.readouterr().err
        with DemonstrationStore(state / 'demos', 1 << 30) as store:
            imported = list(store.iter_episodes())
        assert [(d.task, d.num_frames) for d in imported] == [(d.task, d.num_frames) for d in live], \
            capsys.readouterr().out
        for got, want in zip(imported, live):
            for name in ('observation_state', 'action', 'timestamp'):
                assert getattr(got, name).tobytes() == getattr(want, name).tobytes(), f'{plugin.name}: {name}'
