"""A simulated robot: a Meta-World arm driven by its scripted expert, the "teleoperator".

It publishes what a real robot's drivers and teleoperation stack would: the observation and the
commanded action of every control step as standard ``std_msgs/Float32MultiArray`` streams, and
episode boundaries (task, success) as JSON on ``std_msgs/String``; or, with
``publish_mode: demonstrations``, whole ``tensorguard_msgs/Demonstration`` messages. The edge node
records from either. Simulator seeds are public (they pick goal positions), never secrets.

Topic names and stream conventions are the robot streams of `tensorguard_ros.topics` (relative
names, so the robot namespace applies).
"""
from __future__ import annotations

import json
import sys

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from std_msgs.msg import Float32MultiArray, MultiArrayDimension, String

from tensorguard_learning.metaworld_source import record_demonstrations
from tensorguard_msgs.msg import Demonstration as DemonstrationMsg
from tensorguard_ros import qos, topics
from tensorguard_ros.node_main import spin_node


def frame_array(label: str, episode: int, frame_index: int, values: np.ndarray) -> Float32MultiArray:
    """One frame's vector as Float32MultiArray, naming its episode and frame (`tensorguard_ros.topics`)."""
    msg = Float32MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=label, size=int(values.size), stride=int(values.size)),
                      MultiArrayDimension(label='episode', size=1, stride=int(episode))]
    msg.layout.data_offset = int(frame_index)
    msg.data = values.astype(np.float32).ravel().tolist()
    return msg


class SimRobot(Node):
    """Records scripted-expert episodes of its tasks on a timer and publishes them."""

    def __init__(self) -> None:
        super().__init__('sim_robot')
        self.robot_id = self.declare_parameter(
            'robot_id', 'robot_1', ParameterDescriptor(description='Robot identity stamped on demonstrations.')).value
        self.tasks = list(self.declare_parameter(
            'tasks', ['push-v3'], ParameterDescriptor(
                description='Meta-World v3 tasks this robot performs (non-IID across the fleet).')).value)
        self.seed = int(self.declare_parameter(
            'seed', 0, ParameterDescriptor(description='Public simulator seed of the first episode.')).value)
        self.publish_mode = self.declare_parameter(
            'publish_mode', 'streams', ParameterDescriptor(
                description="'streams' (observation/action/episode_events) or 'demonstrations'.")).value
        period = float(self.declare_parameter(
            'episode_period_s', 2.0, ParameterDescriptor(description='Seconds between recorded episodes.')).value)
        self.max_episodes = int(self.declare_parameter(
            'max_episodes', 0, ParameterDescriptor(description='Stop after this many episodes (0: never).')).value)
        if self.publish_mode not in ('streams', 'demonstrations'):
            raise ValueError(f"publish_mode must be 'streams' or 'demonstrations', got {self.publish_mode!r}")
        if not self.tasks:
            raise ValueError('tasks must name at least one Meta-World task')

        self.obs_pub = self.create_publisher(Float32MultiArray, topics.OBSERVATION, qos.SENSOR_STREAM)
        self.action_pub = self.create_publisher(Float32MultiArray, topics.ACTION, qos.SENSOR_STREAM)
        self.event_pub = self.create_publisher(String, topics.EPISODE_EVENTS, qos.DEMONSTRATIONS)
        self.demo_pub = self.create_publisher(DemonstrationMsg, topics.DEMONSTRATIONS, qos.DEMONSTRATIONS)
        self.episodes_done = 0
        self.timer = self.create_timer(period, self.record_one)
        self.get_logger().info(
            f'{self.robot_id}: recording {", ".join(self.tasks)} every {period:.1f} s as {self.publish_mode}')

    def record_one(self) -> None:
        """Roll out one expert episode of the next task and publish it if it succeeded."""
        if self.max_episodes and self.episodes_done >= self.max_episodes:
            self.timer.cancel()
            return
        if self.publish_mode == 'streams' and self.obs_pub.get_subscription_count() == 0:
            return
        if self.publish_mode == 'demonstrations' and self.demo_pub.get_subscription_count() == 0:
            return
        task = self.tasks[self.episodes_done % len(self.tasks)]
        episode = self.seed + self.episodes_done
        self.episodes_done += 1
        demos = record_demonstrations(task, episodes=1, seed=episode)
        if not demos:
            self.publish_event({'event': 'begin', 'episode': episode, 'task': task})
            self.publish_event({'event': 'end', 'episode': episode, 'frames': 0, 'success': False})
            return
        demo = demos[0]
        if self.publish_mode == 'demonstrations':
            self.demo_pub.publish(self.to_message(demo, episode))
            return
        self.publish_event({'event': 'begin', 'episode': episode, 'task': task})
        for i in range(demo.num_frames):
            self.obs_pub.publish(frame_array('observation.state', episode, i, demo.observation_state[i]))
            self.action_pub.publish(frame_array('action', episode, i, demo.action[i]))
        self.publish_event({'event': 'end', 'episode': episode, 'frames': demo.num_frames, 'success': True})

    def publish_event(self, event: dict) -> None:
        """Publish one episode boundary as JSON."""
        self.event_pub.publish(String(data=json.dumps(event)))

    def to_message(self, demo, episode: int) -> DemonstrationMsg:
        """A whole episode as a Demonstration message."""
        msg = DemonstrationMsg(robot_id=self.robot_id, task=demo.task, episode_index=episode, success=True)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.num_frames = demo.num_frames
        msg.state_dim = int(demo.observation_state.shape[1])
        msg.action_dim = int(demo.action.shape[1])
        msg.observation_state = demo.observation_state.ravel().tolist()
        msg.action = demo.action.ravel().tolist()
        msg.timestamp = demo.timestamp.astype(np.float64).tolist()
        return msg


def main(args: list[str] | None = None) -> int:
    """Entry point: ``ros2 run tensorguard_sim sim_robot``."""
    return spin_node(SimRobot, args)


if __name__ == '__main__':
    sys.exit(main())
