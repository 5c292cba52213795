"""The policy node in its own process over DDS, fed by this test: it waits for a human to enable it,
drives an autonomous episode within the envelope, stops within the watchdog's periods when the
observation goes stale (measured), resumes on fresh input, and stops again when disabled."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool

from tensorguard_learning.policy import MoEConfig, build_policy
from tensorguard_msgs.msg import EpisodeMarker, ModelUpdate, RobotStatus
from tensorguard_ros import qos, topics

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / 'test'))
from policy_test_support import SERVER, TASKS, signed_model  # noqa: E402
from test_node_lifecycle import LifecycleDriver, walk  # noqa: E402

pytestmark = [pytest.mark.ros]

RATE_HZ = 20.0
PERIOD = 1.0 / RATE_HZ
WATCHDOG_PERIODS = 2
LOW, HIGH, STEP, SAFE = [-0.5, -0.5], [0.5, 0.5], [0.2, 0.2], [0.0, 0.0]


def node_parameters(trust_path: Path) -> dict:
    """The node's parameter file: a 3-joint arm commanded through a forward command controller."""
    return {'/**': {'ros__parameters': {
        'robot_id': 'robot_1', 'trust_path': str(trust_path), 'control_rate_hz': RATE_HZ,
        'watchdog_periods': WATCHDOG_PERIODS, 'action_low': LOW, 'action_high': HIGH, 'max_action_step': STEP,
        'safe_action': SAFE, 'inputs.sources': ['arm', 'command'],
        'inputs.arm.topic': 'joint_states', 'inputs.arm.type': 'sensor_msgs/msg/JointState',
        'inputs.arm.joints': ['j1', 'j2', 'j3'],
        'inputs.command.topic': 'forward_command_controller/commands',
        'inputs.command.type': 'std_msgs/msg/Float64MultiArray',
        'inputs.observation': ['arm:position'], 'inputs.action': 'command:data'}}}


class RobotSide:
    """The test's node: the robot's joint states, the edge node's markers, the fleet's model, and a
    recorder of every command (with its arrival time)."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node('robot_side', namespace='/robot_1', context=self.context)
        self.joints = self.node.create_publisher(JointState, 'joint_states', qos.ROBOT_INPUTS)
        self.markers = self.node.create_publisher(EpisodeMarker, topics.EPISODE_MARKERS, qos.EPISODE_MARKERS)
        self.models = self.node.create_publisher(ModelUpdate, topics.MODEL_UPDATES, qos.LATCHED)
        self.enable_client = self.node.create_client(SetBool, 'policy_node/enable')
        self.commands: list[tuple[float, list[float]]] = []
        self.status: RobotStatus | None = None
        self.node.create_subscription(Float64MultiArray, 'forward_command_controller/commands',
                                      lambda m: self.commands.append((time.monotonic(), list(m.data))), qos.COMMANDS)
        self.node.create_subscription(RobotStatus, 'policy_status', self._on_status, qos.STATUS)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()
        self.publishing = threading.Event()
        self.last_observation = 0.0
        self.feeder = threading.Thread(target=self._feed, daemon=True)
        self.feeder.start()

    def _on_status(self, msg: RobotStatus) -> None:
        self.status = msg

    def _feed(self) -> None:
        """Joint states at 50 Hz while `publishing` is set."""
        t = 0
        while rclpy.ok(context=self.context):
            if self.publishing.is_set():
                msg = JointState(name=['j3', 'j1', 'j2'], position=[0.3 + 0.01 * np.sin(t / 10), 0.1, 0.2])
                msg.header.stamp = self.node.get_clock().now().to_msg()
                self.joints.publish(msg)
                self.last_observation = time.monotonic()
                t += 1
            time.sleep(0.02)

    def publish_model(self, blob: bytes, version: int) -> None:
        msg = ModelUpdate(model_version=version, parent_version=version - 1, rollout='deploy', package=blob)
        self.models.publish(msg)

    def start_episode(self) -> None:
        msg = EpisodeMarker(kind=EpisodeMarker.START, episode_index=0, task=TASKS[0], autonomous=True)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.markers.publish(msg)

    def enable(self, on: bool) -> SetBool.Response:
        assert self.enable_client.wait_for_service(timeout_sec=30.0), 'policy_node/enable is not served'
        done = threading.Event()
        future = self.enable_client.call_async(SetBool.Request(data=on))
        future.add_done_callback(lambda _f: done.set())
        assert done.wait(10.0), 'no answer from policy_node/enable'
        return future.result()

    def wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f'timed out waiting for {what}'
            time.sleep(0.01)

    def commands_after(self, t: float) -> list[tuple[float, list[float]]]:
        return [c for c in list(self.commands) if c[0] > t]

    def close(self) -> None:
        self.publishing.clear()
        self.executor.shutdown()
        self.spinner.join(timeout=10.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def start_node(tmp_path: Path, *arguments: str) -> tuple[subprocess.Popen, Path]:
    """The policy node in its own process as robot_1, trusting the test's server key."""
    trust = tmp_path / 'trust.json'
    server_key = {'role': 'server', 'public_key': SERVER.public_key_bytes().hex()}
    trust.write_text(json.dumps({'keys': {'server': server_key}}))
    params = tmp_path / 'policy.yaml'
    params.write_text(json.dumps(node_parameters(trust)))  # JSON is YAML
    log = tmp_path / 'policy_node.log'
    process = subprocess.Popen(
        [sys.executable, '-m', 'tensorguard_policy.policy_node', '--ros-args', '-r', '__ns:=/robot_1',
         '--params-file', str(params), *arguments], stdout=log.open('w'), stderr=subprocess.STDOUT,
        env={**os.environ, 'OMP_NUM_THREADS': '1'})
    return process, log


