"""The fleet widget on Qt's offscreen platform, fed over DDS by a real fleet in real processes (two
robots, their edge nodes, the aggregator and the key service): two rounds run from the widget's own
button (confirmation answered yes) through the RunRound action; after each, the table and the plot
equal what the nodes published, as the test's own subscriptions received it. A screenshot is saved
into the test's temporary directory and checked."""
from __future__ import annotations

import math
import os
import secrets
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import rclpy
from python_qt_binding.QtGui import QImage
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node

from tensorguard_crypto.fleet import FleetPaths
from tensorguard_monitor.fleet_actions import FleetActions
from tensorguard_monitor.fleet_state import FleetState, RoundResult
from tensorguard_monitor.ros_feed import FleetStateFeed
from tensorguard_msgs.msg import FleetStatus, RobotStatus
from tensorguard_ros import qos, topics
from tensorguard_rqt.fleet_widget import FleetWidget, RobotRow
from tensorguard_sim.plan import load_config
from tensorguard_sim.provisioning import provision
from tensorguard_sim.simulated_fleet import Processes, start_fleet

pytestmark = [pytest.mark.ros, pytest.mark.slow]

DATA = Path(__file__).resolve().parents[3] / 'test' / 'data'
ROBOTS = ['robot_1', 'robot_2']
DEADLINE_S = 150.0


class Watcher(Node):
    """The test's own view of what the nodes publish."""

    def __init__(self, context: rclpy.Context) -> None:
        super().__init__('rqt_test_watcher', context=context)
        self.fleet: FleetStatus | None = None
        self.robots: dict[str, RobotStatus] = {}
        self.create_subscription(FleetStatus, topics.FLEET_STATUS, self._on_fleet, qos.STATUS)
        for robot in ROBOTS:
            self.create_subscription(RobotStatus, f'/{robot}/status', self._on_robot, qos.STATUS)

    def _on_fleet(self, msg: FleetStatus) -> None:
        self.fleet = msg

    def _on_robot(self, msg: RobotStatus) -> None:
        self.robots[msg.robot_id] = msg

    def rows(self) -> list[RobotRow]:
        """The robots table the published statuses call for (last seen left out: a receipt time)."""
        revoked = set(self.fleet.revoked_robots) if self.fleet else set()
        return [RobotRow(s.robot_id, s.activity, s.episodes_buffered, s.model_version, s.epsilon_spent,
                         s.epsilon_budget, None, sum(r.count for r in s.rejections), s.robot_id in revoked)
                for s in (self.robots[r] for r in sorted(self.robots))]


class PatientActions:
    """FleetActions whose rounds collect for DEADLINE_S instead of the test fleet's 45 s: on a loaded
    machine a robot's training can take longer (a round still closes as soon as every robot sent)."""

    def __init__(self, actions: FleetActions) -> None:
        self.actions = actions

    def run_round(self, on_feedback=None, on_done=None) -> int:
        return self.actions.run_round(on_feedback, on_done, deadline_seconds=DEADLINE_S)

    def revoke(self, robot_id: str, reason: str, on_done=None) -> int:
        return self.actions.revoke(robot_id, reason, on_done)


class Fleet:
    """The fleet's processes; the widget on its own node (as rqt's), the watcher on another."""

    def __init__(self, run_dir: Path) -> None:
        passphrase = secrets.token_urlsafe(24)
        shared, plan = load_config(DATA / 'fleet_test.yaml', DATA / 'fleet_test_plan.yaml')
        plan = replace(plan, robots=len(ROBOTS))
        paths = FleetPaths(run_dir / 'fleet')
        (run_dir / 'logs').mkdir(parents=True)
        provision(paths, shared, plan, passphrase.encode(), lambda _text: None)
        self.procs = Processes(run_dir / 'logs', {**os.environ, 'TENSORGUARD_KEY_PASSPHRASE': passphrase,
                                                  'OMP_NUM_THREADS': '1'})
        start_fleet(self.procs, DATA / 'fleet_test.yaml', paths, plan)
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.watcher = Watcher(self.context)
        self.node = Node('rqt_fleet_widget', context=self.context)
        state = FleetState()
        self.feed = FleetStateFeed(self.node, state)
        self.actions = FleetActions(self.node, state)
        self.asked: list[str] = []
        self.widget = FleetWidget(state, PatientActions(self.actions), confirm=self._yes)
        self.feedback: list[str] = []
        self.results: list[RoundResult] = []
        # Connected after the widget's own slots, so these see what the widget shows.
        self.widget.round_feedback.connect(lambda _feedback: self.feedback.append(self.widget.feedback_text()))
        self.widget.round_done.connect(self.results.append)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.watcher)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _yes(self, title: str, _text: str) -> bool:
        """The operator's answer to every confirmation: yes (the question's title is recorded)."""
        self.asked.append(title)
        return True

    def close(self) -> None:
        self.widget.stop()
        self.widget.close()
        self.feed.destroy()
        self.actions.destroy()
        self.executor.shutdown()
        self.node.destroy_node()
        self.watcher.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.procs.stop_all()


