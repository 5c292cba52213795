"""The ROS side in one process: FleetStateFeed discovers robots and folds messages in, FleetActions drives a
stand-in RunRound server and RevokeRobot service, destroy() removes what they created."""
from __future__ import annotations

import os
import random
import threading
import time

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.action import ActionServer
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node

from tensorguard_monitor.fleet_actions import FleetActions
from tensorguard_monitor.fleet_state import FleetState
from tensorguard_monitor.ros_feed import FleetStateFeed
from tensorguard_msgs.action import RunRound
from tensorguard_msgs.msg import FleetStatus, RejectionCount, RobotStatus
from tensorguard_msgs.srv import RevokeRobot
from tensorguard_ros import qos, topics

pytestmark = [pytest.mark.ros]


class StandInServer(Node):
    """Publishes status like the aggregator and an edge node, and answers RunRound and RevokeRobot."""

    def __init__(self) -> None:
        super().__init__('stand_in_server')
        self.fleet = self.create_publisher(FleetStatus, topics.FLEET_STATUS, qos.STATUS)
        self.robot = self.create_publisher(RobotStatus, '/robot_9/status', qos.STATUS)
        self.diagnostics = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, qos.DIAGNOSTICS)
        self.revoked: list[str] = []
        self.create_service(RevokeRobot, topics.REVOKE_ROBOT, self._revoke)
        self.action = ActionServer(self, RunRound, topics.RUN_ROUND, self._run)

    def _revoke(self, request, response):
        self.revoked.append(request.robot_id)
        response.success, response.message = True, f'{request.robot_id} revoked'
        return response

    def _run(self, goal_handle):
        feedback = RunRound.Feedback(phase='collecting', updates_received=1, quorum=2, seconds_remaining=9.0)
        goal_handle.publish_feedback(feedback)
        goal_handle.succeed()
        return RunRound.Result(success=True, round_id=7, model_version=3, gate_decision='deploy',
                               participants=['robot_9', 'robot_8'])


@pytest.fixture
def ros():
    domain = os.environ.get('ROS_DOMAIN_ID')
    os.environ['ROS_DOMAIN_ID'] = str(random.randint(100, 200))
    rclpy.init()
    server, client = StandInServer(), Node('dashboard_under_test')
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(server)
    executor.add_node(client)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        yield server, client
    finally:
        executor.shutdown()
        server.destroy_node()
        client.destroy_node()
        rclpy.try_shutdown()
        if domain is None:
            os.environ.pop('ROS_DOMAIN_ID', None)
        else:
            os.environ['ROS_DOMAIN_ID'] = domain


def until(predicate, what: str, timeout: float = 30.0, tick=None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        if tick:
            tick()
        time.sleep(0.1)


def test_feed_discovers_robots_and_folds_in_every_topic(ros):
    server, client = ros
    state = FleetState()
    feed = FleetStateFeed(client, state)
    fleet = FleetStatus(round_id=4, phase='collecting', model_version=2, quorum=2, participants=['robot_8'],
                        enrolled_robots=['robot_8', 'robot_9'], last_success_rate=float('nan'),
                        rejections=[RejectionCount(reason='malformed', count=3)], deployed_success_rate=0.5)
    robot = RobotStatus(robot_id='robot_9', lifecycle_state='active', activity='training', episodes_buffered=5,
                        epsilon_spent=1.5, epsilon_budget=10.0)
    diagnostics = DiagnosticArray(status=[DiagnosticStatus(level=DiagnosticStatus.WARN, name='tensorguard: aggregator',
                                                           message='refused', values=[KeyValue(key='a', value='b')])])

    def publish() -> None:
        server.fleet.publish(fleet)
        server.robot.publish(robot)
        server.diagnostics.publish(diagnostics)

    until(lambda: state.snapshot().robot('robot_9') is not None and state.snapshot().robot('robot_9').last_seen
          and state.snapshot().diagnostics, 'every topic to arrive', tick=publish)
    snapshot = state.snapshot()
    assert feed.robots == ('robot_8', 'robot_9')
    assert (snapshot.round_id, snapshot.phase, snapshot.rejections) == (4, 'collecting', {'malformed': 3})
    assert snapshot.last_success_rate is None and snapshot.deployed_success_rate == 0.5
    assert (snapshot.robot('robot_9').activity, snapshot.robot('robot_9').epsilon_spent) == ('training', 1.5)
    assert snapshot.robot('robot_9').late and not snapshot.robot('robot_8').late
    (status,) = snapshot.diagnostics
    assert (status.level_name, status.message, status.values) == ('WARN', 'refused', {'a': 'b'})
    feed.destroy()
    assert feed.robots == ()
    assert list(client.subscriptions) == []


def test_actions_run_a_round_and_revoke_without_blocking_and_record_both(ros):
    server, client = ros
    state = FleetState()
    actions = FleetActions(client, state)
    until(actions.server_ready, 'the RunRound server and RevokeRobot service')
    feedback, results = [], []
    actions.run_round(on_feedback=feedback.append, on_done=results.append, deadline_seconds=30.0)
    until(lambda: results, 'the round result')
    assert results[0].success and results[0].round_id == 7 and results[0].participants == ('robot_9', 'robot_8')
    answers = []
    actions.revoke('robot_9', 'stolen (test)', on_done=answers.append)
    until(lambda: answers, 'the revoke answer')
    assert answers[0].success and server.revoked == ['robot_9']
    snapshot = state.snapshot()
    assert [(a.kind, a.target, a.status) for a in snapshot.actions] == [
        ('run_round', '', 'succeeded'), ('revoke', 'robot_9', 'succeeded')]
    (record,) = snapshot.rounds
    assert (record.round_id, record.outcome, record.gate_decision, record.model_version) == (
        7, 'aggregated', 'deploy', 3)
    actions.destroy()


def test_actions_end_at_once_when_the_server_is_not_there():
    domain = os.environ.get('ROS_DOMAIN_ID')
    os.environ['ROS_DOMAIN_ID'] = str(random.randint(201, 230))
    rclpy.init()
    try:
        node = Node('lonely_dashboard')
        state = FleetState()
        actions = FleetActions(node, state)
        results, answers = [], []
        actions.run_round(on_done=results.append)
        actions.revoke('robot_1', 'test', on_done=answers.append)
        assert not results[0].accepted and 'no RunRound server' in results[0].message
        assert not answers[0].success and 'no RevokeRobot service' in answers[0].message
        assert [a.status for a in state.snapshot().actions] == ['failed', 'failed']
        assert state.snapshot().rounds == ()
        actions.destroy()
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
        if domain is None:
            os.environ.pop('ROS_DOMAIN_ID', None)
        else:
            os.environ['ROS_DOMAIN_ID'] = domain
