"""The ROS-free fleet-state model: rounds detected from the status stream, history, robots, thread safety."""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from tensorguard_monitor.fleet_state import (
    DiagnosticRecord,
    FleetSnapshot,
    FleetState,
    FleetStatusRecord,
    RobotStatusRecord,
    RoundFeedback,
    RoundResult,
    replay,
)

ROBOTS = ('robot_1', 'robot_2', 'robot_3')


def status(**fields) -> FleetStatusRecord:
    """A FleetStatus of an idle three-robot fleet, with `fields` changed."""
    return replace(FleetStatusRecord(round_id=0, phase='idle', model_version=1, quorum=2, enrolled_robots=ROBOTS),
                   **fields)


def robot(robot_id: str, **fields) -> RobotStatusRecord:
    return replace(RobotStatusRecord(robot_id, epsilon_budget=10.0), **fields)


def test_an_aggregated_round_is_recorded_with_its_figures_epsilon_sizes_and_rejections():
    state = FleetState()
    state.apply_fleet_status(status(rejections={'malformed': 1}), 0.0)
    state.apply_fleet_status(status(round_id=1, phase='collecting', rejections={'malformed': 1}), 1.0)
    state.apply_fleet_status(status(round_id=1, phase='collecting', participants=('robot_1',),
                                    rejections={'malformed': 3, 'bad_signature': 1}), 2.0)
    state.apply_robot_status(robot('robot_1', last_round_id=1, epsilon_spent=2.5, last_update_bytes=1000), 2.5)
    state.apply_fleet_status(status(round_id=1, phase='evaluating', participants=('robot_1', 'robot_2')), 3.0)
    state.apply_fleet_status(status(round_id=1, model_version=2, last_success_rate=0.6, last_success_lower_bound=0.4,
                                    last_gate_decision='deploy', deployed_success_rate=0.6,
                                    rejections={'malformed': 3, 'bad_signature': 1}), 9.0)
    state.apply_robot_status(robot('robot_2', last_round_id=1, epsilon_spent=2.0, last_update_bytes=900), 9.5)
    (record,) = state.snapshot(10.0).rounds
    assert (record.round_id, record.outcome, record.participants) == (1, 'aggregated', ('robot_1', 'robot_2'))
    assert (record.success_rate, record.success_lower_bound, record.gate_decision) == (0.6, 0.4, 'deploy')
    assert (record.model_version, record.deployed_success_rate, record.duration_s) == (2, 0.6, 8.0)
    assert record.epsilon_by_robot == {'robot_1': 2.5, 'robot_2': 2.0}  # robot_2's status came after the close
    assert record.bytes_by_robot == {'robot_1': 1000, 'robot_2': 900}
    assert record.rejections == {'malformed': 2, 'bad_signature': 1}
    assert state.snapshot().outcome_counts == {'aggregated': 1}


def test_a_round_closed_while_collecting_expired_and_one_closed_after_decrypting_failed():
    state = FleetState()
    previous = dict(last_success_rate=0.5, last_success_lower_bound=0.3, last_gate_decision='deploy')
    state.apply_fleet_status(status(**previous), 0.0)
    state.apply_fleet_status(status(round_id=1, phase='collecting', participants=('robot_1',), **previous), 1.0)
    state.apply_fleet_status(status(**previous), 2.0)
    state.apply_fleet_status(status(round_id=2, phase='decrypting', participants=ROBOTS[:2], **previous), 3.0)
    state.apply_fleet_status(status(**previous), 4.0)
    rounds = state.snapshot().rounds
    assert [(r.round_id, r.outcome) for r in rounds] == [(1, 'expired'), (2, 'failed')]
    assert all(r.success_rate is None and r.success_lower_bound is None and r.gate_decision == '' for r in rounds)


def test_a_lost_idle_status_closes_the_round_when_the_next_one_appears():
    state = FleetState()
    state.apply_fleet_status(status(), 0.0)
    state.apply_fleet_status(status(round_id=1, phase='evaluating', participants=ROBOTS), 1.0)
    # The idle status after round 1 is lost; round 2's first status carries round 1's results.
    state.apply_fleet_status(status(round_id=2, phase='collecting', model_version=2, last_success_rate=0.7,
                                    last_success_lower_bound=0.5, last_gate_decision='canary'), 5.0)
    snapshot = state.snapshot()
    assert [(r.round_id, r.success_rate, r.gate_decision, r.model_version) for r in snapshot.rounds] == [
        (1, 0.7, 'canary', 2)]
    assert snapshot.open_round is not None and snapshot.open_round.round_id == 2


def test_nan_success_figures_become_none_and_json_null():
    state = FleetState()
    state.apply_fleet_status(status(deployed_success_rate=math.nan, last_success_rate=math.nan), 0.0)
    snapshot = state.snapshot()
    assert snapshot.deployed_success_rate is None and snapshot.last_success_rate is None
    text = json.dumps(snapshot.to_json(), allow_nan=False)
    assert '"deployed_success_rate": null' in text


