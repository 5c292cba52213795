"""A simulated robot: a Meta-World arm driven by its scripted expert (the "teleoperator") or by the
fleet's model through the robot's policy node.

It publishes what a real arm's drivers and teleoperation stack would, on standard messages (relative
topics, so the robot namespace applies; `ARM_TOPICS`): the hand pose (``geometry_msgs/PoseStamped``;
Meta-World gives no hand orientation, so it is the identity), the gripper opening
(``sensor_msgs/JointState``, joint ``gripper``), the two object poses (``PoseStamped``, the
quaternion as Meta-World gives it), the goal (``geometry_msgs/PointStamped``) and the commanded
action (``trajectory_msgs/JointTrajectory`` over joints ``x, y, z, grip``). Every message of frame
i is stamped ``start + i * 12.5 ms`` (Meta-World's 80 Hz control step) on a simulated clock that
never runs backwards. Episode boundaries and success go through the edge node's ``start_episode``
/ ``end_episode`` services, called asynchronously (the end only once the start is accepted). The
edge node's mapping in config/fleet.yaml rebuilds Meta-World's 39-dim observation from these
sources (docs/robot-inputs.md). Simulator seeds are public (they pick goal positions), never secrets:
episode n of a robot (expert or autonomous) uses seed ``seed + n``.

Autonomous episodes (``autonomous_every`` N > 0): after every N expert episodes the arm runs one
episode driven by the policy node. The sim acts as the robot's operator: it enables the policy
node (``policy_node/enable``) once, calls ``start_episode`` with ``autonomous`` set, then steps the
simulator once per command received on the command topic, publishing each new state stamped with
the node's clock (the policy node's watchdog compares stamps with its own clock). The episode ends
as the server's evaluation ends one (`metaworld_source.rollout_success`): at the task's success or
after ``MAX_EPISODE_STEPS`` steps, and then ``end_episode`` reports the outcome. When no command
comes for ``autonomous_timeout_s`` (policy disabled, no model yet) the episode ends as a failure.
Until the policy's first command, and whenever commands pause, the unchanged state is published
again every ``state_period_s``, as an arm's drivers keep publishing.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import PointStamped, PoseStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from tensorguard_crypto.refusal import Reason
from tensorguard_edge.robot_inputs import to_time
from tensorguard_learning.metaworld_source import MAX_EPISODE_STEPS, record_demonstrations, reset_env, task_env
from tensorguard_msgs.srv import EndEpisode, StartEpisode
from tensorguard_ros import qos, topics
from tensorguard_ros.node_main import spin_node

STEP_NS = 12_500_000  # Meta-World's control step (80 Hz)
ARM_TOPICS = {'ee_pose': 'ee_pose', 'gripper': 'joint_states', 'object_pose': 'object_pose',
              'object2_pose': 'object2_pose', 'goal': 'goal', 'command': 'arm_controller/joint_trajectory'}
ACTION_JOINTS = ['x', 'y', 'z', 'grip']
FRAME_ID = 'world'


def _pose(position: np.ndarray, orientation: np.ndarray, stamp) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = stamp, FRAME_ID
    p, q = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z = (float(v) for v in position)
    q.x, q.y, q.z, q.w = (float(v) for v in orientation)
    return msg


def arm_messages(state: np.ndarray, action: np.ndarray | None, stamp_ns: int) -> dict[str, object]:
    """One Meta-World frame (39-dim observation, 4-dim action) as the arm's messages, by source name;
    without `action` (the policy node commands) there is no ``command`` message."""
    stamp = to_time(stamp_ns)
    gripper = JointState(name=['gripper'], position=[float(state[3])])
    gripper.header.stamp = stamp
    goal = PointStamped()
    goal.header.stamp, goal.header.frame_id = stamp, FRAME_ID
    goal.point.x, goal.point.y, goal.point.z = (float(v) for v in state[36:39])
    messages = {'ee_pose': _pose(state[0:3], [0.0, 0.0, 0.0, 1.0], stamp), 'gripper': gripper,
                'object_pose': _pose(state[4:7], state[7:11], stamp),
                'object2_pose': _pose(state[11:14], state[14:18], stamp), 'goal': goal}
    if action is not None:
        command = JointTrajectory(joint_names=ACTION_JOINTS,
                                  points=[JointTrajectoryPoint(positions=[float(v) for v in action])])
        command.header.stamp = stamp
        messages['command'] = command
    return messages


def command_action(msg: JointTrajectory) -> np.ndarray:
    """The 4-dim Meta-World action a command carries (joints in any order), clipped to [-1, 1] as the
    server's evaluation clips; ValueError names what is wrong with a malformed command."""
    if sorted(msg.joint_names) != sorted(ACTION_JOINTS):
        raise ValueError(f'command joints {list(msg.joint_names)} are not {ACTION_JOINTS}')
    if len(msg.points) != 1 or len(msg.points[0].positions) != len(ACTION_JOINTS):
        raise ValueError(f'a command needs one point with {len(ACTION_JOINTS)} positions')
    by_joint = dict(zip(msg.joint_names, msg.points[0].positions))
    action = np.array([by_joint[j] for j in ACTION_JOINTS], dtype=np.float64)
    if not np.all(np.isfinite(action)):
        raise ValueError(f'command {action.tolist()} is not finite')
    return np.clip(action, -1.0, 1.0)


