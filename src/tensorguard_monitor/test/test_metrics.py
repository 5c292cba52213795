"""Prometheus metrics of the fleet-state model: exposition, values, counting each round once, documentation."""
from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tensorguard_monitor.fleet_state import DiagnosticRecord, FleetState, FleetStatusRecord, RobotStatusRecord
from tensorguard_monitor.metrics import METRICS, registry

DOCS = Path(__file__).resolve().parents[3] / 'docs' / 'monitoring.md'


def samples(state_registry) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value of one scrape, parsed as Prometheus would."""
    text = generate_latest(state_registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def run_round(state: FleetState, round_id: int, start: float, outcome: str = 'aggregated') -> None:
    """Statuses of one round of robot_1 and robot_2, `start` to `start + 10` seconds."""
    base = dict(quorum=2, enrolled_robots=('robot_1', 'robot_2'), rejections={'malformed': round_id})
    state.apply_fleet_status(FleetStatusRecord(round_id, 'collecting', round_id, **base), start)
    for robot in ('robot_1', 'robot_2'):
        state.apply_robot_status(RobotStatusRecord(robot, last_round_id=round_id, epsilon_spent=0.5 * round_id,
                                                   epsilon_budget=2.0, last_update_bytes=1000), start + 1)
    if outcome == 'aggregated':
        state.apply_fleet_status(FleetStatusRecord(round_id, 'evaluating', round_id,
                                                   participants=('robot_1', 'robot_2'), **base), start + 5)
    figures = dict(last_success_rate=0.25 * round_id, last_success_lower_bound=0.1, last_gate_decision='deploy',
                   deployed_success_rate=0.25 * round_id)
    state.apply_fleet_status(FleetStatusRecord(round_id, 'idle', round_id + (outcome == 'aggregated'),
                                               **(figures if outcome == 'aggregated' else {}), **base), start + 10)


def test_a_scrape_reports_what_the_statuses_carry():
    state = FleetState()
    now = time.time()
    run_round(state, 1, now - 30)
    run_round(state, 2, now - 15)
    state.apply_diagnostics(DiagnosticRecord('tensorguard: aggregator', 2, 'KMS unusable'))
    scrape = samples(registry(state))
    assert scrape[('tensorguard_rounds_total', (('outcome', 'aggregated'),))] == 2
    assert scrape[('tensorguard_round_duration_seconds_count', ())] == 2
    assert scrape[('tensorguard_round_duration_seconds_sum', ())] == 20
    assert scrape[('tensorguard_round_duration_seconds_bucket', (('le', '10.0'),))] == 2
    assert scrape[('tensorguard_fleet_model_version', ())] == 3
    assert scrape[('tensorguard_candidate_success_rate', ())] == 0.5
    assert scrape[('tensorguard_rejections_total', (('reason', 'malformed'),))] == 2
    assert scrape[('tensorguard_robot_epsilon_spent', (('robot', 'robot_1'),))] == 1.0
    assert scrape[('tensorguard_robot_epsilon_budget', (('robot', 'robot_2'),))] == 2.0
    assert scrape[('tensorguard_update_bytes_received_total', ())] == 4000
    assert scrape[('tensorguard_gate_decision', (('decision', 'deploy'),))] == 1
    assert scrape[('tensorguard_diagnostic_level', (('name', 'tensorguard: aggregator'),))] == 2


def test_counters_count_each_round_once_across_scrapes_and_never_decrease():
    state = FleetState()
    metrics = registry(state)
    now = time.time()
    run_round(state, 1, now - 60, outcome='expired')
    first = samples(metrics)
    assert first[('tensorguard_rounds_total', (('outcome', 'expired'),))] == 1
    assert first[('tensorguard_update_bytes_received_total', ())] == 0  # no participant: nothing received
    for round_id in (2, 3, 4):
        run_round(state, round_id, now - 50 + 10 * round_id)
    later = samples(metrics)
    assert later[('tensorguard_rounds_total', (('outcome', 'expired'),))] == 1
    assert later[('tensorguard_rounds_total', (('outcome', 'aggregated'),))] == 3
    assert later[('tensorguard_round_duration_seconds_count', ())] == 4
    again = samples(metrics)
    for key in ('tensorguard_rounds_total', 'tensorguard_update_bytes_received_total'):
        assert all(again[k] == v for k, v in later.items() if k[0] == key)


def test_an_empty_model_scrapes_without_fleet_gauges():
    scrape = samples(registry(FleetState()))
    assert ('tensorguard_fleet_model_version', ()) not in scrape
    assert scrape[('tensorguard_rounds_total', (('outcome', 'aggregated'),))] == 0


def test_every_scraped_metric_is_listed_and_documented():
    state = FleetState()
    now = time.time()
    run_round(state, 1, now - 20)
    state.apply_diagnostics(DiagnosticRecord('tensorguard: aggregator', 0, 'ok'))
    text = generate_latest(registry(state)).decode()
    names = {f.name + ('_total' if f.type == 'counter' else '') for f in text_string_to_metric_families(text)}
    assert names == set(METRICS)
    documented = DOCS.read_text()
    assert not [name for name in METRICS if f'`{name}`' not in documented]
