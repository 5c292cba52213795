"""The fleet widget of the rqt plugin, built in code with python_qt_binding (PyQt5 or PySide) and
testable without rqt: it reads a `FleetState` and acts through a `FleetActions`-like object.

- Fleet panel: phase and round, participants against quorum, rejections by reason, the last
  candidate's success and its lower bound, the gate's decision, the deployed model; beside it a
  per-round plot (success, participants or privacy spent, chosen in a combo box).
- Robots table: activity, episodes, model version, epsilon spent against the budget as a bar that
  turns red from the warning fraction on, last seen, rejections; sortable by any column.
- Actions, each after a confirmation: run a round through ``RunRound`` (its feedback is shown
  while it runs) and revoke the selected robot.

The widget refreshes from `FleetState.snapshot()` on a timer (twice a second), fully only when
the model's version changed. Action callbacks arrive on the ROS executor's thread and are handed
to the Qt thread through signals.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Protocol

from python_qt_binding.QtCore import QRect, QSize, Qt, QTimer, Signal
from python_qt_binding.QtGui import QBrush, QColor, QFont, QPainter
from python_qt_binding.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QSplitter,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from tensorguard_monitor.fleet_state import (
    FleetSnapshot,
    FleetState,
    RevokeResult,
    RobotView,
    RoundFeedback,
    RoundRecord,
    RoundResult,
)
from tensorguard_rqt.plot import PlotData, RoundPlot, Series

COLUMNS = ('Robot', 'Activity', 'Episodes', 'Model', 'Epsilon spent / budget', 'Last seen', 'Rejections')
BUDGET_COLUMN = COLUMNS.index('Epsilon spent / budget')
LAST_SEEN_COLUMN = COLUMNS.index('Last seen')
PLOTS = {'success': 'Success per round', 'participants': 'Participants per round',
         'epsilon': 'Largest epsilon spent after each round'}
SORT_ROLE = Qt.UserRole + 1
BAR_ROLE = Qt.UserRole + 2
BAR_OK, BAR_NEAR_LIMIT, BAR_TRACK = '#3a8f5c', '#c62828', '#d9d9d9'
DECISION_COLORS = {'deploy': '#2e7d32', 'canary': '#ef6c00', 'reject': '#c62828'}
REFRESH_MS = 500
SHOWN_REASONS = 3  # rejection reasons named in the panel (most frequent first; all in its tooltip)

Confirm = Callable[[str, str], bool]


class Actions(Protocol):
    """What the widget needs of `tensorguard_monitor.fleet_actions.FleetActions`."""

    def run_round(self, on_feedback: Callable[[RoundFeedback], None] | None = None,
                  on_done: Callable[[RoundResult], None] | None = None) -> int:
        """Send a ``RunRound`` goal; callbacks may run on another thread."""

    def revoke(self, robot_id: str, reason: str, on_done: Callable[[RevokeResult], None] | None = None) -> int:
        """Call ``RevokeRobot``; `on_done` may run on another thread."""


class RobotRow(NamedTuple):
    """One row of the robots table, as values (the cells show them formatted)."""

    robot_id: str
    activity: str
    episodes_buffered: int
    model_version: int
    epsilon_spent: float
    epsilon_budget: float
    last_seen: float | None
    rejections: int
    revoked: bool


@dataclass(frozen=True)
class BudgetBar:
    """The privacy bar of one robot: spent / budget (None without a budget), red from the warning fraction on."""

    fraction: float | None
    near_limit: bool

    @property
    def color(self) -> str:
        """The bar's fill colour."""
        return BAR_NEAR_LIMIT if self.near_limit else BAR_OK


@dataclass
class ViewSettings:
    """What rqt saves per plugin instance: the warning fraction, the plot shown, the table's columns and sort."""

    budget_warning_fraction: float = 0.8
    plot: str = 'success'
    column_widths: list[int] = field(default_factory=list)
    sort_column: int = 0
    sort_descending: bool = False

    def to_json(self) -> str:
        """One string (rqt's settings store keeps every value type as text in its ini file)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> ViewSettings:
        """Settings from `to_json`'s text; missing, malformed or out-of-range values keep their defaults."""
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
        settings = cls()
        fraction = data.get('budget_warning_fraction')
        if isinstance(fraction, (int, float)) and 0 < fraction <= 1:
            settings.budget_warning_fraction = float(fraction)
        if isinstance(data.get('plot'), str) and data['plot'] in PLOTS:
            settings.plot = data['plot']
        widths = data.get('column_widths')
        if isinstance(widths, list) and all(isinstance(w, int) and w > 0 for w in widths):
            settings.column_widths = widths[:len(COLUMNS)]
        if isinstance(data.get('sort_column'), int) and 0 <= data['sort_column'] < len(COLUMNS):
            settings.sort_column = data['sort_column']
        settings.sort_descending = data.get('sort_descending') is True
        return settings


