"""The fleet widget without rqt and without ROS: fed by a FleetState with hand-made records."""
from __future__ import annotations

import importlib.util
import math
import sys
import types
from dataclasses import dataclass, field

import pytest
from python_qt_binding.QtCore import QObject, Qt
from python_qt_binding.QtGui import QColor
from python_qt_binding.QtWidgets import QLineEdit, QTableWidget

from tensorguard_monitor.fleet_state import (
    FleetState,
    FleetStatusRecord,
    RevokeResult,
    RobotStatusRecord,
    RoundFeedback,
    RoundResult,
)
from tensorguard_rqt.fleet_widget import (
    BAR_NEAR_LIMIT,
    BAR_OK,
    BUDGET_COLUMN,
    PLOTS,
    FleetWidget,
    RobotRow,
    ViewSettings,
)

ROBOTS = ('robot_1', 'robot_2', 'robot_3')


@dataclass
class FakeActions:
    """Records what the widget asked for; the test answers through the stored callbacks."""

    rounds: list[tuple] = field(default_factory=list)
    revocations: list[tuple] = field(default_factory=list)

    def run_round(self, on_feedback=None, on_done=None) -> int:
        self.rounds.append((on_feedback, on_done))
        return len(self.rounds)

    def revoke(self, robot_id: str, reason: str, on_done=None) -> int:
        self.revocations.append((robot_id, reason, on_done))
        return len(self.revocations)


class Answers:
    """A confirmation callable that answers `yes` and remembers what it was asked."""

    def __init__(self, yes: bool) -> None:
        self.yes = yes
        self.asked: list[tuple[str, str]] = []

    def __call__(self, title: str, text: str) -> bool:
        self.asked.append((title, text))
        return self.yes


def robot(robot_id: str, spent: float, **fields) -> RobotStatusRecord:
    return RobotStatusRecord(robot_id=robot_id, activity=fields.pop('activity', 'idle'), epsilon_spent=spent,
                             epsilon_budget=fields.pop('budget', 100.0), **fields)


def fleet(round_id: int, phase: str, **fields) -> FleetStatusRecord:
    return FleetStatusRecord(round_id=round_id, phase=phase, model_version=fields.pop('model_version', 1),
                             quorum=2, enrolled_robots=ROBOTS, **fields)


AFTER_ROUND_1 = dict(model_version=2, last_success_rate=0.6, last_success_lower_bound=0.45,
                     last_gate_decision='deploy', deployed_success_rate=0.6)
AFTER_ROUND_2 = dict(AFTER_ROUND_1, last_success_rate=0.4, last_success_lower_bound=0.3, last_gate_decision='reject',
                     rejections={'bad_signature': 2, 'replayed_round': 1})


def two_rounds() -> FleetState:
    """Round 1 deployed (success 0.6), round 2 rejected (0.4); robots report after each. Every status
    repeats the last round's figures, as the aggregator's do."""
    state = FleetState()
    state.apply_fleet_status(fleet(0, 'idle'))
    for i, robot_id in enumerate(ROBOTS):
        state.apply_robot_status(robot(robot_id, 0.0, episodes_buffered=3 + i))
    state.apply_fleet_status(fleet(1, 'collecting', participants=('robot_1',)))
    state.apply_fleet_status(fleet(1, 'evaluating', participants=('robot_1', 'robot_2')))
    state.apply_fleet_status(fleet(1, 'idle', **AFTER_ROUND_1))
    state.apply_robot_status(robot('robot_1', 30.0, episodes_buffered=5, model_version=2, last_round_id=1))
    state.apply_robot_status(robot('robot_2', 40.0, episodes_buffered=6, model_version=2, last_round_id=1))
    state.apply_fleet_status(fleet(2, 'collecting', participants=('robot_2',), **AFTER_ROUND_1))
    state.apply_fleet_status(fleet(2, 'evaluating', participants=ROBOTS, **AFTER_ROUND_1))
    state.apply_fleet_status(fleet(2, 'idle', **AFTER_ROUND_2))
    state.apply_robot_status(robot('robot_1', 60.0, episodes_buffered=7, model_version=2, last_round_id=2))
    state.apply_robot_status(robot('robot_2', 85.0, episodes_buffered=8, model_version=2, last_round_id=2,
                                   rejections={'stale_model': 1}))
    state.apply_robot_status(robot('robot_3', 20.0, episodes_buffered=9, model_version=2, last_round_id=2,
                                   activity='training'))
    return state