@pytest.fixture
def fleet(tmp_path, qapp):
    running = Fleet(tmp_path)
    try:
        yield running
    finally:
        running.close()


def _shown_rows(widget: FleetWidget) -> list[RobotRow]:
    widget.refresh()
    return [row._replace(last_seen=None) for row in widget.table_rows()]


def _plotted(widget: FleetWidget) -> dict[str, tuple[float, ...]]:
    return {s.name: s.values for s in widget.plot_data().series}


def test_widget_shows_what_a_real_fleet_publishes_round_after_round(fleet, wait_qt, tmp_path):
    watcher, widget = fleet.watcher, fleet.widget
    wait_qt(lambda: watcher.fleet is not None and sorted(watcher.robots) == ROBOTS, 120, 'every node to report')
    wait_qt(lambda: all(s.episodes_buffered >= 2 for s in watcher.robots.values()), 120, 'demonstrations')
    wait_qt(lambda: fleet.actions.server_ready(), 60, 'the RunRound action server')
    published: dict[int, tuple[float, float, float]] = {}
    for n in (1, 2):
        widget.request_round()
        wait_qt(lambda n=n: len(fleet.results) == n, DEADLINE_S + 150, f'round {n} to finish')
        result = fleet.results[-1]
        assert result.success, result.message
        assert sorted(result.participants) == ROBOTS and result.gate_decision in ('deploy', 'canary')
        assert widget.action_status().startswith(f'round {result.round_id}: {result.gate_decision}')
        wait_qt(lambda r=result: watcher.fleet.phase == 'idle' and watcher.fleet.round_id == r.round_id
                and watcher.fleet.model_version == r.model_version
                and all(s.model_version == r.model_version for s in watcher.robots.values()), 60,
                f'the fleet to publish model {result.model_version} and every robot to apply it')
        status = watcher.fleet
        assert status.last_gate_decision == result.gate_decision
        published[result.round_id] = (status.last_success_rate, status.last_success_lower_bound,
                                      status.deployed_success_rate)
        wait_qt(lambda: _shown_rows(widget) == watcher.rows(), 30,
                f'the table to equal the published robot statuses (table {_shown_rows(widget)}, '
                f'published {watcher.rows()})')
        wait_qt(lambda: widget.plot_data().rounds == tuple(published), 30,
                f'the plot to show rounds {tuple(published)} (shows {widget.plot_data().rounds})')
        assert _plotted(widget) == {'candidate success': tuple(p[0] for p in published.values()),
                                    'lower bound': tuple(p[1] for p in published.values()),
                                    'deployed': tuple(p[2] for p in published.values())}
        panel = widget.panel()
        assert panel['decision'] == status.last_gate_decision
        assert panel['deployed'].startswith(f'version {status.model_version}, ')
    assert fleet.asked == ['Run a round', 'Run a round']
    assert any(text.startswith('collecting: ') and text.endswith(' s left') for text in fleet.feedback), fleet.feedback
    assert all(math.isfinite(v) for values in _plotted(widget).values() for v in values)

    widget.resize(1100, 760)
    widget.show()
    wait_qt(lambda: widget.isVisible(), 5, 'the widget to be shown')
    png = tmp_path / 'rqt-fleet-widget.png'
    assert widget.grab().save(str(png))
    assert png.stat().st_size > 20_000
    image = QImage(str(png))
    assert (image.width(), image.height()) == (1100, 760)
    pixels = Counter(image.pixel(x, y) for x in range(0, image.width(), 3) for y in range(0, image.height(), 3))
    assert len(pixels) > 100, 'too few colours: a blank screenshot?'
    assert pixels.most_common(1)[0][1] < 0.8 * sum(pixels.values()), 'one colour covers the screenshot'