def budget_bar(robot: RobotView, warning_fraction: float) -> BudgetBar:
    """The bar of `robot`: near the limit when it spent at least `warning_fraction` of its budget."""
    fraction = robot.budget_fraction
    return BudgetBar(fraction, fraction is not None and fraction >= warning_fraction)


def plot_data(kind: str, rounds: tuple[RoundRecord, ...]) -> PlotData:
    """The series of plot `kind` (a key of PLOTS) over the closed `rounds`; NaN where a round has no value."""
    ids = tuple(r.round_id for r in rounds)

    def values(of: Callable[[RoundRecord], float | None]) -> tuple[float, ...]:
        return tuple(math.nan if of(r) is None else float(of(r)) for r in rounds)

    if kind == 'participants':
        series = (Series('participants', values(lambda r: len(r.participants)), '#1565c0'),)
        return PlotData(ids, series)
    if kind == 'epsilon':
        series = (Series('largest epsilon', values(lambda r: max(r.epsilon_by_robot.values(), default=None)),
                         '#6a1b9a'),)
        return PlotData(ids, series)
    series = (Series('candidate success', values(lambda r: r.success_rate), '#1565c0'),
              Series('lower bound', values(lambda r: r.success_lower_bound), '#1565c0', dashed=True),
              Series('deployed', values(lambda r: r.deployed_success_rate), '#a5d6a7', width=7))
    return PlotData(ids, series, y_max=1.0)


