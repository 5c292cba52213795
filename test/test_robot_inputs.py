"""Recording from standard messages over real DDS: the simulated arm (sim_robot) and the edge node in
their own processes; the store ends with exactly the scripted expert's demonstrations, the boundaries
are published as EpisodeMarker, and out-of-place episode calls are refused with a reason and counted;
a headerless source is stamped with its DDS source timestamp."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray

from tensorguard_edge.robot_inputs import subscribe_sources
from tensorguard_edge.streams import FLOAT64_ARRAY, JOINT_STATE, SourceSpec, StreamMapping
from tensorguard_learning.demonstrations import DemonstrationStore
from tensorguard_learning.metaworld_source import record_demonstrations
from tensorguard_msgs.msg import EpisodeMarker, RobotStatus
from tensorguard_msgs.srv import EndEpisode, StartEpisode
from tensorguard_ros import qos, topics
from tensorguard_sim.simulated_fleet import Processes, edge_node_parameters

sys.path.insert(0, str(Path(__file__).parent))
from test_fleet_integration import wait_for  # noqa: E402
from test_node_lifecycle import PARAMS, fleet  # noqa: E402, F401 - the provisioned one-robot fleet fixture

pytestmark = [pytest.mark.ros, pytest.mark.slow]

TASKS, SEED, EPISODES = ['push-v3', 'reach-v3'], 5, 3


class Watcher(Node):
    """The test's node: the robot's status and episode markers, and the episode services."""

    def __init__(self, context) -> None:
        super().__init__('test_watcher', namespace='/robot_1', context=context)
        self.status: RobotStatus | None = None
        self.markers: list[EpisodeMarker] = []
        self.create_subscription(RobotStatus, 'status', lambda msg: setattr(self, 'status', msg), qos.STATUS)
        self.create_subscription(EpisodeMarker, topics.EPISODE_MARKERS, self.markers.append, qos.EPISODE_MARKERS)
        self.start_episode = self.create_client(StartEpisode, topics.START_EPISODE)
        self.end_episode = self.create_client(EndEpisode, topics.END_EPISODE)

    def call(self, client, request):
        assert client.wait_for_service(timeout_sec=30), f'{client.srv_name} is not available'
        future = client.call_async(request)
        wait_for(future.done, 30, f'an answer from {client.srv_name}')
        return future.result()

    def rejections(self) -> dict[str, int]:
        return {r.reason: r.count for r in self.status.rejections} if self.status else {}


def test_edge_node_records_the_expert_from_the_arm_topics(fleet, tmp_path):  # noqa: F811
    paths, env = fleet
    robot_dir = paths.robot_dir('robot_1')
    procs = Processes(tmp_path, env)
    procs.start('edge', 'tensorguard_edge.edge_node', PARAMS, '/robot_1', edge_node_parameters(paths, 'robot_1'))
    procs.start('sim', 'tensorguard_sim.sim_robot', PARAMS, '/robot_1',
                {'robot_id': 'robot_1', 'tasks': TASKS, 'seed': SEED, 'max_episodes': EPISODES,
                 'episode_period_s': 0.5})
    # Configure refuses a mapping whose layout does not fit the model (39 values for a 40-dim model).
    procs.start('misfit', 'tensorguard_edge.edge_node', PARAMS, '/robot_2',
                {'robot_id': 'robot_2', 'state_dim': 40, 'state_dir': str(tmp_path / 'misfit')})
    expected = [(task, demos[0]) for i in range(EPISODES)
                for task in [TASKS[i % len(TASKS)]]
                for demos in [record_demonstrations(task, episodes=1, seed=SEED + i)] if demos]
    context = rclpy.Context()
    rclpy.init(context=context)
    watcher = Watcher(context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(watcher)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        wait_for(lambda: watcher.status is not None and watcher.status.episodes_buffered == len(expected)
                 and len(watcher.markers) == 2 * EPISODES, 90, 'the recorded episodes', procs)
        kinds = (EpisodeMarker.START, EpisodeMarker.END)
        assert [(m.kind, m.episode_index, m.task) for m in watcher.markers] == [
            (kind, i, TASKS[i % len(TASKS)]) for i in range(EPISODES) for kind in kinds]
        assert all(m.header.stamp.sec > 0 for m in watcher.markers)

        refused = watcher.call(watcher.end_episode, EndEpisode.Request(success=True))
        assert not refused.accepted and refused.message.startswith('no_episode')
        assert watcher.call(watcher.start_episode, StartEpisode.Request(task='push-v3')).accepted
        again = watcher.call(watcher.start_episode, StartEpisode.Request(task='push-v3'))
        assert not again.accepted and again.message.startswith('episode_running')
        assert watcher.call(watcher.end_episode, EndEpisode.Request(success=False)).accepted
        failed = 1 + EPISODES - len(expected)  # ours, and any episode the expert did not finish
        wait_for(lambda: {'no_episode': 1, 'episode_running': 1, 'episode_failed': failed}.items()
                 <= watcher.rejections().items(), 10, 'the refusals to be counted')
        assert 'frame_unaligned' not in watcher.rejections()
        misfit = (tmp_path / 'misfit.log').read_text()
        assert 'configure failed: inputs: the observation layout has 39 values but the model expects 40' in misfit
        assert procs.children['misfit'].poll() is None
    finally:
        executor.shutdown()
        watcher.destroy_node()
        rclpy.try_shutdown(context=context)
        procs.stop_all()
    with DemonstrationStore(robot_dir / 'state' / 'demos', 1 << 30) as store:
        stored = list(store.iter_episodes())
    assert [d.task for d in stored] == [task for task, _ in expected]
    for demo, (_task, demo_expected) in zip(stored, expected):
        np.testing.assert_array_equal(demo.observation_state, demo_expected.observation_state)
        np.testing.assert_array_equal(demo.action, demo_expected.action)
        np.testing.assert_allclose(demo.timestamp, np.arange(demo.num_frames) * 0.0125, atol=1e-6)


def test_a_headerless_source_is_stamped_with_its_dds_source_timestamp():
    """Float64MultiArray has no header: subscribe_sources stamps it with the writer's source time."""
    mapping = StreamMapping(sources=(SourceSpec('arm', 'joint_states', JOINT_STATE),
                                     SourceSpec('command', 'commands', FLOAT64_ARRAY)),
                            observation=('arm:position',), action='command:data')
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node('headerless', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    samples, refused = [], []
    subscribe_sources(node, mapping, lambda *sample: samples.append(sample), refused.append, qos.ROBOT_INPUTS)
    publisher = node.create_publisher(Float64MultiArray, 'commands', qos.ROBOT_INPUTS)
    try:
        deadline = time.monotonic() + 10
        while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        before = time.time_ns()
        publisher.publish(Float64MultiArray(data=[1.5, -2.0]))
        after = time.time_ns()
        while not samples and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert refused == [] and len(samples) == 1
        source, stamp, values = samples[0]
        assert source == 'command' and values.tolist() == [1.5, -2.0]
        assert before <= stamp <= after
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
