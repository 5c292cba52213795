"""Demonstrations from rosbag2 bags (MCAP and sqlite3) written with the `rosbags` writer, imported with
the operator command into a robot's store: a bag recorded by the test from the simulated arm and the
live edge node (real processes over DDS) imports into the same demonstrations the edge node stored;
synthetic bags of real rclpy messages check alignment, drops and skips; refusals name the problem."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rclpy
from ament_index_python.packages import get_package_share_directory
from builtin_interfaces.msg import Time
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from tensorguard_crypto.fleet import FleetPaths, enroll_robot, provision_server
from tensorguard_edge.commands import EXIT_DATA, import_bag_command
from tensorguard_edge.robot_inputs import message_class
from tensorguard_edge.streams import StreamMapping
from tensorguard_learning.demonstrations import DemonstrationStore
from tensorguard_msgs.msg import EpisodeMarker, RobotStatus
from tensorguard_ros import qos, topics
from tensorguard_ros.params import parameters_from_file
from tensorguard_sim.simulated_fleet import Processes

pytestmark = pytest.mark.ros

PASSPHRASE = 'test passphrase, not a secret'
NAMESPACE = '/robot_1'
PERIOD_NS = 20_000_000  # 50 Hz
T0 = 1_700_000_000 * 10**9
JOINTS = ['j1', 'j2', 'j3']  # the arm publishes three joints; the mapping picks j3 then j1
MARKER_TYPE = 'tensorguard_msgs/msg/EpisodeMarker'

PARAMS = """
/**/edge_node:
  ros__parameters:
    robot_id: robot_1
    key_path: {robot}/identity.key
    trust_path: {robot}/trust.json
    state_dir: {state}
    state_dim: 6
    action_dim: 2
    inputs:
      sources: [arm, command]
      arm: {{topic: joint_states, type: sensor_msgs/msg/JointState, joints: [j3, j1]}}
      command: {{topic: forward_position_controller/commands, type: std_msgs/msg/Float64MultiArray}}
      observation: ['arm:position', 'arm:velocity', 'arm:position@prev']
      action: 'command:data'
      tolerance_s: 0.005
"""


def _time(ns: int) -> Time:
    return Time(sec=ns // 10**9, nanosec=ns % 10**9)


@dataclass
class Episode:
    """Frames [first, last) of the 50 Hz stream, and how the episode ends."""

    index: int
    task: str
    first: int
    last: int
    success: bool = True
    autonomous: bool = False


EPISODES = [Episode(0, 'push-v3', 5, 25), Episode(1, 'reach-v3', 30, 42, success=False),
            Episode(2, 'reach-v3', 45, 70), Episode(3, 'push-v3', 75, 90, autonomous=True),
            Episode(4, 'push-v3', 92, 110)]
FRAMES = 115
UNALIGNED = 50  # the command of this frame comes 9 ms late: past the 5 ms tolerance


def _arm(i: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Stamp (jittered by up to 2 ms), positions and velocities of the three joints at frame i."""
    stamp = T0 + i * PERIOD_NS + (i * 7919 % 4001 - 2000) * 1000
    return stamp, np.array([np.sin(i / 7), 0.1 * i, np.float32(1 / 3) * i]), np.array([i, -i, 2.5 * i], float)


def _command(i: int) -> np.ndarray:
    return np.array([np.cos(i / 5), 1e-3 * i])


def _command_time(i: int) -> int:
    return _arm(i)[0] + (9_000_000 if i == UNALIGNED else 1_000_000)


def _messages() -> list[tuple[str, int, bytes]]:
    """(topic, log time, serialized message) of the recording, as the robot's drivers and edge node
    publish them."""
    out = []
    for i in range(FRAMES):
        stamp, position, velocity = _arm(i)
        msg = JointState(name=JOINTS, position=position.tolist(), velocity=velocity.tolist(), effort=[0.0] * 3)
        msg.header.stamp = _time(stamp)
        out.append((f'{NAMESPACE}/joint_states', stamp + 300_000, msg))
        out.append((f'{NAMESPACE}/forward_position_controller/commands', _command_time(i),
                    Float64MultiArray(data=_command(i).tolist())))
    for ep in EPISODES:
        for kind, frame in ((EpisodeMarker.START, ep.first), (EpisodeMarker.END, ep.last)):
            boundary = T0 + frame * PERIOD_NS - PERIOD_NS // 2
            marker = EpisodeMarker(kind=kind, episode_index=ep.index, task=ep.task, success=ep.success,
                                   autonomous=ep.autonomous, model_version=3 if ep.autonomous else 0)
            marker.header.stamp = _time(boundary)
            out.append((f'{NAMESPACE}/episode_markers', boundary + 50_000, marker))
    return [(topic, log_time, serialize_message(msg)) for topic, log_time, msg in sorted(out, key=lambda m: m[1])]


