"""QoS profiles for TensorGuard streams, chosen per stream (see docs/ros-interfaces.md).

- Round configurations and models are state: a robot that starts late must still get the current
  one, so they are reliable + transient_local with depth 1 ("latched").
- Updates are events addressed to whoever aggregates now: reliable, volatile, a small queue; a
  robot that missed a round simply waits for the next one.
- Observation/action streams feed the demonstration recorder, which must not lose a frame of an
  episode: reliable with a deep queue (1000 frames, 10 s at 100 Hz), since a simulated robot
  publishes a whole episode in a burst.
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

DEMONSTRATIONS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=32,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

SENSOR_STREAM = QoSProfile(
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
