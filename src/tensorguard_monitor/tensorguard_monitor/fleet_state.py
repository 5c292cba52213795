"""The fleet as the monitoring views see it: one ROS-free, thread-safe model with history.

`FleetState` folds in what the nodes publish, as plain records mirroring the messages
(`FleetStatusRecord` for ``FleetStatus``, `RobotStatusRecord` for each robot's ``RobotStatus``,
`DiagnosticRecord` for each ``/diagnostics`` status) and what the operator's actions returned
(`RoundFeedback`, `RoundResult`, `RevokeResult`), and hands out immutable snapshots (`FleetSnapshot`).
The web dashboard and the rqt plugin read only snapshots; `tensorguard_monitor.ros_feed` and
`tensorguard_monitor.fleet_actions` feed the model from ROS.

How a round is seen in the status stream (``FleetStatus`` every second, best effort):

- a round is *open* while the status shows a phase other than ``idle``, or accepted participants
  (an aggregator that resumed a round after a restart reports ``idle`` with its participants);
- it *closes* when the status is idle with no participants, or when an open round with another
  ``round_id`` appears (the idle status in between was lost);
- its outcome is ``aggregated`` if the status reached ``evaluating`` or ``deploying``, the deployed
  model version advanced, or the last candidate's success, lower bound or gate decision changed;
  otherwise ``failed`` if it reached ``decrypting``, else ``expired`` (closed in ``collecting``:
  no quorum by the deadline). Success, lower bound and gate decision are the round's only when it
  was aggregated (``None`` / ``''`` otherwise; NaN in a message becomes ``None``);
- a ``RunRound`` result for the round (`apply_round_result`) is authoritative and overrides the
  outcome, decision, participants and model version;
- a round id is recorded at most once, and a status naming a round already closed never reopens it.

Per robot and round: a robot's status names the last round it contributed to (``last_round_id``);
the epsilon it reports while naming round R is its spend after R, the update size its update's.
Rounds take them from there, so a robot status arriving after the round closed still counts.

Times are the model's receipt times (``time.time()`` unless the caller passes `now`), so round
durations and "last seen" use one clock whatever the senders' clocks say.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

ACTIVE_PHASES = ('collecting', 'decrypting', 'evaluating', 'canary', 'deploying')
OUTCOMES = ('aggregated', 'failed', 'expired')
DIAGNOSTIC_LEVELS = {0: 'OK', 1: 'WARN', 2: 'ERROR', 3: 'STALE'}


def finite(value: float | None) -> float | None:
    """`value`, or None for NaN, infinities and None (messages use NaN for "not evaluated")."""
    return value if value is not None and math.isfinite(value) else None


# Input records: the messages' fields, without ROS.
@dataclass(frozen=True)
class FleetStatusRecord:
    """One ``FleetStatus`` (see tensorguard_msgs/msg/FleetStatus.msg); `rejections` maps reason -> count."""

    round_id: int
    phase: str
    model_version: int
    quorum: int
    participants: tuple[str, ...] = ()
    enrolled_robots: tuple[str, ...] = ()
    revoked_robots: tuple[str, ...] = ()
    rejections: Mapping[str, int] = field(default_factory=dict)
    last_success_rate: float = math.nan
    last_success_lower_bound: float = math.nan
    last_gate_decision: str = ''
    deployed_success_rate: float = math.nan
    stamp: float = 0.0


@dataclass(frozen=True)
class RobotStatusRecord:
    """One ``RobotStatus`` (see tensorguard_msgs/msg/RobotStatus.msg); `rejections` maps reason -> count."""

    robot_id: str
    lifecycle_state: str = 'active'
    activity: str = 'idle'
    episodes_buffered: int = 0
    frames_buffered: int = 0
    store_bytes: int = 0
    model_version: int = 0
    last_round_id: int = 0
    last_update_bytes: int = 0
    epsilon_spent: float = 0.0
    epsilon_budget: float = 0.0
    rejections: Mapping[str, int] = field(default_factory=dict)
    stamp: float = 0.0


@dataclass(frozen=True)
class DiagnosticRecord:
    """One ``diagnostic_msgs/DiagnosticStatus``: `level` 0 OK, 1 WARN, 2 ERROR, 3 STALE."""

    name: str
    level: int
    message: str = ''
    hardware_id: str = ''
    values: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundFeedback:
    """One ``RunRound`` feedback message."""

    phase: str
    updates_received: int
    quorum: int
    seconds_remaining: float


@dataclass(frozen=True)
class RoundResult:
    """How a ``RunRound`` goal ended; `accepted` False when the server refused or was unreachable."""

    accepted: bool
    success: bool
    round_id: int = 0
    model_version: int = 0
    gate_decision: str = ''
    participants: tuple[str, ...] = ()
    message: str = ''


@dataclass(frozen=True)
class RevokeResult:
    """The answer of ``RevokeRobot`` (`success` False also when the service was unreachable)."""

    robot_id: str
    success: bool
    message: str = ''


# Views: what a snapshot holds.
@dataclass(frozen=True)
class RobotView:
    """One robot as the dashboards show it.

    `last_seen` is the receipt time of its last status (None: enrolled but never heard from);
    `silent` when that is older than the model's `silent_after_s` (or never); `late` when a round is
    open, the robot is enrolled and not revoked, and its update has not been accepted yet.
    """

    robot_id: str
    lifecycle_state: str
    activity: str
    episodes_buffered: int
    model_version: int
    epsilon_spent: float
    epsilon_budget: float
    last_round_id: int
    last_update_bytes: int
    last_seen: float | None
    silent: bool
    late: bool
    enrolled: bool
    revoked: bool
    rejections: Mapping[str, int]

    @property
    def budget_fraction(self) -> float | None:
        """Epsilon spent as a fraction of the budget (None without a budget)."""
        return self.epsilon_spent / self.epsilon_budget if self.epsilon_budget > 0 else None


@dataclass(frozen=True)
class RoundRecord:
    """One closed round. `success_rate`, `success_lower_bound` are None and `gate_decision` is ''
    unless the round was aggregated; `epsilon_by_robot` / `bytes_by_robot`: each robot's spend
    after the round and its update's size, from robot statuses naming this round."""

    round_id: int
    outcome: str
    participants: tuple[str, ...]
    success_rate: float | None
    success_lower_bound: float | None
    gate_decision: str
    model_version: int
    deployed_success_rate: float | None
    epsilon_by_robot: Mapping[str, float]
    bytes_by_robot: Mapping[str, int]
    rejections: Mapping[str, int]
    started_at: float
    ended_at: float
    message: str = ''

    @property
    def duration_s(self) -> float:
        """Seconds from the first status showing the round open to the one showing it closed."""
        return max(0.0, self.ended_at - self.started_at)


