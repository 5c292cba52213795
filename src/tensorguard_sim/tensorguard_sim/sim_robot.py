"""A simulated robot: a Meta-World arm driven by its scripted expert, the "teleoperator".

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
sources (docs/robot-inputs.md). Simulator seeds are public (they pick goal positions), never secrets.
"""
from __future__ import annotations

import sys

import numpy as np
from geometry_msgs.msg import PointStamped, PoseStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from tensorguard_edge.robot_inputs import to_time
from tensorguard_learning.metaworld_source import record_demonstrations
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


def arm_messages(state: np.ndarray, action: np.ndarray, stamp_ns: int) -> dict[str, object]:
    """One Meta-World frame (39-dim observation, 4-dim action) as the arm's messages, by source name."""
    stamp = to_time(stamp_ns)
    gripper = JointState(name=['gripper'], position=[float(state[3])])
    gripper.header.stamp = stamp
    goal = PointStamped()
    goal.header.stamp, goal.header.frame_id = stamp, FRAME_ID
    goal.point.x, goal.point.y, goal.point.z = (float(v) for v in state[36:39])
    command = JointTrajectory(joint_names=ACTION_JOINTS,
                              points=[JointTrajectoryPoint(positions=[float(v) for v in action])])
    command.header.stamp = stamp
    return {'ee_pose': _pose(state[0:3], [0.0, 0.0, 0.0, 1.0], stamp), 'gripper': gripper,
            'object_pose': _pose(state[4:7], state[7:11], stamp),
            'object2_pose': _pose(state[11:14], state[14:18], stamp), 'goal': goal, 'command': command}


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
            'max_episodes', 0, ParameterDescriptor(description='Stop after this many episodes (0: never).')).value)
        if not self.tasks:
            raise ValueError('tasks must name at least one Meta-World task')

        probe = arm_messages(np.zeros(39), np.zeros(4), 0)
        self.pubs = {name: self.create_publisher(type(probe[name]), topic, qos.ROBOT_INPUTS)
                     for name, topic in ARM_TOPICS.items()}
        self.start_client = self.create_client(StartEpisode, topics.START_EPISODE)
        self.end_client = self.create_client(EndEpisode, topics.END_EPISODE)
        self.clock_ns = 0  # end of the last episode on the simulated clock
        self.episodes_done = 0
        self.busy = False  # an episode's boundaries are being marked
        self.timer = self.create_timer(period, self.record_one)
        self.get_logger().info(f'{self.robot_id}: recording {", ".join(self.tasks)} every {period:.1f} s')

    def record_one(self) -> None:
        """Roll out one expert episode of the next task; mark it and publish its frames."""
        if self.max_episodes and self.episodes_done >= self.max_episodes:
            self.timer.cancel()
            return
        if self.busy or not (self.start_client.service_is_ready() and self.end_client.service_is_ready()):
            return
        if any(pub.get_subscription_count() == 0 for pub in self.pubs.values()):
            return
        task = self.tasks[self.episodes_done % len(self.tasks)]
        seed = self.seed + self.episodes_done
        self.episodes_done += 1
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
        ended.add_done_callback(lambda done: self._ended(done, task, answer.episode_index))

    def _ended(self, future: Future, task: str, episode: int) -> None:
        answer = future.result()
        if answer.accepted:
            self.get_logger().info(f'episode {episode} ({task}) ended')
        else:
            self.get_logger().warning(f'end_episode refused: {answer.message}')
        self.busy = False


def main(args: list[str] | None = None) -> int:
    """Entry point: ``ros2 run tensorguard_sim sim_robot``."""
    return spin_node(SimRobot, args)


if __name__ == '__main__':
    sys.exit(main())