def _expected() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """What live recording keeps: successful demonstration episodes, frames aligned within tolerance."""
    out = []
    for ep in EPISODES:
        if not ep.success or ep.autonomous:
            continue
        frames = [i for i in range(ep.first, ep.last) if i != UNALIGNED]
        picked = [(_arm(i)[1][[2, 0]], _arm(i)[2][[2, 0]]) for i in frames]
        state = [np.concatenate([pos, vel, picked[max(k - 1, 0)][0]]) for k, (pos, vel) in enumerate(picked)]
        out.append((ep.task, np.array(state, np.float32), np.array([_command(i) for i in frames], np.float32)))
    return out


TYPES = {f'{NAMESPACE}/joint_states': 'sensor_msgs/msg/JointState',
         f'{NAMESPACE}/forward_position_controller/commands': 'std_msgs/msg/Float64MultiArray',
         f'{NAMESPACE}/episode_markers': MARKER_TYPE}


def write_bag(path: Path, plugin: StoragePlugin, messages: list[tuple[str, int, bytes]],
              types: dict[str, str]) -> None:
    """A rosbag2 bag of serialized messages (topic, log time, CDR bytes), written with the rosbags writer."""
    typestore = get_typestore(Stores.ROS2_KILTED)
    msg_file = Path(get_package_share_directory('tensorguard_msgs')) / 'msg' / 'EpisodeMarker.msg'
    typestore.register(get_types_from_msg(msg_file.read_text(), MARKER_TYPE))
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connections = {topic: writer.add_connection(topic, type_name, typestore=typestore)
                       for topic, type_name in types.items()}
        for topic, log_time, raw in sorted(messages, key=lambda m: m[1]):
            writer.write(connections[topic], log_time, raw)


@pytest.fixture(scope='module')
def robot(tmp_path_factory):
    """An enrolled robot's directory (identity key, trust file)."""
    paths = FleetPaths(tmp_path_factory.mktemp('fleet') / 'fleet')
    provision_server(paths, PASSPHRASE.encode())
    enroll_robot(paths, 'robot_1', PASSPHRASE.encode())
    return paths.robot_dir('robot_1')


def _params(tmp_path: Path, robot: Path) -> Path:
    path = tmp_path / 'robot.yaml'
    path.write_text(PARAMS.format(robot=robot, state=tmp_path / 'state'))
    return path


def _stored(state_dir: Path):
    with DemonstrationStore(state_dir / 'demos', 1 << 30) as store:
        return list(store.iter_episodes())