@dataclass(frozen=True)
class OpenRoundView:
    """The round open now, as far as the status shows it."""

    round_id: int
    phase: str
    participants: tuple[str, ...]
    quorum: int
    started_at: float


@dataclass(frozen=True)
class DiagnosticView:
    """The last ``/diagnostics`` status of one name."""

    name: str
    level: int
    message: str
    hardware_id: str
    values: Mapping[str, str]
    last_seen: float

    @property
    def level_name(self) -> str:
        """OK, WARN, ERROR or STALE."""
        return DIAGNOSTIC_LEVELS.get(self.level, str(self.level))


@dataclass(frozen=True)
class ActionRecord:
    """One operator action (``run_round`` or ``revoke``) and how far it got.

    `status` is ``running``, ``succeeded`` or ``failed``; `feedback` the last ``RunRound`` feedback."""

    action_id: int
    kind: str
    target: str
    status: str
    detail: str
    started_at: float
    finished_at: float | None
    feedback: RoundFeedback | None = None
    round_id: int = 0


@dataclass(frozen=True)
class FleetSnapshot:
    """Everything the views show, at `taken_at`. `version` increases with every change of the model.

    `status_seen_at` is None until the first ``FleetStatus``; success figures are None until
    evaluated; `outcome_counts` counts every round closed since the model started (also those
    dropped from the bounded `rounds` history)."""

    taken_at: float
    version: int
    status_seen_at: float | None
    round_id: int
    phase: str
    model_version: int
    quorum: int
    participants: tuple[str, ...]
    enrolled: tuple[str, ...]
    revoked: tuple[str, ...]
    rejections: Mapping[str, int]
    last_success_rate: float | None
    last_success_lower_bound: float | None
    last_gate_decision: str
    deployed_success_rate: float | None
    open_round: OpenRoundView | None
    robots: tuple[RobotView, ...]
    rounds: tuple[RoundRecord, ...]
    outcome_counts: Mapping[str, int]
    diagnostics: tuple[DiagnosticView, ...]
    actions: tuple[ActionRecord, ...]

    def robot(self, robot_id: str) -> RobotView | None:
        """The robot named `robot_id`, if known."""
        return next((r for r in self.robots if r.robot_id == robot_id), None)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN and infinities as None); `from_json` reads it back."""
        data = asdict(self)
        for robot, view in zip(data['robots'], self.robots):
            robot['budget_fraction'] = view.budget_fraction
        for record, view in zip(data['rounds'], self.rounds):
            record['duration_s'] = view.duration_s
        for diagnostic, view in zip(data['diagnostics'], self.diagnostics):
            diagnostic['level_name'] = view.level_name
        return _json_safe(data)

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> FleetSnapshot:
        """The snapshot `to_json` produced (e.g. one saved by a test run, for a replayed screenshot)."""
        def view(kind: type, item: Mapping[str, Any], **extra: Any) -> Any:
            names = kind.__dataclass_fields__
            return kind(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in item.items() if k in names},
                        **extra)

        fields = {k: v for k, v in data.items() if k in FleetSnapshot.__dataclass_fields__}
        for name in ('participants', 'enrolled', 'revoked'):
            fields[name] = tuple(fields[name])
        fields['open_round'] = view(OpenRoundView, data['open_round']) if data['open_round'] else None
        fields['robots'] = tuple(view(RobotView, r) for r in data['robots'])
        fields['rounds'] = tuple(view(RoundRecord, r) for r in data['rounds'])
        fields['diagnostics'] = tuple(view(DiagnosticView, d) for d in data['diagnostics'])
        fields['actions'] = tuple(
            view(ActionRecord, {k: v for k, v in a.items() if k != 'feedback'},
                 feedback=view(RoundFeedback, a['feedback']) if a.get('feedback') else None)
            for a in data['actions'])
        return FleetSnapshot(**fields)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@dataclass
class _Robot:
    """Mutable per-robot state behind a `RobotView`."""

    status: RobotStatusRecord
    last_seen: float
    epsilon_by_round: dict[int, float] = field(default_factory=dict)
    bytes_by_round: dict[int, int] = field(default_factory=dict)


@dataclass
class _OpenRound:
    """The round the status shows open, with what it looked like when it opened."""

    round_id: int
    started_at: float
    phases: set[str]
    participants: tuple[str, ...]
    quorum: int
    baseline: tuple[int, float | None, float | None, str]
    rejections_before: Mapping[str, int]


@dataclass
class _Round:
    """Mutable closed round behind a `RoundRecord` (an action's result may still complete it)."""

    round_id: int
    outcome: str
    participants: tuple[str, ...]
    success_rate: float | None
    success_lower_bound: float | None
    gate_decision: str
    model_version: int
    deployed_success_rate: float | None
    rejections: dict[str, int]
    started_at: float
    ended_at: float
    message: str = ''


Listener = Callable[[int], None]


class FleetState:
    """Thread-safe model of the fleet (see module docstring).

    Every ``apply_*`` may be called from any thread (e.g. rclpy executor callbacks) while views call
    `snapshot` from theirs. After each change the `version` increases; `wait_for_change` blocks until
    it does, and listeners added with `add_listener` are called with the new version, outside the
    lock, on the thread that applied the change (a view marshals to its own thread, e.g.
    ``loop.call_soon_threadsafe`` or a Qt signal; a listener must not block).

    `silent_after_s`: a robot whose last status is older is `silent`. `max_rounds` / `max_actions`
    bound the history kept.
    """

    def __init__(self, silent_after_s: float = 5.0, max_rounds: int = 1000, max_actions: int = 50) -> None:
        self.silent_after_s = silent_after_s
        self._lock = threading.Condition(threading.RLock())
        self._listeners: list[Listener] = []
        self._version = 0
        self._fleet: FleetStatusRecord | None = None
        self._fleet_seen_at: float | None = None
        self._robots: dict[str, _Robot] = {}
        self._diagnostics: dict[str, DiagnosticView] = {}
        self._open: _OpenRound | None = None
        self._pending: int | None = None  # a round closed by its action result, awaiting the next status
        self._rounds: dict[int, _Round] = {}
        self._round_order: deque[int] = deque()
        self._max_rounds = max_rounds
        self._outcome_counts: dict[str, int] = {}
        self._actions: deque[ActionRecord] = deque(maxlen=max_actions)
        self._next_action = 1

    # Change notification.
    @property
    def version(self) -> int:
        """Increases by one with every change."""
        with self._lock:
            return self._version

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(version)` after every change (on the changing thread, outside the lock)."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling `listener`; unknown listeners are ignored."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def wait_for_change(self, version: int, timeout: float | None = None) -> int:
        """Block until the version differs from `version` (or `timeout` passes); return the version."""
        with self._lock:
            self._lock.wait_for(lambda: self._version != version, timeout)
            return self._version

    def _changed(self) -> None:
        """Bump the version (the caller holds the lock); listeners run in `_notify` after release."""
        self._version += 1
        self._lock.notify_all()

    def _notify(self) -> None:
        with self._lock:
            version, listeners = self._version, list(self._listeners)
        for listener in listeners:
            listener(version)

    # Inputs.
    def apply_fleet_status(self, rec: FleetStatusRecord, now: float | None = None) -> None:
        """Fold in one ``FleetStatus``: current figures, and rounds opening and closing."""
        now = time.time() if now is None else now
        with self._lock:
            self._track_round(rec, now)
            self._fleet, self._fleet_seen_at = rec, now
            self._changed()
        self._notify()

    def apply_robot_status(self, rec: RobotStatusRecord, now: float | None = None) -> None:
        """Fold in one robot's ``RobotStatus``."""
        now = time.time() if now is None else now
        with self._lock:
            robot = self._robots.get(rec.robot_id)
            if robot is None:
                robot = self._robots[rec.robot_id] = _Robot(rec, now)
            robot.status, robot.last_seen = rec, now
            if rec.last_round_id > 0:
                robot.epsilon_by_round[rec.last_round_id] = rec.epsilon_spent
                robot.bytes_by_round[rec.last_round_id] = rec.last_update_bytes
            self._changed()
        self._notify()

    def apply_diagnostics(self, rec: DiagnosticRecord, now: float | None = None) -> None:
        """Fold in one ``/diagnostics`` status (the last one per name is kept)."""
        now = time.time() if now is None else now
        with self._lock:
            self._diagnostics[rec.name] = DiagnosticView(rec.name, rec.level, rec.message, rec.hardware_id,
                                                         dict(rec.values), now)
            self._changed()
        self._notify()

    def action_started(self, kind: str, target: str = '', now: float | None = None) -> int:
        """Record that an operator action (``run_round``, ``revoke``) was sent; returns its id."""
        now = time.time() if now is None else now
        with self._lock:
            action_id = self._next_action
            self._next_action += 1
            self._actions.append(ActionRecord(action_id, kind, target, 'running', '', now, None))
            self._changed()
        self._notify()
        return action_id

    def apply_round_feedback(self, action_id: int, feedback: RoundFeedback) -> None:
        """Record the latest ``RunRound`` feedback of action `action_id`."""
        self._update_action(action_id, feedback=feedback, detail=feedback.phase)

    def apply_round_result(self, action_id: int, result: RoundResult, now: float | None = None) -> None:
        """Record how ``RunRound`` action `action_id` ended; a result naming a round completes its record."""
        now = time.time() if now is None else now
        with self._lock:
            if result.accepted and result.round_id > 0:
                self._record_result(result, now)
            detail = result.message or (f'round {result.round_id}: {result.gate_decision or "no aggregate"}'
                                        if result.accepted else 'refused')
            self._set_action(action_id, status='succeeded' if result.success else 'failed', detail=detail,
                             finished_at=now, round_id=result.round_id)
        self._notify()

    def apply_revoke_result(self, action_id: int, result: RevokeResult, now: float | None = None) -> None:
        """Record how ``RevokeRobot`` action `action_id` ended."""
        now = time.time() if now is None else now
        self._update_action(action_id, status='succeeded' if result.success else 'failed', detail=result.message,
                            finished_at=now)

    def _update_action(self, action_id: int, **changes: Any) -> None:
        with self._lock:
            self._set_action(action_id, **changes)
        self._notify()

    def _set_action(self, action_id: int, **changes: Any) -> None:
        for i, action in enumerate(self._actions):
            if action.action_id == action_id:
                self._actions[i] = ActionRecord(**{**action.__dict__, **changes})
                self._changed()
                return

    # Rounds.
    def _track_round(self, rec: FleetStatusRecord, now: float) -> None:
        """Open and close rounds from one status (the caller holds the lock)."""
        active = rec.phase in ACTIVE_PHASES or bool(rec.participants)
        if self._pending is not None and (not active or rec.round_id != self._pending):
            self._fill_figures(self._rounds.get(self._pending), rec)
            self._pending = None
        closed = self._open is not None and (not active or rec.round_id != self._open.round_id)
        if closed:
            self._close(rec, now)
        if active and self._open is None and rec.round_id not in self._rounds:
            before = rec if closed or self._fleet is None else self._fleet
            self._open = _OpenRound(rec.round_id, now, set(), (), rec.quorum, _baseline(rec), dict(before.rejections))
        if active and self._open is not None:
            self._open.phases.add(rec.phase)
            self._open.participants = tuple(rec.participants)
            self._open.quorum = rec.quorum

    def _close(self, closing: FleetStatusRecord, now: float) -> None:
        """Close the open round with what `closing` (the status that ended it) shows."""
        opened, self._open = self._open, None
        after = _baseline(closing)
        aggregated = (bool(opened.phases & {'evaluating', 'canary', 'deploying'}) or after[0] > opened.baseline[0]
                      or after[1:] != opened.baseline[1:])
        outcome = 'aggregated' if aggregated else 'failed' if 'decrypting' in opened.phases else 'expired'
        rejections = {r: n - opened.rejections_before.get(r, 0) for r, n in closing.rejections.items()
                      if n > opened.rejections_before.get(r, 0)}
        record = _Round(opened.round_id, outcome, opened.participants, None, None, '', closing.model_version, None,
                        rejections, opened.started_at, now)
        self._fill_figures(record, closing)
        self._add_round(record)

    @staticmethod
    def _fill_figures(record: _Round | None, closing: FleetStatusRecord) -> None:
        """Take a closed round's figures from the first status after it: the deployed model and, if it
        was aggregated, the candidate's success, lower bound and gate decision."""
        if record is None:
            return
        record.model_version = max(record.model_version, closing.model_version)
        record.deployed_success_rate = finite(closing.deployed_success_rate)
        if record.outcome == 'aggregated':
            record.success_rate = finite(closing.last_success_rate)
            record.success_lower_bound = finite(closing.last_success_lower_bound)
            record.gate_decision = record.gate_decision or closing.last_gate_decision

    def _record_result(self, result: RoundResult, now: float) -> None:
        """A ``RunRound`` result completes its round's record. If the status still shows the round
        open, it is closed now and takes its figures from the next status."""
        if self._open is not None and self._open.round_id == result.round_id:
            self._open.phases.add('evaluating' if result.success else 'decrypting')
            self._close(self._fleet, now)
            self._pending = result.round_id
        record = self._rounds.get(result.round_id)
        if record is None:
            record = _Round(result.round_id, '', (), None, None, '', 0, None, {}, now, now)
            self._add_round(record)
        outcome = 'aggregated' if result.success else ('expired' if record.outcome == 'expired' else 'failed')
        if outcome != record.outcome:
            if record.outcome:
                self._outcome_counts[record.outcome] -= 1
            self._outcome_counts[outcome] = self._outcome_counts.get(outcome, 0) + 1
            record.outcome = outcome
        record.participants = tuple(result.participants) or record.participants
        record.gate_decision = result.gate_decision
        record.model_version = result.model_version or record.model_version
        record.message = result.message
        if not result.success:
            record.success_rate = record.success_lower_bound = None

    def _add_round(self, record: _Round) -> None:
        self._rounds[record.round_id] = record
        self._round_order.append(record.round_id)
        if record.outcome:
            self._outcome_counts[record.outcome] = self._outcome_counts.get(record.outcome, 0) + 1
        while len(self._round_order) > self._max_rounds:
            del self._rounds[self._round_order.popleft()]

    # Output.
    def snapshot(self, now: float | None = None) -> FleetSnapshot:
        """An immutable view of everything, at `now` (default: the current time)."""
        now = time.time() if now is None else now
        with self._lock:
            fleet = self._fleet or FleetStatusRecord(0, 'unknown', 0, 0)
            enrolled, revoked = set(fleet.enrolled_robots), set(fleet.revoked_robots)
            return FleetSnapshot(
                taken_at=now, version=self._version, status_seen_at=self._fleet_seen_at,
                round_id=fleet.round_id, phase=fleet.phase, model_version=fleet.model_version,
                quorum=fleet.quorum, participants=tuple(fleet.participants),
                enrolled=tuple(fleet.enrolled_robots), revoked=tuple(fleet.revoked_robots),
                rejections=dict(fleet.rejections), last_success_rate=finite(fleet.last_success_rate),
                last_success_lower_bound=finite(fleet.last_success_lower_bound),
                last_gate_decision=fleet.last_gate_decision,
                deployed_success_rate=finite(fleet.deployed_success_rate),
                open_round=(OpenRoundView(self._open.round_id, fleet.phase, self._open.participants,
                                          self._open.quorum, self._open.started_at) if self._open else None),
                robots=tuple(self._robot_view(robot_id, enrolled, revoked, now)
                             for robot_id in sorted(set(self._robots) | enrolled | revoked)),
                rounds=tuple(self._round_record(self._rounds[r]) for r in sorted(self._rounds)),
                outcome_counts=dict(self._outcome_counts),
                diagnostics=tuple(self._diagnostics[name] for name in sorted(self._diagnostics)),
                actions=tuple(self._actions))

    def _robot_view(self, robot_id: str, enrolled: set[str], revoked: set[str], now: float) -> RobotView:
        robot = self._robots.get(robot_id)
        status = robot.status if robot else RobotStatusRecord(robot_id, lifecycle_state='unknown', activity='unknown')
        last_seen = robot.last_seen if robot else None
        late = (self._open is not None and robot_id in enrolled and robot_id not in revoked
                and robot_id not in self._open.participants)
        return RobotView(
            robot_id=robot_id, lifecycle_state=status.lifecycle_state, activity=status.activity,
            episodes_buffered=status.episodes_buffered, model_version=status.model_version,
            epsilon_spent=status.epsilon_spent, epsilon_budget=status.epsilon_budget,
            last_round_id=status.last_round_id, last_update_bytes=status.last_update_bytes, last_seen=last_seen,
            silent=last_seen is None or now - last_seen > self.silent_after_s, late=late,
            enrolled=robot_id in enrolled, revoked=robot_id in revoked, rejections=dict(status.rejections))

    def _round_record(self, record: _Round) -> RoundRecord:
        epsilon = {r: robot.epsilon_by_round[record.round_id] for r, robot in sorted(self._robots.items())
                   if record.round_id in robot.epsilon_by_round}
        sizes = {r: robot.bytes_by_round[record.round_id] for r, robot in sorted(self._robots.items())
                 if record.round_id in robot.bytes_by_round}
        return RoundRecord(
            round_id=record.round_id, outcome=record.outcome, participants=record.participants,
            success_rate=record.success_rate, success_lower_bound=record.success_lower_bound,
            gate_decision=record.gate_decision, model_version=record.model_version,
            deployed_success_rate=record.deployed_success_rate, epsilon_by_robot=epsilon, bytes_by_robot=sizes,
            rejections=dict(record.rejections), started_at=record.started_at, ended_at=record.ended_at,
            message=record.message)


def _baseline(rec: FleetStatusRecord) -> tuple[int, float | None, float | None, str]:
    """What changes when a round is aggregated: model version, last success, its bound, the decision."""
    return (rec.model_version, finite(rec.last_success_rate), finite(rec.last_success_lower_bound),
            rec.last_gate_decision)


def replay(records: Iterable[tuple[float, Any]], state: FleetState | None = None) -> FleetState:
    """Fold `(receipt time, record)` pairs into `state` (a new one by default), in order; for tests and replays."""
    state = state or FleetState()
    appliers = {FleetStatusRecord: state.apply_fleet_status, RobotStatusRecord: state.apply_robot_status,
                DiagnosticRecord: state.apply_diagnostics}
    for now, record in records:
        appliers[type(record)](record, now)
    return state