@pytest.fixture
def actions() -> FakeActions:
    return FakeActions()


def make_widget(state: FleetState, actions: FakeActions, yes: bool = True) -> tuple[FleetWidget, Answers]:
    answers = Answers(yes)
    widget = FleetWidget(state, actions, confirm=answers)
    widget.resize(1000, 700)
    return widget, answers


def test_rows_show_every_robot_as_it_reported(qapp, actions):
    widget, _ = make_widget(two_rounds(), actions)
    rows = [row._replace(last_seen=None) for row in widget.table_rows()]
    assert rows == [RobotRow('robot_1', 'idle', 7, 2, 60.0, 100.0, None, 0, False),
                    RobotRow('robot_2', 'idle', 8, 2, 85.0, 100.0, None, 1, False),
                    RobotRow('robot_3', 'training', 9, 2, 20.0, 100.0, None, 0, False)]
    assert all(row.last_seen is not None for row in widget.table_rows())


def test_fleet_panel_shows_the_last_status(qapp, actions):
    state = two_rounds()
    state.apply_fleet_status(fleet(3, 'collecting', participants=('robot_3',), **AFTER_ROUND_2))
    widget, _ = make_widget(state, actions)
    panel = widget.panel()
    assert panel['phase'] == 'collecting' and panel['round'] == '3'
    assert panel['participants'] == '1 / 2  (robot_3)'
    assert panel['rejections'] == '3  (bad_signature 2, replayed_round 1)'
    assert panel['success'] == '0.40 (lower bound 0.30)'
    assert panel['decision'] == 'reject'
    assert panel['deployed'] == 'version 2, success 0.60'


def test_panel_before_the_first_status_and_the_first_round(qapp, actions):
    state = FleetState()
    widget, _ = make_widget(state, actions)
    assert (widget.panel()['status'], widget.panel()['round'], widget.table_rows()) == ('none received yet', '-', [])
    state.apply_fleet_status(fleet(0, 'idle', last_success_rate=0.0, last_success_lower_bound=0.0))
    widget.refresh()
    assert (widget.panel()['success'], widget.panel()['decision'], widget.panel()['deployed']) == (
        '-', '-', 'version 1, success -')
    assert widget.plot_data().rounds == ()