@dataclass
class AutonomousEpisode:
    """The policy-driven episode running: its simulator, newest state and progress."""

    index: int
    task: str
    env: object
    state: np.ndarray
    last_command_ns: int
    steps: int = 0
    commanded: bool = False  # a command arrived since the last keep-alive check


class SimRobot(Node):
    """Records scripted-expert episodes of its tasks on a timer and publishes them as an arm would."""

    def __init__(self) -> None:
        super().__init__('sim_robot')
        self.robot_id = self.declare_parameter(
            'robot_id', 'robot_1', ParameterDescriptor(description='Robot identity (its namespace).')).value
        self.tasks = list(self.declare_parameter(
            'tasks', ['push-v3'], ParameterDescriptor(
                description='Meta-World v3 tasks this robot performs (non-IID across the fleet).')).value)
        self.seed = int(self.declare_parameter(
            'seed', 0, ParameterDescriptor(description='Public simulator seed of the first episode.')).value)
        period = float(self.declare_parameter(
            'episode_period_s', 2.0, ParameterDescriptor(description='Seconds between recorded episodes.')).value)
        self.max_episodes = int(self.declare_parameter(
            'max_episodes', 0, ParameterDescriptor(
                description='Stop after this many episodes, expert and autonomous (0: never).')).value)
        self.autonomous_every = int(self.declare_parameter(
            'autonomous_every', 0, ParameterDescriptor(
                description='After every N expert episodes run one driven by the policy node (0: never).')).value)
        self.autonomous_timeout_s = float(self.declare_parameter(
            'autonomous_timeout_s', 5.0, ParameterDescriptor(
                description='End an autonomous episode as a failure when no command came for this long.')).value)
        state_period = float(self.declare_parameter(
            'state_period_s', 0.05, ParameterDescriptor(
                description='In an autonomous episode, publish the unchanged state again when no command '
                            'came for this long.')).value)
        if not self.tasks:
            raise ValueError('tasks must name at least one Meta-World task')

        probe = arm_messages(np.zeros(39), np.zeros(4), 0)
        self.pubs = {name: self.create_publisher(type(probe[name]), topic, qos.ROBOT_INPUTS)
                     for name, topic in ARM_TOPICS.items()}
        self.start_client = self.create_client(StartEpisode, topics.START_EPISODE)
        self.end_client = self.create_client(EndEpisode, topics.END_EPISODE)
        self.clock_ns = 0  # stamp of the newest frame published (the simulated clock runs ahead of now)
        self.episodes_done = 0
        self.experts_since_autonomous = 0
        self.busy = False  # an episode runs or its boundaries are being marked
        self.autonomous: AutonomousEpisode | None = None
        self.refusals: Counter[str] = Counter()
        self.timer = self.create_timer(period, self.record_one)
        if self.autonomous_every:
            self.enable_client = self.create_client(SetBool, 'policy_node/enable')
            self.enabling = False  # the enable request is sent or answered
            self.create_subscription(JointTrajectory, ARM_TOPICS['command'], self._on_command, qos.COMMANDS)
            self.create_timer(state_period, self._keep_alive)
        every = f'; every {self.autonomous_every} expert episodes one driven by the policy node' \
            if self.autonomous_every else ''
        self.get_logger().info(f'{self.robot_id}: recording {", ".join(self.tasks)} every {period:.1f} s{every}')

    def record_one(self) -> None:
        """Roll out one expert episode of the next task; mark it and publish its frames."""
        if self.max_episodes and self.episodes_done >= self.max_episodes:
            self.timer.cancel()
            return
        if self.busy or not (self.start_client.service_is_ready() and self.end_client.service_is_ready()):
            return
        if any(pub.get_subscription_count() == 0 for pub in self.pubs.values()):
            return
        if self.autonomous_every and not self.enabling:
            self._enable_policy()
        task = self.tasks[self.episodes_done % len(self.tasks)]
        seed = self.seed + self.episodes_done
        if self.autonomous_every and self.experts_since_autonomous >= self.autonomous_every:
            # Stamped with the node's clock, which must first pass the simulated clock's last stamp.
            if self.get_clock().now().nanoseconds > self.clock_ns:
                self._start_autonomous(task, seed)
            return
        self.episodes_done += 1
        self.experts_since_autonomous += 1
        demos = record_demonstrations(task, episodes=1, seed=seed)
        start = max(self.get_clock().now().nanoseconds, self.clock_ns + STEP_NS)
        frames = demos[0].num_frames if demos else 0
        end = self.clock_ns = start + frames * STEP_NS
        self.busy = True
        future = self.start_client.call_async(StartEpisode.Request(task=task, stamp=to_time(start)))
        future.add_done_callback(lambda done: self._started(done, task, bool(demos), end))
        for i in range(frames):
            for name, msg in arm_messages(demos[0].observation_state[i], demos[0].action[i],
                                          start + i * STEP_NS).items():
                self.pubs[name].publish(msg)

    def _started(self, future: Future, task: str, success: bool, end_ns: int) -> None:
        answer = future.result()
        if not answer.accepted:
            self.get_logger().warning(f'start_episode refused: {answer.message}')
            self.busy = False
            return
        ended = self.end_client.call_async(EndEpisode.Request(success=success, stamp=to_time(end_ns)))
        ended.add_done_callback(lambda done: self._ended(done, f'episode {answer.episode_index} ({task}) ended'))

    def _ended(self, future: Future, what: str) -> None:
        answer = future.result()
        if answer.accepted:
            self.get_logger().info(what)
        else:
            self.get_logger().warning(f'end_episode refused: {answer.message}')
        self.busy = False

    # Autonomous episodes.
    def _enable_policy(self) -> None:
        """Enable the policy node once (as its operator), as soon as its service is up."""
        if not self.enable_client.service_is_ready():
            return
        self.enabling = True
        future = self.enable_client.call_async(SetBool.Request(data=True))
        future.add_done_callback(self._enabled)

    def _enabled(self, future: Future) -> None:
        answer = future.result()
        if answer.success:
            self.get_logger().info(f'policy node: {answer.message}')
        else:
            self.enabling = False  # asked again before the next episode
            self.get_logger().warning(f'policy node refused to enable: {answer.message}')

    def _start_autonomous(self, task: str, seed: int) -> None:
        self.episodes_done += 1
        self.experts_since_autonomous = 0
        self.busy = True
        request = StartEpisode.Request(task=task, stamp=to_time(self._stamp_now()), autonomous=True)
        future = self.start_client.call_async(request)
        future.add_done_callback(lambda done: self._autonomous_started(done, task, seed))

    def _autonomous_started(self, future: Future, task: str, seed: int) -> None:
        answer = future.result()
        if not answer.accepted:
            self.get_logger().warning(f'autonomous start_episode refused: {answer.message}')
            self.busy = False
            return
        env = task_env(task, 0)
        self.autonomous = AutonomousEpisode(answer.episode_index, task, env, reset_env(env, seed), self._stamp_now())
        self.get_logger().info(f'autonomous episode {answer.episode_index} ({task}, seed {seed}) started')
        self._publish_state()

    def _stamp_now(self) -> int:
        """The node's clock, never before a stamp already published."""
        self.clock_ns = max(self.get_clock().now().nanoseconds, self.clock_ns + 1)
        return self.clock_ns

    def _publish_state(self) -> None:
        for name, msg in arm_messages(self.autonomous.state, None, self._stamp_now()).items():
            self.pubs[name].publish(msg)

    def _on_command(self, msg: JointTrajectory) -> None:
        """One policy command: one simulator step, then the new state (or the episode's end)."""
        episode = self.autonomous
        if episode is None:  # the sim's own expert commands, or the policy's after an episode ended
            return
        try:
            action = command_action(msg)
        except ValueError as exc:
            self.refusals[Reason.MALFORMED_SAMPLE] += 1
            self.get_logger().warning(f'command refused ({Reason.MALFORMED_SAMPLE}, '
                                      f'{self.refusals[Reason.MALFORMED_SAMPLE]} so far): {exc}')
            return
        episode.state, _, _, truncated, info = episode.env.step(action)
        episode.steps += 1
        episode.commanded = True
        episode.last_command_ns = self.get_clock().now().nanoseconds
        if info['success'] or truncated or episode.steps >= MAX_EPISODE_STEPS:
            self._end_autonomous(bool(info['success']), f'after {episode.steps} steps')
        else:
            self._publish_state()

    def _keep_alive(self) -> None:
        """Republish the unchanged state while commands pause; end the episode when they stopped."""
        episode = self.autonomous
        if episode is None:
            return
        if self.get_clock().now().nanoseconds - episode.last_command_ns > self.autonomous_timeout_s * 1e9:
            self._end_autonomous(False, f'after {episode.steps} steps: no command for '
                                        f'{self.autonomous_timeout_s:.1f} s (policy node disabled or without a model?)')
        elif not episode.commanded:
            self._publish_state()
        episode.commanded = False

    def _end_autonomous(self, success: bool, why: str) -> None:
        episode, self.autonomous = self.autonomous, None
        what = f'autonomous episode {episode.index} ({episode.task}) {"succeeded" if success else "failed"} {why}'
        ended = self.end_client.call_async(EndEpisode.Request(success=success, stamp=to_time(self._stamp_now())))
        ended.add_done_callback(lambda done: self._ended(done, what))


def main(args: list[str] | None = None) -> int:
    """Entry point: ``ros2 run tensorguard_sim sim_robot``."""
    return spin_node(SimRobot, args)


if __name__ == '__main__':
    sys.exit(main())