@pytest.mark.parametrize('plugin', [StoragePlugin.MCAP, StoragePlugin.SQLITE3], ids=['mcap', 'sqlite3'])
def test_a_bag_imports_into_the_expected_demonstrations(plugin, robot, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('TENSORGUARD_KEY_PASSPHRASE', PASSPHRASE)
    write_bag(tmp_path / 'bag', plugin, _messages(), TYPES)
    assert import_bag_command([str(tmp_path / 'bag'), '--params', str(_params(tmp_path, robot)),
                               '--namespace', NAMESPACE]) == 0
    out = capsys.readouterr()
    expected = _expected()
    frames = sum(len(state) for _, state, _ in expected)
    assert f'imported 3 episodes ({frames} frames) from 1 bag(s), {len(_messages())} messages read' in out.out
    assert 'policy-driven episodes skipped: 1' in out.out
    assert 'dropped: episode_failed x1, frame_unaligned x1' in out.out
    assert f'{len(_messages())}/{len(_messages())}' in out.err  # tqdm's progress bar
    stored = _stored(tmp_path / 'state')
    assert [(d.task, d.num_frames) for d in stored] == [(task, len(state)) for task, state, _ in expected]
    for demo, (_task, state, action) in zip(stored, expected):
        assert demo.observation_state.tobytes() == state.tobytes()
        assert demo.action.tobytes() == action.tobytes()
        assert demo.timestamp[0] == 0.0 and np.all(np.diff(demo.timestamp) > 0.015)


def _run_refused(tmp_path: Path, robot: Path, capsys, monkeypatch) -> str:
    monkeypatch.setenv('TENSORGUARD_KEY_PASSPHRASE', PASSPHRASE)
    code = import_bag_command([str(tmp_path / 'bag'), '--params', str(_params(tmp_path, robot)),
                               '--namespace', NAMESPACE, '--quiet'])
    assert code == EXIT_DATA
    assert not (tmp_path / 'state' / 'demos' / 'demos.tgd').exists() or _stored(tmp_path / 'state') == []
    return capsys.readouterr().err


FLEET_CONFIG = Path(__file__).resolve().parents[3] / 'config' / 'fleet.yaml'
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


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
        time.sleep(0.2)


@pytest.mark.slow
def test_a_bag_of_the_live_arm_imports_into_what_the_live_edge_node_stored(robot, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('TENSORGUARD_KEY_PASSPHRASE', PASSPHRASE)
    params = tmp_path / 'robot.yaml'
    params.write_text(FLEET_CONFIG.read_text() + f"""
{NAMESPACE}/edge_node:
  ros__parameters:
    robot_id: robot_1
    key_path: {robot}/identity.key
    trust_path: {robot}/trust.json
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
    (tmp_path / 'logs').mkdir()
    procs = Processes(tmp_path / 'logs', {**os.environ, 'OMP_NUM_THREADS': '1'})
    try:
        procs.start('edge', 'tensorguard_edge.edge_node', params, NAMESPACE)
        # The recorder must hear all of the first episode, as a `ros2 bag record` started before the robot
        # would: the arm starts once the edge node's marker writer is matched, and its first episode comes
        # episode_period_s after it started, time for the recorder to match the arm's topics too.
        _wait_for(lambda: recorder.marker_subscription.get_publisher_count() > 0 or procs.dead(), 60,
                  'the edge node to publish episode markers')
        procs.start('sim', 'tensorguard_sim.sim_robot', params, NAMESPACE)
        ends = lambda: [m for m in recorder.markers() if m.kind == EpisodeMarker.END]  # noqa: E731
        _wait_for(lambda: len(ends()) == LIVE_EPISODES or procs.dead(), 120, f'{LIVE_EPISODES} episodes')
        assert not procs.dead(), f'{procs.dead()} exited: see {tmp_path / "logs"}'
        starts = [m.episode_index for m in recorder.markers() if m.kind == EpisodeMarker.START]
        assert starts == [m.episode_index for m in ends()], 'the recorder missed a marker'
        stored = sum(m.success and not m.autonomous for m in ends())
        _wait_for(lambda: recorder.status is not None and recorder.status.episodes_buffered == stored, 30,
                  f'the edge node to store {stored} episodes')
    finally:
        procs.stop_all()
        executor.shutdown()
        recorder.destroy_node()
        context.try_shutdown()
    live = _stored(tmp_path / 'live')
    assert len(live) == stored >= 1
    for plugin in (StoragePlugin.MCAP, StoragePlugin.SQLITE3):
        bag = tmp_path / f'bag-{plugin.name.lower()}'
        write_bag(bag, plugin, recorder.messages, recorder.types)
        state = tmp_path / f'imported-{plugin.name.lower()}'
        assert import_bag_command([str(bag), '--params', str(params), '--namespace', NAMESPACE,
                                   '--state-dir', str(state), '--quiet']) == 0, capsys.readouterr().err
        imported = _stored(state)
        assert [(d.task, d.num_frames) for d in imported] == [(d.task, d.num_frames) for d in live], \
            capsys.readouterr().out
        for got, want in zip(imported, live):
            for name in ('observation_state', 'action', 'timestamp'):
                assert getattr(got, name).tobytes() == getattr(want, name).tobytes(), f'{plugin.name}: {name}'


def test_a_topic_of_another_type_is_refused_by_name(robot, tmp_path, monkeypatch, capsys):
    wrong = dict(TYPES, **{f'{NAMESPACE}/forward_position_controller/commands': 'sensor_msgs/msg/JointState'})
    joints = serialize_message(JointState(name=['a', 'b'], position=[1.0, 2.0]))
    messages = [(topic, t, joints if 'commands' in topic else raw) for topic, t, raw in _messages()]
    write_bag(tmp_path / 'bag', StoragePlugin.MCAP, messages, wrong)
    err = _run_refused(tmp_path, robot, capsys, monkeypatch)
    assert ('topic /robot_1/forward_position_controller/commands is sensor_msgs/msg/JointState in the bag, but '
            'the mapping reads it as std_msgs/msg/Float64MultiArray') in err


def test_a_missing_topic_is_refused_by_name(robot, tmp_path, monkeypatch, capsys):
    write_bag(tmp_path / 'bag', StoragePlugin.SQLITE3,
              [m for m in _messages() if not m[0].endswith('episode_markers')],
              {k: v for k, v in TYPES.items() if not k.endswith('episode_markers')})
    err = _run_refused(tmp_path, robot, capsys, monkeypatch)
    assert 'the bag has no topic /robot_1/episode_markers' in err


@pytest.mark.parametrize('plugin', [StoragePlugin.MCAP, StoragePlugin.SQLITE3], ids=['mcap', 'sqlite3'])
def test_a_corrupt_bag_is_refused_and_nothing_is_stored(plugin, robot, tmp_path, monkeypatch, capsys):
    write_bag(tmp_path / 'bag', plugin, _messages(), TYPES)
    data_file = next(p for p in (tmp_path / 'bag').iterdir() if p.suffix in ('.mcap', '.db3'))
    blob = bytearray(data_file.read_bytes())
    middle = len(blob) // 2
    blob[middle:middle + 4096] = bytes(range(256)) * 16
    data_file.write_bytes(bytes(blob))
    err = _run_refused(tmp_path, robot, capsys, monkeypatch)
    assert err.startswith('error: ') and str(tmp_path / 'bag') in err
    assert 'corrupt' in err or 'not a readable rosbag2 bag' in err or 'does not deserialize' in err