def test_a_closed_round_is_never_reopened_or_duplicated():
    state = FleetState()
    for t, phase in enumerate(['collecting', 'idle', 'collecting', 'evaluating', 'idle']):
        state.apply_fleet_status(status(round_id=1 if phase != 'idle' else 0, phase=phase), float(t))
    assert [r.round_id for r in state.snapshot().rounds] == [1]


def test_a_resumed_round_reported_idle_with_participants_is_open():
    state = FleetState()
    state.apply_fleet_status(status(round_id=4, phase='idle', participants=('robot_1',)), 0.0)
    snapshot = state.snapshot()
    assert snapshot.open_round is not None and snapshot.open_round.round_id == 4
    assert [r.robot_id for r in snapshot.robots if r.late] == ['robot_2', 'robot_3']


def test_robots_are_silent_when_not_heard_from_and_revoked_robots_are_listed():
    state = FleetState(silent_after_s=5.0)
    state.apply_fleet_status(status(enrolled_robots=('robot_1', 'robot_2'), revoked_robots=('robot_3',)), 0.0)
    state.apply_robot_status(robot('robot_1', epsilon_spent=9.5), 100.0)
    state.apply_robot_status(robot('robot_2'), 90.0)
    robots = {r.robot_id: r for r in state.snapshot(now=101.0).robots}
    assert not robots['robot_1'].silent and robots['robot_2'].silent
    assert robots['robot_3'].revoked and robots['robot_3'].last_seen is None and robots['robot_3'].silent
    assert robots['robot_1'].budget_fraction == 0.95


def test_a_run_round_result_completes_the_round_and_the_next_status_fills_its_figures():
    state = FleetState()
    state.apply_fleet_status(status(), 0.0)
    action = state.action_started('run_round', now=0.5)
    state.apply_fleet_status(status(round_id=1, phase='collecting'), 1.0)
    state.apply_round_feedback(action, RoundFeedback('collecting', 1, 2, 30.0))
    assert state.snapshot().actions[-1].feedback == RoundFeedback('collecting', 1, 2, 30.0)
    state.apply_round_result(action, RoundResult(True, True, round_id=1, model_version=2, gate_decision='deploy',
                                                 participants=('robot_1', 'robot_2')), now=4.0)
    state.apply_fleet_status(status(round_id=1, phase='deploying', participants=('robot_1', 'robot_2')), 4.2)
    state.apply_fleet_status(status(round_id=1, model_version=2, last_success_rate=0.9, last_success_lower_bound=0.8,
                                    last_gate_decision='deploy'), 5.0)
    snapshot = state.snapshot()
    (record,) = snapshot.rounds
    assert (record.outcome, record.gate_decision, record.model_version, record.success_rate) == (
        'aggregated', 'deploy', 2, 0.9)
    assert snapshot.actions[-1].status == 'succeeded' and snapshot.outcome_counts == {'aggregated': 1}


def test_a_failed_run_round_result_overrides_the_outcome_and_a_refused_goal_adds_no_round():
    state = FleetState()
    state.apply_fleet_status(status(), 0.0)
    state.apply_fleet_status(status(round_id=1, phase='evaluating'), 1.0)
    state.apply_fleet_status(status(), 2.0)
    state.apply_round_result(state.action_started('run_round'), RoundResult(True, False, round_id=1,
                                                                            message='key service refused'))
    refused = state.action_started('run_round')
    state.apply_round_result(refused, RoundResult(False, False, message='no RunRound server'))
    snapshot = state.snapshot()
    assert [(r.round_id, r.outcome, r.message) for r in snapshot.rounds] == [(1, 'failed', 'key service refused')]
    assert snapshot.outcome_counts == {'aggregated': 0, 'failed': 1}
    assert snapshot.actions[-1].status == 'failed' and snapshot.actions[-1].detail == 'no RunRound server'


def test_history_is_bounded_but_outcome_counts_are_not():
    state = FleetState(max_rounds=3)
    for round_id in range(1, 6):
        state.apply_fleet_status(status(round_id=round_id, phase='collecting'), round_id)
        state.apply_fleet_status(status(), round_id + 0.5)
    snapshot = state.snapshot()
    assert [r.round_id for r in snapshot.rounds] == [3, 4, 5]
    assert snapshot.outcome_counts == {'expired': 5}


def test_diagnostics_keep_the_last_status_per_name():
    state = FleetState()
    state.apply_diagnostics(DiagnosticRecord('tensorguard: aggregator', 2, 'KMS unusable', 'fleet', {'phase': 'idle'}))
    state.apply_diagnostics(DiagnosticRecord('tensorguard: aggregator', 0, 'ok', 'fleet', {}))
    (diagnostic,) = state.snapshot().diagnostics
    assert (diagnostic.level_name, diagnostic.message) == ('OK', 'ok')


def test_listeners_wait_and_versions_follow_every_change():
    state = FleetState()
    seen = []
    state.add_listener(seen.append)
    state.apply_fleet_status(status())
    state.apply_robot_status(robot('robot_1'))
    assert seen == [1, 2] and state.version == 2
    waiter = threading.Thread(target=lambda: state.apply_robot_status(robot('robot_2')))
    threading.Timer(0.05, waiter.start).start()
    assert state.wait_for_change(2, timeout=5.0) == 3
    state.remove_listener(seen.append)
    state.apply_robot_status(robot('robot_3'))
    assert seen == [1, 2, 3]


