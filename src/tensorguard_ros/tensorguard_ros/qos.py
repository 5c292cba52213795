"""QoS profiles for TensorGuard streams, chosen per stream (see docs/ros-interfaces.md).

- Round configurations and models are state: a robot that starts late must still get the current
  one, so they are reliable + transient_local with depth 1 ("latched").
- Updates are events addressed to whoever aggregates now: reliable, volatile, a small queue; a
  robot that missed a round simply waits for the next one.
- A robot's input topics (JointState, poses, controller commands) feed the demonstration
  recorder, which must not lose a frame of an episode: reliable (it matches the reliable
  publishers of ros2_control's joint_state_broadcaster and controllers; a best-effort publisher
  would not match) and volatile, with a deep queue (1000 samples, 10 s at 100 Hz), since a
  simulated robot publishes a whole episode in a burst.
- Episode markers are events every recorder of the robot (the edge node's own aligner, rosbag2,
  the policy node) must see in order: reliable, volatile (a marker of a past episode means nothing
  to a late joiner), depth 100 so a burst of short episodes is not cut.
- The policy node's commands to a ros2_control controller: reliable (a controller's default
  subscription is), volatile and depth 1, so a late reader never receives an old command queued
  behind the current one.
- Status streams are telemetry: best effort, volatile, depth 1; a lost sample is replaced by the next.
- ``/diagnostics`` is telemetry too, but shared with standard tools (diagnostic_aggregator,
  rqt_robot_monitor) whose subscriptions may be reliable, which a best-effort writer never
  matches: reliable (it matches both kinds of reader), volatile, depth 10 so a change reported at
  once and the periodic report right after it both reach a slow reader.
"""
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

LATCHED = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

UPDATES = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=16,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

EPISODE_MARKERS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=100,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

COMMANDS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

ROBOT_INPUTS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1000,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

STATUS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)

DIAGNOSTICS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