def ask_user(parent: QWidget) -> Confirm:
    """A confirmation through a modal QMessageBox (No is the default button)."""
    def confirm(title: str, text: str) -> bool:
        answer = QMessageBox.question(parent, title, text, QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        return answer == QMessageBox.Yes
    return confirm


def _number(value: float | None, digits: int = 2) -> str:
    return '-' if value is None else f'{value:.{digits}f}'


def _epsilon(value: float) -> str:
    return f'{value:.3g}'


def _age(last_seen: float | None, now: float) -> str:
    return 'never' if last_seen is None else f'{max(0.0, now - last_seen):.1f} s ago'


class _Item(QTableWidgetItem):
    """A table cell sorted by its value (SORT_ROLE), not its text."""

    def __init__(self, text: str, key: float | str) -> None:
        super().__init__(text)
        self.setData(SORT_ROLE, key)
        self.setFlags(self.flags() & ~Qt.ItemIsEditable)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        return self.data(SORT_ROLE) < other.data(SORT_ROLE)


class _BudgetDelegate(QStyledItemDelegate):
    """Paints the privacy cell as a bar (BudgetBar in BAR_ROLE) with the cell's text over it."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index) -> None:
        bar = index.data(BAR_ROLE)
        if not isinstance(bar, BudgetBar):
            super().paint(painter, option, index)
            return
        painter.save()
        track = QRect(option.rect.adjusted(3, 3, -3, -3))
        painter.fillRect(track, QColor(BAR_TRACK))
        if bar.fraction is not None:
            filled = QRect(track)
            filled.setWidth(int(track.width() * min(max(bar.fraction, 0.0), 1.0)))
            painter.fillRect(filled, QColor(bar.color))
        painter.setPen(QColor('#000000'))
        painter.drawText(track, int(Qt.AlignCenter), index.data(Qt.DisplayRole) or '')
        painter.restore()


class FleetWidget(QWidget):
    """The plugin's whole view (see module docstring). `confirm(title, text)` asks the operator before an
    action (a QMessageBox by default; tests inject their own)."""

    round_feedback = Signal(object)
    round_done = Signal(object)
    revoke_done = Signal(object)

    def __init__(self, state: FleetState, actions: Actions, confirm: Confirm | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName('TensorGuardFleetWidget')
        self.setWindowTitle('TensorGuard Fleet')
        self._state = state
        self._actions = actions
        self._confirm = confirm or ask_user(self)
        self._snapshot: FleetSnapshot | None = None
        self._round_running = False
        self._build()
        self.round_feedback.connect(self._on_round_feedback)
        self.round_done.connect(self._on_round_done)
        self.revoke_done.connect(self._on_revoke_done)
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._tick)
        self._timer.start(REFRESH_MS)
        self.refresh()

    def sizeHint(self) -> QSize:
        """Room for the panel, the plot and a few robots (rqt sizes a new dock from it)."""
        return QSize(1050, 720)

    # Construction.
    def _build(self) -> None:
        self._fields: dict[str, QLabel] = {}
        panel = QGroupBox('Fleet')
        grid = QGridLayout(panel)
        for row, (key, title) in enumerate([('phase', 'Phase'), ('round', 'Round'),
                                            ('participants', 'Participants / quorum'), ('robots', 'Robots'),
                                            ('rejections', 'Rejections'), ('success', 'Candidate success'),
                                            ('decision', 'Gate decision'), ('deployed', 'Deployed model'),
                                            ('status', 'Fleet status')]):
            value = QLabel('-')
            value.setTextInteractionFlags(Qt.TextSelectableByMouse)
            grid.addWidget(QLabel(f'{title}:'), row, 0)
            grid.addWidget(value, row, 1)
            self._fields[key] = value
        grid.setColumnStretch(1, 1)
        bold = QFont(self.font())
        bold.setBold(True)
        self._fields['phase'].setFont(bold)

        self._plot_choice = QComboBox()
        for key, title in PLOTS.items():
            self._plot_choice.addItem(title, key)
        self._plot_choice.currentIndexChanged.connect(lambda _index: self._show_plot())
        self._plot = RoundPlot()
        plot_box = QGroupBox('Rounds')
        plot_layout = QVBoxLayout(plot_box)
        plot_layout.addWidget(self._plot_choice)
        plot_layout.addWidget(self._plot, 1)

        top = QWidget()
        top_layout = QHBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(panel, 2)
        top_layout.addWidget(plot_box, 3)

        self._table = QTableWidget(0, len(COLUMNS))
        self._table.setHorizontalHeaderLabels(list(COLUMNS))
        self._table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self._table.setSelectionMode(QAbstractItemView.SingleSelection)
        self._table.verticalHeader().setVisible(False)
        self._table.horizontalHeader().setSectionResizeMode(QHeaderView.Interactive)
        self._table.horizontalHeader().setStretchLastSection(True)
        self._table.setItemDelegateForColumn(BUDGET_COLUMN, _BudgetDelegate(self._table))
        self._table.setSortingEnabled(True)
        self._table.sortByColumn(0, Qt.AscendingOrder)
        self._table.setColumnWidth(BUDGET_COLUMN, 220)
        self._table.itemSelectionChanged.connect(self._update_buttons)

        self._warning = QSpinBox()
        self._warning.setRange(1, 100)
        self._warning.setSuffix(' % of budget')
        self._warning.setPrefix('bar red from ')
        self._warning.setValue(80)
        self._warning.valueChanged.connect(lambda _value: self.refresh())
        robots_box = QGroupBox('Robots')
        robots_layout = QVBoxLayout(robots_box)
        robots_layout.addWidget(self._table, 1)
        robots_layout.addWidget(self._warning, 0, Qt.AlignRight)

        self._run_button = QPushButton('Run round...')
        self._run_button.clicked.connect(self.request_round)
        self._reason = QLineEdit()
        self._reason.setObjectName('revoke_reason')
        self._reason.setPlaceholderText('reason for revocation (recorded in the KMS audit log)')
        self._revoke_button = QPushButton('Revoke selected robot...')
        self._revoke_button.clicked.connect(self.request_revoke)
        self._feedback = QLabel('')
        self._action_status = QLabel('')
        self._action_status.setWordWrap(True)
        actions_box = QGroupBox('Actions')
        actions_layout = QGridLayout(actions_box)
        actions_layout.addWidget(self._run_button, 0, 0)
        actions_layout.addWidget(self._feedback, 0, 1, 1, 2)
        actions_layout.addWidget(self._revoke_button, 1, 0)
        actions_layout.addWidget(self._reason, 1, 1, 1, 2)
        actions_layout.addWidget(self._action_status, 2, 0, 1, 3)
        actions_layout.setColumnStretch(2, 1)

        splitter = QSplitter(Qt.Vertical)
        splitter.addWidget(top)
        splitter.addWidget(robots_box)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.addWidget(splitter, 1)
        layout.addWidget(actions_box)
        self._update_buttons()

    # Reading the model.
    def _tick(self) -> None:
        if self._snapshot is None or self._state.version != self._snapshot.version:
            self.refresh()
        else:
            self._show_ages(time.time())

    def refresh(self) -> None:
        """Show the model's current snapshot now (the timer calls this when the model changed)."""
        snapshot = self._state.snapshot()
        self._snapshot = snapshot
        self._show_panel(snapshot)
        self._show_table(snapshot)
        self._show_plot()
        self._update_buttons()

    def _show_panel(self, s: FleetSnapshot) -> None:
        f = self._fields
        if s.status_seen_at is None:
            f['status'].setText('none received yet')
        else:
            f['status'].setText(f'last received {_age(s.status_seen_at, s.taken_at)}')
        f['phase'].setText(s.phase)
        f['round'].setText(str(s.round_id) if s.status_seen_at is not None else '-')
        f['participants'].setText(f'{len(s.participants)} / {s.quorum}'
                                  + (f'  ({", ".join(s.participants)})' if s.participants else ''))
        f['robots'].setText(f'{len(s.enrolled)} enrolled, {len(s.revoked)} revoked'
                            + (f' ({", ".join(s.revoked)})' if s.revoked else ''))
        ranked = sorted(s.rejections.items(), key=lambda item: (-item[1], item[0]))
        shown = ', '.join(f'{reason} {count}' for reason, count in ranked[:SHOWN_REASONS])
        shown += ', ...' if len(ranked) > SHOWN_REASONS else ''
        f['rejections'].setText(f'{sum(s.rejections.values())}' + (f'  ({shown})' if shown else ''))
        f['rejections'].setToolTip('\n'.join(f'{reason}: {count}' for reason, count in sorted(s.rejections.items())))
        if s.last_gate_decision:  # the aggregator reports 0.0 before its first candidate
            f['success'].setText(f'{_number(s.last_success_rate)} '
                                 f'(lower bound {_number(s.last_success_lower_bound)})')
        else:
            f['success'].setText('-')
        decision = s.last_gate_decision or '-'
        f['decision'].setText(decision)
        f['decision'].setStyleSheet(f'color: {DECISION_COLORS[decision]};' if decision in DECISION_COLORS else '')
        f['deployed'].setText(f'version {s.model_version}, success {_number(s.deployed_success_rate)}')

    def _show_table(self, s: FleetSnapshot) -> None:
        selected = self.selected_robot()
        warning = self._warning.value() / 100
        table = self._table
        table.setSortingEnabled(False)
        table.setRowCount(len(s.robots))
        for row, robot in enumerate(s.robots):
            activity = 'revoked' if robot.revoked else robot.activity
            rejections = sum(robot.rejections.values())
            cells = [
                _Item(robot.robot_id, robot.robot_id),
                _Item(activity, activity),
                _Item(str(robot.episodes_buffered), robot.episodes_buffered),
                _Item(str(robot.model_version), robot.model_version),
                _Item(f'{_epsilon(robot.epsilon_spent)} / {_epsilon(robot.epsilon_budget)}',
                      robot.budget_fraction if robot.budget_fraction is not None else -1.0),
                _Item(_age(robot.last_seen, s.taken_at), -(robot.last_seen or 0.0)),
                _Item(str(rejections), rejections),
            ]
            cells[0].setData(Qt.UserRole, robot)
            cells[BUDGET_COLUMN].setData(BAR_ROLE, budget_bar(robot, warning))
            cells[-1].setToolTip('\n'.join(f'{r}: {n}' for r, n in sorted(robot.rejections.items())) or 'none')
            for column, cell in enumerate(cells):
                if robot.revoked or robot.silent:
                    cell.setForeground(QBrush(QColor('#8a8a8a')))
                table.setItem(row, column, cell)
        table.setSortingEnabled(True)
        for row in range(table.rowCount()):
            if table.item(row, 0).text() == selected:
                table.selectRow(row)

    def _show_ages(self, now: float) -> None:
        for row in range(self._table.rowCount()):
            robot = self._table.item(row, 0).data(Qt.UserRole)
            self._table.item(row, LAST_SEEN_COLUMN).setText(_age(robot.last_seen, now))

    def _show_plot(self) -> None:
        rounds = self._snapshot.rounds if self._snapshot else ()
        self._plot.set_data(plot_data(self._plot_choice.currentData(), rounds))

    # What tests (and rqt's settings) read.
    def table_rows(self) -> list[RobotRow]:
        """The robots table, top to bottom as shown."""
        rows = []
        for row in range(self._table.rowCount()):
            robot: RobotView = self._table.item(row, 0).data(Qt.UserRole)
            rows.append(RobotRow(robot.robot_id, robot.activity, robot.episodes_buffered, robot.model_version,
                                 robot.epsilon_spent, robot.epsilon_budget, robot.last_seen,
                                 sum(robot.rejections.values()), robot.revoked))
        return rows

    def budget_bars(self) -> dict[str, BudgetBar]:
        """The privacy bar of every robot in the table."""
        return {self._table.item(row, 0).text(): self._table.item(row, BUDGET_COLUMN).data(BAR_ROLE)
                for row in range(self._table.rowCount())}

    def plot_data(self) -> PlotData:
        """What the plot shows."""
        return self._plot.data()

    def panel(self) -> dict[str, str]:
        """The fleet panel's texts by field (phase, round, participants, ..., deployed, status)."""
        return {key: label.text() for key, label in self._fields.items()}

    def feedback_text(self) -> str:
        """The running round's last feedback, as shown."""
        return self._feedback.text()

    def action_status(self) -> str:
        """The last action's outcome, as shown."""
        return self._action_status.text()

    def selected_robot(self) -> str:
        """The robot selected in the table ('' if none)."""
        rows = self._table.selectionModel().selectedRows()
        return self._table.item(rows[0].row(), 0).text() if rows else ''

    def select_robot(self, robot_id: str) -> None:
        """Select `robot_id`'s row (the revoke button acts on it)."""
        for row in range(self._table.rowCount()):
            if self._table.item(row, 0).text() == robot_id:
                self._table.selectRow(row)

    def view_settings(self) -> ViewSettings:
        """The view's settings as they are now."""
        header = self._table.horizontalHeader()
        return ViewSettings(
            budget_warning_fraction=self._warning.value() / 100, plot=self._plot_choice.currentData(),
            column_widths=[header.sectionSize(c) for c in range(len(COLUMNS))],
            sort_column=header.sortIndicatorSection(),
            sort_descending=header.sortIndicatorOrder() == Qt.DescendingOrder)

    def apply_view_settings(self, settings: ViewSettings) -> None:
        """Restore settings saved by `view_settings`."""
        self._warning.setValue(max(1, min(100, round(settings.budget_warning_fraction * 100))))
        self._plot_choice.setCurrentIndex(max(0, self._plot_choice.findData(settings.plot)))
        for column, width in enumerate(settings.column_widths):
            self._table.setColumnWidth(column, width)
        self._table.sortByColumn(settings.sort_column,
                                 Qt.DescendingOrder if settings.sort_descending else Qt.AscendingOrder)
        self.refresh()

    # Actions.
    def _update_buttons(self) -> None:
        self._run_button.setEnabled(not self._round_running)
        robot = self._snapshot.robot(self.selected_robot()) if self._snapshot else None
        self._revoke_button.setEnabled(robot is not None and not robot.revoked)

    def request_round(self) -> None:
        """Ask for confirmation, then send a ``RunRound`` goal; feedback and result are shown as they arrive."""
        if self._round_running:
            return
        quorum = self._snapshot.quorum if self._snapshot else 0
        if not self._confirm('Run a round', 'Start a federated round now through the RunRound action?\n\n'
                             f'Every enrolled robot trains and spends privacy budget; the aggregate needs '
                             f'{quorum or "the configured"} robots.'):
            return
        self._round_running = True
        self._feedback.setText('round requested...')
        self._action_status.setText('')
        self._update_buttons()
        self._actions.run_round(on_feedback=self.round_feedback.emit, on_done=self.round_done.emit)

    def request_revoke(self) -> None:
        """Ask for confirmation, then revoke the selected robot with the reason typed beside the button."""
        robot_id = self.selected_robot()
        if not robot_id:
            return
        reason = self._reason.text().strip() or 'revoked by an operator from rqt'
        if not self._confirm(f'Revoke {robot_id}', f'Revoke {robot_id} in the KMS?\n\nReason: {reason}\n\n'
                             'Its next message is refused and it leaves any open round. This cannot be undone.'):
            return
        self._action_status.setText(f'revoking {robot_id}...')
        self._actions.revoke(robot_id, reason, on_done=self.revoke_done.emit)

    def _on_round_feedback(self, feedback: RoundFeedback) -> None:
        self._feedback.setText(f'{feedback.phase}: {feedback.updates_received} / {feedback.quorum} updates, '
                               f'{feedback.seconds_remaining:.0f} s left')

    def _on_round_done(self, result: RoundResult) -> None:
        self._round_running = False
        self._feedback.setText('')
        if result.success:
            self._action_status.setText(
                f'round {result.round_id}: {result.gate_decision}, model {result.model_version}, '
                f'participants {", ".join(result.participants)}')
        else:
            self._action_status.setText(f'round {result.round_id or "-"} failed: {result.message}')
        self._update_buttons()

    def _on_revoke_done(self, result: RevokeResult) -> None:
        outcome = result.message or ('revoked' if result.success else 'refused')
        self._action_status.setText(f'revoke {result.robot_id}: {outcome}')
        if result.success:
            self._reason.clear()
        self.refresh()

    def stop(self) -> None:
        """Stop refreshing (before the plugin destroys its subscriptions)."""
        self._timer.stop()