def test_snapshots_are_consistent_while_other_threads_apply_messages():
    state = FleetState(max_rounds=50)

    def feed(robot_id: str) -> None:
        for n in range(1, 301):
            state.apply_robot_status(robot(robot_id, episodes_buffered=n))
            state.apply_fleet_status(status(round_id=n, phase='collecting' if n % 2 else 'idle'))

    threads = [threading.Thread(target=feed, args=(r,)) for r in ROBOTS]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        snapshot = state.snapshot()
        ids = [r.round_id for r in snapshot.rounds]
        assert ids == sorted(set(ids))
        json.dumps(snapshot.to_json())
    for thread in threads:
        thread.join()
    assert state.version == 2 * 300 * len(ROBOTS)


def test_json_round_trip_gives_the_same_snapshot():
    state = FleetState()
    state.apply_fleet_status(status(), 0.0)
    state.apply_fleet_status(status(round_id=1, phase='evaluating', participants=ROBOTS[:2]), 1.0)
    state.apply_robot_status(robot('robot_1', last_round_id=1, epsilon_spent=1.0, rejections={'malformed': 2}), 1.5)
    state.apply_fleet_status(status(model_version=2, last_success_rate=0.5, last_success_lower_bound=0.2,
                                    last_gate_decision='deploy'), 2.0)
    action = state.action_started('run_round', now=2.0)
    state.apply_round_feedback(action, RoundFeedback('collecting', 0, 2, 10.0))
    state.apply_diagnostics(DiagnosticRecord('tensorguard: key_service', 1, 'refused', 'x', {'a': 'b'}), 2.5)
    snapshot = state.snapshot(3.0)
    assert FleetSnapshot.from_json(json.loads(json.dumps(snapshot.to_json()))) == snapshot


# Any interleaving of the aggregator's statuses (some lost) with robot statuses gives a consistent history.
@dataclass(frozen=True)
class TrueRound:
    round_id: int
    outcome: str
    participants: tuple[str, ...]


@st.composite
def fleet_runs(draw):
    """A true history of rounds and the status stream it produces: one round after another, each
    status possibly repeated (1 Hz) or lost (best effort), robot statuses interleaved at random."""
    rounds, stream = [], []
    model, success, round_id = 1, 0.0, 0
    stream.append(status(model_version=model, last_success_rate=success))
    for _ in range(draw(st.integers(0, 6))):
        round_id += draw(st.integers(1, 2))
        outcome = draw(st.sampled_from(['aggregated', 'failed', 'expired']))
        participants = tuple(draw(st.lists(st.sampled_from(ROBOTS), unique=True, max_size=3)))
        phases = {'aggregated': ['collecting', 'decrypting', 'evaluating', 'deploying'],
                  'failed': ['collecting', 'decrypting'], 'expired': ['collecting']}[outcome]
        for phase in phases:
            stream += [status(round_id=round_id, phase=phase, participants=participants, model_version=model,
                              last_success_rate=success)] * draw(st.integers(1, 3))
        if outcome == 'aggregated':
            model += 1
            success = draw(st.floats(0, 1))
        stream += [status(round_id=round_id, model_version=model, last_success_rate=success)] * draw(
            st.integers(0, 2))
        rounds.append(TrueRound(round_id, outcome, participants))
    stream.append(status(round_id=round_id, model_version=model, last_success_rate=success))
    lost = draw(st.lists(st.booleans(), min_size=len(stream), max_size=len(stream)))
    lost[0] = lost[-1] = False
    kept = [s for s, dropped in zip(stream, lost) if not dropped]
    robot_ids = [0] + [r.round_id for r in rounds]
    robot_stream = draw(st.lists(st.builds(lambda r, k: robot(r, last_round_id=k, epsilon_spent=float(k)),
                                           st.sampled_from(ROBOTS), st.sampled_from(robot_ids)), max_size=10))
    merged = draw(st.permutations(kept + robot_stream))
    fleet = iter(kept)
    ordered = [next(fleet) if isinstance(m, FleetStatusRecord) else m for m in merged]  # the aggregator's own order
    return rounds, ordered, not any(lost)


@settings(max_examples=150, deadline=None)
@given(fleet_runs())
def test_any_interleaving_gives_a_consistent_history(run):
    rounds, stream, complete = run
    state = replay((float(t), record) for t, record in enumerate(stream))
    history = state.snapshot().rounds
    ids = [r.round_id for r in history]
    truth = {r.round_id: r for r in rounds}
    assert ids == sorted(set(ids)), 'rounds are unique and in order'
    assert set(ids) <= set(truth), 'no round is invented'
    for record in history:
        assert all(eps == float(record.round_id) for eps in record.epsilon_by_robot.values())
        assert record.success_rate is None or record.outcome == 'aggregated'
    if complete:
        assert [(r.round_id, r.outcome, r.participants) for r in history] == [
            (r.round_id, r.outcome, r.participants) for r in rounds]
        assert state.snapshot().open_round is None
