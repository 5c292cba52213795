"""The simulated arm driven by the fleet's model over DDS: sim_robot (autonomous_every 1), the edge node
and the policy node in their own processes, in a provisioned one-robot fleet whose signed initial model
the test publishes as the aggregator does. The arm enables the policy node, records an expert
episode, then runs an autonomous one stepped by the policy's commands; it ends at success or at the
server evaluation's 500 steps, and the edge node publishes an OutcomeReport for model 1 that verifies
under the robot's enrolled key."""
from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from trajectory_msgs.msg import JointTrajectory

from tensorguard_crypto.verify import verify_outcome_report
from tensorguard_edge.robot_inputs import stamp_ns
from tensorguard_learning.metaworld_source import MAX_EPISODE_STEPS
from tensorguard_msgs.msg import EpisodeMarker, ModelUpdate, OutcomeReport, RobotStatus
from tensorguard_ros import qos, topics
from tensorguard_sim.sim_robot import ARM_TOPICS
from tensorguard_sim.simulated_fleet import Processes, edge_node_parameters, policy_parameters

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / 'test'))
from test_fleet_integration import wait_for  # noqa: E402
from test_node_lifecycle import PARAMS, fleet  # noqa: E402, F401 - the provisioned one-robot fleet fixture

pytestmark = [pytest.mark.ros]

RATE_HZ = 50.0
ENDED = re.compile(r'autonomous episode (\d+) \(push-v3\) (succeeded|failed) after (\d+) steps')


class Robot(Node):
    """The test's node: publishes the fleet's model; records markers, commands, reports and statuses."""

    def __init__(self, context) -> None:
        super().__init__('test_robot', namespace='/robot_1', context=context)
        self.markers: list[EpisodeMarker] = []
        self.reports: list[OutcomeReport] = []
        self.commands: list[tuple[int, float]] = []  # (header stamp in ns, arrival time)
        self.status: dict[str, RobotStatus] = {}
        self.create_subscription(EpisodeMarker, topics.EPISODE_MARKERS, self.markers.append, qos.EPISODE_MARKERS)
        self.create_subscription(OutcomeReport, topics.OUTCOME_REPORTS, self.reports.append, qos.UPDATES)
        self.create_subscription(JointTrajectory, ARM_TOPICS['command'],
                                 lambda msg: self.commands.append((stamp_ns(msg.header.stamp), time.monotonic())),
                                 qos.ROBOT_INPUTS)
        for topic in ('status', 'policy_status'):
            self.create_subscription(RobotStatus, topic, lambda msg, t=topic: self.status.__setitem__(t, msg),
                                     qos.STATUS)
        self.models = self.create_publisher(ModelUpdate, topics.MODEL_UPDATES, qos.LATCHED)

    def running(self, topic: str) -> int:
        status = self.status.get(topic)
        return status.model_version if status else 0


def test_the_policy_node_drives_the_simulated_arm(fleet, tmp_path):  # noqa: F811
    paths, env = fleet
    robot_dir = paths.robot_dir('robot_1')
    procs = Processes(tmp_path, env)
    procs.start('edge', 'tensorguard_edge.edge_node', PARAMS, '/robot_1', edge_node_parameters(paths, 'robot_1'))
    procs.start('policy', 'tensorguard_policy.policy_node', PARAMS, '/robot_1',
                {**policy_parameters(PARAMS, 'robot_1', robot_dir / 'trust.json'), 'control_rate_hz': RATE_HZ})
    context = rclpy.Context()
    rclpy.init(context=context)
    robot = Robot(context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(robot)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        msg = ModelUpdate(model_version=1, rollout='deploy', package=(paths.models_dir / '1.tgm').read_bytes())
        robot.models.publish(msg)
        wait_for(lambda: robot.running('status') == 1 and robot.running('policy_status') == 1, 60,
                 'the edge and policy nodes to run model 1', procs)
        procs.start('sim', 'tensorguard_sim.sim_robot', PARAMS, '/robot_1',
                    {'robot_id': 'robot_1', 'tasks': ['push-v3'], 'seed': 3, 'autonomous_every': 1,
                     'episode_period_s': 0.5})
        wait_for(lambda: robot.reports, 60, 'an outcome report', procs)
        report = verify_outcome_report(bytes(robot.reports[0].package), paths.kms())
        assert (report.robot_id, report.model_version, report.episodes) == ('robot_1', 1, 1)

        start, end = [m for m in robot.markers if m.autonomous][:2]
        assert (start.kind, end.kind, start.task) == (EpisodeMarker.START, EpisodeMarker.END, 'push-v3')
        assert (start.model_version, report.successes) == (1, int(end.success))
        ended = ENDED.search((tmp_path / 'sim.log').read_text())
        assert ended and int(ended[1]) == end.episode_index, (tmp_path / 'sim.log').read_text()
        steps = int(ended[3])
        # Driven to the end by the policy: success, or the evaluation's full length; never a timeout.
        assert (ended[2] == 'succeeded') == end.success and (end.success or steps == MAX_EPISODE_STEPS)
        # One simulator step per policy command (the sim's own expert commands are stamped outside the episode).
        window = (stamp_ns(start.header.stamp), stamp_ns(end.header.stamp))
        driven = [arrived for stamp, arrived in robot.commands if window[0] <= stamp <= window[1]]
        assert steps <= len(driven) <= steps + 2, (steps, len(driven))
        seconds = driven[-1] - driven[0]
        print(f'autonomous episode: {steps} steps ({ended[2]}) in {seconds:.1f} s, '
              f'{(len(driven) - 1) / seconds:.1f} commands/s at control_rate_hz {RATE_HZ}')
        assert 'policy enabled' in (tmp_path / 'sim.log').read_text()
        assert not procs.dead(), procs.dead()
    finally:
        executor.shutdown()
        robot.destroy_node()
        rclpy.try_shutdown(context=context)
        procs.stop_all()