def test_budget_bar_turns_red_from_the_warning_fraction(qapp, actions):
    widget, _ = make_widget(two_rounds(), actions)
    bars = widget.budget_bars()
    assert {r: (b.fraction, b.near_limit) for r, b in bars.items()} == {
        'robot_1': (0.6, False), 'robot_2': (0.85, True), 'robot_3': (0.2, False)}
    assert (bars['robot_1'].color, bars['robot_2'].color) == (BAR_OK, BAR_NEAR_LIMIT)
    image = widget.grab().toImage()
    table = widget.findChild(QTableWidget)
    for robot_id, colour in (('robot_1', BAR_OK), ('robot_2', BAR_NEAR_LIMIT)):
        item = table.findItems(robot_id, Qt.MatchExactly)[0]
        cell = table.visualItemRect(table.item(item.row(), BUDGET_COLUMN))
        point = table.viewport().mapTo(widget, cell.topLeft()) + type(cell.topLeft())(8, cell.height() // 2)
        assert QColor(image.pixel(point)).name() == colour, robot_id
    widget.apply_view_settings(ViewSettings(budget_warning_fraction=0.9))
    assert not widget.budget_bars()['robot_2'].near_limit
    widget.apply_view_settings(ViewSettings(budget_warning_fraction=0.5))
    assert [r for r, b in widget.budget_bars().items() if b.near_limit] == ['robot_1', 'robot_2']


def test_plot_data_has_one_point_per_closed_round(qapp, actions):
    widget, _ = make_widget(two_rounds(), actions)
    data = widget.plot_data()
    assert data.rounds == (1, 2)
    assert {s.name: s.values for s in data.series} == {
        'candidate success': (0.6, 0.4), 'lower bound': (0.45, 0.3), 'deployed': (0.6, 0.6)}
    widget.apply_view_settings(ViewSettings(plot='participants'))
    assert [s.values for s in widget.plot_data().series] == [(2.0, 3.0)]
    widget.apply_view_settings(ViewSettings(plot='epsilon'))
    assert [s.values for s in widget.plot_data().series] == [(40.0, 85.0)]


def test_a_round_that_expired_leaves_a_gap_in_the_success_plot(qapp, actions):
    state = two_rounds()
    state.apply_fleet_status(fleet(3, 'collecting', participants=('robot_3',), **AFTER_ROUND_2))
    state.apply_fleet_status(fleet(3, 'idle', **AFTER_ROUND_2))  # no quorum by the deadline
    widget, _ = make_widget(state, actions)
    data = widget.plot_data()
    assert data.rounds == (1, 2, 3)
    assert math.isnan(data.series[0].values[2])


def test_declined_round_sends_nothing(qapp, actions):
    widget, answers = make_widget(two_rounds(), actions, yes=False)
    widget.request_round()
    assert len(answers.asked) == 1 and 'RunRound' in answers.asked[0][1]
    assert actions.rounds == []


def test_confirmed_round_shows_its_feedback_and_result(qapp, actions):
    widget, _ = make_widget(two_rounds(), actions)
    widget.request_round()
    assert len(actions.rounds) == 1
    widget.request_round()  # a second click while the round runs sends nothing
    assert len(actions.rounds) == 1
    on_feedback, on_done = actions.rounds[0]
    on_feedback(RoundFeedback('collecting', 1, 2, 41.6))
    assert widget.feedback_text() == 'collecting: 1 / 2 updates, 42 s left'
    on_done(RoundResult(accepted=True, success=True, round_id=3, model_version=3, gate_decision='deploy',
                        participants=('robot_1', 'robot_2')))
    assert widget.feedback_text() == ''
    assert widget.action_status() == 'round 3: deploy, model 3, participants robot_1, robot_2'
    widget.request_round()
    assert len(actions.rounds) == 2
    actions.rounds[1][1](RoundResult(accepted=False, success=False, message='no RunRound server'))
    assert widget.action_status() == 'round - failed: no RunRound server'


def test_revoke_needs_a_selected_robot_and_a_yes(qapp, actions):
    widget, answers = make_widget(two_rounds(), actions, yes=False)
    widget.request_revoke()
    assert answers.asked == [] and actions.revocations == []
    widget.select_robot('robot_2')
    widget.findChild(QLineEdit, 'revoke_reason').setText('lost in transit')
    widget.request_revoke()
    assert answers.asked[0][0] == 'Revoke robot_2' and 'lost in transit' in answers.asked[0][1]
    assert actions.revocations == []
    answers.yes = True
    widget.request_revoke()
    assert [(r, why) for r, why, _ in actions.revocations] == [('robot_2', 'lost in transit')]
    actions.revocations[0][2](RevokeResult('robot_2', True, 'revoked'))
    assert widget.action_status() == 'revoke robot_2: revoked'
    assert widget.findChild(QLineEdit, 'revoke_reason').text() == ''


def test_selection_survives_refresh_and_sorting(qapp, actions):
    state = two_rounds()
    widget, _ = make_widget(state, actions)
    widget.select_robot('robot_3')
    widget.apply_view_settings(ViewSettings(sort_column=BUDGET_COLUMN, sort_descending=True))
    assert [row.robot_id for row in widget.table_rows()] == ['robot_2', 'robot_1', 'robot_3']
    state.apply_robot_status(robot('robot_3', 95.0, episodes_buffered=10, model_version=2))
    widget.refresh()
    assert [row.robot_id for row in widget.table_rows()] == ['robot_3', 'robot_2', 'robot_1']
    assert widget.selected_robot() == 'robot_3'


def test_view_settings_survive_a_save_and_restore(qapp, actions):
    widget, _ = make_widget(two_rounds(), actions)
    saved = ViewSettings(budget_warning_fraction=0.65, plot='epsilon', column_widths=[90, 80, 70, 60, 200, 100, 80],
                         sort_column=2, sort_descending=True)
    widget.apply_view_settings(saved)
    text = widget.view_settings().to_json()
    other, _ = make_widget(two_rounds(), actions)
    other.apply_view_settings(ViewSettings.from_json(text))
    assert other.view_settings() == widget.view_settings()
    assert ViewSettings.from_json(text).plot == 'epsilon' and set(PLOTS) >= {'success', 'epsilon'}
    assert other.view_settings().sort_column == 2 and other.view_settings().column_widths[4] == 200


@pytest.mark.parametrize('text', [None, '', 'not json', '[1, 2]', '{"plot": ["success"]}',
                                  '{"budget_warning_fraction": 7, "plot": "x", '
                                  '"column_widths": ["a"], "sort_column": 99, "sort_descending": "yes"}'])
def test_unreadable_settings_fall_back_to_defaults(text):
    assert ViewSettings.from_json(text) == ViewSettings()


class FakeContext(QObject):
    """What rqt's Ros2PluginContext gives a plugin: its node, a serial number and add_widget."""

    def __init__(self, node) -> None:
        super().__init__()
        self.node = node
        self.widgets: list = []

    def serial_number(self) -> int:
        return 2

    def add_widget(self, widget) -> None:
        self.widgets.append(widget)


class FakeSettings(dict):
    """rqt's Settings: set_value / value by key."""

    def set_value(self, key, value) -> None:
        self[key] = value

    def value(self, key, default=None):
        return self.get(key, default)


@pytest.fixture
def ros_node():
    import rclpy
    from rclpy.node import Node
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node('rqt_plugin_test', context=context)
    yield node
    node.destroy_node()
    rclpy.try_shutdown(context=context)


def test_plugin_wires_the_widget_to_rqts_node_and_saves_its_view(qapp, ros_node, monkeypatch):
    """FleetPlugin as rqt drives it, on a real rclpy node; rqt_gui_py, when not installed, is stood in
    for by what its Plugin is: a QObject whose parent is the context."""
    if importlib.util.find_spec('rqt_gui_py') is None:
        package, module = types.ModuleType('rqt_gui_py'), types.ModuleType('rqt_gui_py.plugin')
        module.Plugin = type('Plugin', (QObject,), {'__init__': lambda self, context: QObject.__init__(self, context)})
        monkeypatch.setitem(sys.modules, 'rqt_gui_py', package)
        monkeypatch.setitem(sys.modules, 'rqt_gui_py.plugin', module)
    from tensorguard_rqt.fleet_plugin import FleetPlugin
    def counts() -> tuple[int, ...]:
        return tuple(len(list(e)) for e in (ros_node.subscriptions, ros_node.clients, ros_node.waitables))

    before = counts()
    context = FakeContext(ros_node)
    plugin = FleetPlugin(context)
    assert sorted(s.topic_name for s in ros_node.subscriptions) == ['/diagnostics', '/tensorguard/fleet_status']
    assert [c.srv_name for c in ros_node.clients] == ['/tensorguard/revoke_robot']
    assert [w.windowTitle() for w in context.widgets] == ['TensorGuard Fleet (2)']
    widget = context.widgets[0]
    widget.apply_view_settings(ViewSettings(budget_warning_fraction=0.5, plot='participants'))
    saved = FakeSettings()
    plugin.save_settings(FakeSettings(), saved)
    assert isinstance(saved['view'], str)
    widget.apply_view_settings(ViewSettings())
    plugin.restore_settings(FakeSettings(), saved)
    assert (widget.view_settings().plot, widget.view_settings().budget_warning_fraction) == ('participants', 0.5)
    plugin.shutdown_plugin()
    assert counts() == before