def test_policy_node_lifecycle(tmp_path):
    process, log = start_node(tmp_path, '-p', 'autostart:=false')
    walk(process, LifecycleDriver('/robot_1/policy_node'),
         {'/robot_1/policy_node/enable', topics.MODEL_UPDATES, f'/robot_1/{topics.EPISODE_MARKERS}',
          '/robot_1/joint_states'}, log)


def test_enable_watchdog_and_disable_over_dds(tmp_path):
    process, log = start_node(tmp_path)
    robot = RobotSide()
    try:
        policy = build_policy(MoEConfig(tasks=TASKS, obs_dim=3, action_dim=2, expert_hidden=16, base_hidden=32,
                                        feature_dim=32, num_experts=2, top_k=1))
        robot.publish_model(signed_model(1, policy=policy), 1)
        robot.wait(lambda: robot.status is not None and robot.status.model_version == 1, 60, 'model 1 running')
        robot.publishing.set()
        robot.start_episode()
        time.sleep(1.0)
        assert robot.commands == [] and robot.status.activity == 'disabled'  # a human must enable it first

        assert robot.enable(True).success
        robot.wait(lambda: len(robot.commands) >= 40, 20, '40 commands')
        driving = np.array([c for _, c in robot.commands])
        assert np.all(driving >= LOW) and np.all(driving <= HIGH)
        # Rate limit from the previous command (the safe action at the start and after a stop, e.g. a
        # watchdog stop when this loaded machine delays the joint states by more than 2 periods).
        steps = np.abs(np.diff(np.vstack([SAFE, driving]), axis=0))
        assert np.all(steps <= np.array(STEP) + 1e-12)
        assert np.any(driving != SAFE)
        # The control rate from the median gap between arrivals: a loaded CI machine stalls this test's
        # feeder and the delivery now and then (seen: 10.9 Hz as a mean over 20 commands), which the
        # median ignores; a timer at the wrong rate moves it.
        gaps = np.diff([t for t, _ in robot.commands])
        rate = 1.0 / float(np.median(gaps))
        assert 0.7 * RATE_HZ < rate < 1.3 * RATE_HZ, (rate, gaps.round(3).tolist())

        # The watchdog: observations stop; commands stop with one safe action.
        robot.publishing.clear()
        time.sleep(0.05)
        stale_from = robot.last_observation
        robot.wait(lambda: any(c == SAFE for _, c in robot.commands_after(stale_from)), 5, 'the safe action')
        time.sleep(0.5)
        after = robot.commands_after(stale_from)
        safe_at = next(t for t, c in after if c == SAFE)
        driven_after = [t for t, c in after if c != SAFE]
        last_driven = max(driven_after, default=stale_from) - stale_from
        print(f'watchdog: last observation -> safe action {1000 * (safe_at - stale_from):.1f} ms '
              f'({(safe_at - stale_from) / PERIOD:.2f} control periods); {len(driven_after)} commands '
              f'after the last observation, the last {1000 * last_driven:.1f} ms after it')
        # Commands stop within 2 periods of the last observation (plus its delivery on this loaded machine) ...
        assert last_driven <= WATCHDOG_PERIODS * PERIOD + 0.05
        assert all(t < safe_at for t in driven_after) and [c for _, c in after].count(SAFE) == 1
        # ... and the safe action follows at the next control tick.
        assert safe_at - stale_from <= (WATCHDOG_PERIODS + 1) * PERIOD + 0.1
        robot.wait(lambda: robot.status.activity == 'stale_observation', 5, 'status stale_observation')

        # Fresh observations: it drives again; disabled: one safe action, then nothing.
        robot.publishing.set()
        resumed = time.monotonic()
        robot.wait(lambda: len([c for _, c in robot.commands_after(resumed) if c != SAFE]) >= 5, 10, 'resumed')
        disabled = time.monotonic()
        assert robot.enable(False).success
        time.sleep(0.5)
        tail = [c for _, c in robot.commands_after(disabled)]
        assert tail[-1] == SAFE and tail.count(SAFE) == 1  # one safe action, then nothing
        robot.wait(lambda: robot.status.activity == 'disabled', 5, 'status disabled')
        assert process.poll() is None, log.read_text()
    finally:
        robot.close()
        process.terminate()
        process.wait(timeout=20)
