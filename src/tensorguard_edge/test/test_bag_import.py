"""Demonstrations from rosbag2 bags (MCAP and sqlite3) of real rclpy messages written with the `rosbags`
writer, imported with the operator command into a robot's store: 50 Hz streams with jittered stamps
give exactly the expected demonstrations (an unaligned frame, a failed and a policy-driven episode
dropped and counted); a wrong type, a missing topic and a corrupt bag are refused by name. That a bag
of the live simulated arm imports into what the live edge node stored is test/test_bag_import_dds.py."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import StoragePlugin
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from tensorguard_crypto.fleet import FleetPaths, enroll_robot, provision_server
from tensorguard_edge.bag_import import MARKER_TYPE
from tensorguard_edge.commands import EXIT_DATA, import_bag_command
from tensorguard_learning.demonstrations import DemonstrationStore
from tensorguard_msgs.msg import EpisodeMarker

sys.path.insert(0, str(Path(__file__).parent))
from bag_test_support import write_bag  # noqa: E402

pytestmark = pytest.mark.ros

PASSPHRASE = 'test passphrase, not a secret'
NAMESPACE = '/robot_1'
PERIOD_NS = 20_000_000  # 50 Hz
T0 = 1_700_000_000 * 10**9
JOINTS = ['j1', 'j2', 'j3']  # the arm publishes three joints; the mapping picks j3 then j1

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
