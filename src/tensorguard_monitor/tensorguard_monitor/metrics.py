"""Prometheus metrics of a `FleetState`, computed from its snapshot at every scrape (ROS-free).

`FleetMetrics(state)` is a ``prometheus_client`` collector; `registry(state)` gives a registry
holding only it, for ``/metrics``. Every name and what it is derived from is in `METRICS` (and
docs/monitoring.md). Gauges are the latest status; counters and the duration histogram count each
closed round once, when a scrape first sees it (a robot's update size counts once per round and
robot, also when its status arrives after the round closed). The aggregator's rejection counters
are its own (they restart at 0 with the aggregator; Prometheus treats that as a counter reset).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from tensorguard_monitor.fleet_state import OUTCOMES, FleetSnapshot, FleetState

DURATION_BUCKETS = (5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)

# Name (as scraped) -> (type, help, source). Counters are listed with their ``_total`` sample name.
METRICS: dict[str, tuple[str, str, str]] = {
    'tensorguard_fleet_round_id': ('gauge', 'Current or last round id.', 'FleetStatus.round_id'),
    'tensorguard_fleet_phase': ('gauge', "1 for the aggregator's current phase.", 'FleetStatus.phase'),
    'tensorguard_fleet_model_version': ('gauge', 'Model version deployed to the fleet.', 'FleetStatus.model_version'),
    'tensorguard_fleet_quorum': ('gauge', 'Robots needed for the current round.', 'FleetStatus.quorum'),
    'tensorguard_fleet_participants': ('gauge', 'Robots whose updates were accepted this round.',
                                       'len(FleetStatus.participants)'),
    'tensorguard_fleet_enrolled_robots': ('gauge', 'Robots enrolled (not revoked) in the KMS.',
                                          'len(FleetStatus.enrolled_robots)'),
    'tensorguard_fleet_revoked_robots': ('gauge', 'Robots revoked in the KMS.', 'len(FleetStatus.revoked_robots)'),
    'tensorguard_fleet_status_age_seconds': ('gauge', 'Seconds since the last FleetStatus arrived.',
                                             'receipt time of the last FleetStatus'),
    'tensorguard_candidate_success_rate': ('gauge', 'Evaluated success rate of the last candidate model.',
                                           'FleetStatus.last_success_rate'),
    'tensorguard_candidate_success_lower_bound': ('gauge', 'Lower credible bound of that success rate.',
                                                  'FleetStatus.last_success_lower_bound'),
    'tensorguard_deployed_success_rate': ('gauge', 'Evaluated success rate of the model the fleet runs.',
                                          'FleetStatus.deployed_success_rate'),
    'tensorguard_gate_decision': ('gauge', "1 for the gate's last decision.", 'FleetStatus.last_gate_decision'),
    'tensorguard_rounds_total': ('counter', 'Rounds closed, by outcome (aggregated, failed, expired).',
                                 'rounds detected in the FleetStatus stream, completed by RunRound results'),
    'tensorguard_round_duration_seconds': ('histogram', 'Seconds from a round opening to its closing.',
                                           'receipt times of the FleetStatus messages showing it open and closed'),
    'tensorguard_rejections_total': ('counter', 'Messages and requests the aggregator refused, by reason.',
                                     'FleetStatus.rejections'),
    'tensorguard_robot_rejections_total': ('counter', 'Messages a robot refused, by reason.',
                                           'RobotStatus.rejections'),
    'tensorguard_update_bytes_received_total': ('counter', 'Bytes of accepted robot updates, over closed rounds.',
                                                'RobotStatus.last_update_bytes of each participant, per round'),
    'tensorguard_robot_last_update_bytes': ('gauge', "Size of the robot's last update package.",
                                            'RobotStatus.last_update_bytes'),
    'tensorguard_robot_epsilon_spent': ('gauge', 'Privacy spent by the robot (epsilon).', 'RobotStatus.epsilon_spent'),
    'tensorguard_robot_epsilon_budget': ('gauge', "The robot's privacy budget (epsilon).",
                                         'RobotStatus.epsilon_budget'),
    'tensorguard_robot_episodes_buffered': ('gauge', "Episodes in the robot's store.",
                                            'RobotStatus.episodes_buffered'),
    'tensorguard_robot_model_version': ('gauge', 'Model version the robot runs.', 'RobotStatus.model_version'),
    'tensorguard_robot_last_round_id': ('gauge', 'Last round the robot contributed to.', 'RobotStatus.last_round_id'),
    'tensorguard_robot_status_age_seconds': ('gauge', "Seconds since the robot's last status arrived.",
                                             'receipt time of the last RobotStatus'),
    'tensorguard_robot_silent': ('gauge', '1 if the robot has not reported for silent_after_s (or never).',
                                 'receipt time of the last RobotStatus'),
    'tensorguard_robot_late': ('gauge', "1 if a round is open and the robot's update is not yet accepted.",
                               'FleetStatus.participants, enrolled_robots'),
    'tensorguard_robot_revoked': ('gauge', '1 if the robot is revoked.', 'FleetStatus.revoked_robots'),
    'tensorguard_diagnostic_level': ('gauge', 'Level of the last /diagnostics status: 0 OK, 1 WARN, 2 ERROR, '
                                              '3 STALE.', 'diagnostic_msgs/DiagnosticStatus.level'),
}


def _family_name(name: str) -> str:
    return name.removesuffix('_total')


class FleetMetrics(Collector):
    """A collector reading `state` at every scrape (see module docstring)."""

    def __init__(self, state: FleetState) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._rounds_counted: set[int] = set()
        self._bytes_counted: set[tuple[int, str]] = set()
        self._outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._bucket_counts = [0] * (len(DURATION_BUCKETS) + 1)
        self._duration_sum = 0.0
        self._bytes_total = 0

    def collect(self) -> Iterator[Metric]:
        """The metric families for one scrape."""
        snapshot = self.state.snapshot()
        with self._lock:
            self._count_rounds(snapshot)
            yield from self._cumulative()
        yield from self._fleet(snapshot)
        yield from self._robots(snapshot)

    def _count_rounds(self, snapshot: FleetSnapshot) -> None:
        """Fold rounds (and per-round update sizes) not counted yet into the cumulative figures."""
        for record in snapshot.rounds:
            if record.round_id not in self._rounds_counted and record.outcome:
                self._rounds_counted.add(record.round_id)
                self._outcomes[record.outcome] = self._outcomes.get(record.outcome, 0) + 1
                index = next((i for i, bound in enumerate(DURATION_BUCKETS) if record.duration_s <= bound),
                             len(DURATION_BUCKETS))
                self._bucket_counts[index] += 1
                self._duration_sum += record.duration_s
            for robot, size in record.bytes_by_robot.items():
                if robot in record.participants and (record.round_id, robot) not in self._bytes_counted:
                    self._bytes_counted.add((record.round_id, robot))
                    self._bytes_total += size
        if snapshot.rounds:  # forget rounds that left the model's history
            oldest = snapshot.rounds[0].round_id
            self._rounds_counted = {r for r in self._rounds_counted if r >= oldest}
            self._bytes_counted = {k for k in self._bytes_counted if k[0] >= oldest}

    def _cumulative(self) -> Iterator[Metric]:
        rounds = self._counter('tensorguard_rounds_total', ['outcome'])
        for outcome, count in sorted(self._outcomes.items()):
            rounds.add_metric([outcome], count)
        yield rounds
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, DURATION_BUCKETS), '+Inf'], self._bucket_counts):
            cumulative += count
            buckets.append((bound, cumulative))
        name = 'tensorguard_round_duration_seconds'
        yield HistogramMetricFamily(name, METRICS[name][1], buckets=buckets, sum_value=self._duration_sum)
        received = self._counter('tensorguard_update_bytes_received_total')
        received.add_metric([], self._bytes_total)
        yield received

    def _fleet(self, snapshot: FleetSnapshot) -> Iterator[Metric]:
        if snapshot.status_seen_at is None:
            return
        for name, value in (('tensorguard_fleet_round_id', snapshot.round_id),
                            ('tensorguard_fleet_model_version', snapshot.model_version),
                            ('tensorguard_fleet_quorum', snapshot.quorum),
                            ('tensorguard_fleet_participants', len(snapshot.participants)),
                            ('tensorguard_fleet_enrolled_robots', len(snapshot.enrolled)),
                            ('tensorguard_fleet_revoked_robots', len(snapshot.revoked)),
                            ('tensorguard_fleet_status_age_seconds', snapshot.taken_at - snapshot.status_seen_at),
                            ('tensorguard_candidate_success_rate', snapshot.last_success_rate),
                            ('tensorguard_candidate_success_lower_bound', snapshot.last_success_lower_bound),
                            ('tensorguard_deployed_success_rate', snapshot.deployed_success_rate)):
            if value is not None:
                yield self._gauge(name, value=value)
        yield self._gauge('tensorguard_fleet_phase', ['phase'], [([snapshot.phase], 1)])
        if snapshot.last_gate_decision:
            yield self._gauge('tensorguard_gate_decision', ['decision'], [([snapshot.last_gate_decision], 1)])
        rejections = self._counter('tensorguard_rejections_total', ['reason'])
        for reason, count in sorted(snapshot.rejections.items()):
            rejections.add_metric([reason], count)
        yield rejections

    def _robots(self, snapshot: FleetSnapshot) -> Iterator[Metric]:
        seen = [r for r in snapshot.robots if r.last_seen is not None]
        per_robot = {
            'tensorguard_robot_epsilon_spent': [([r.robot_id], r.epsilon_spent) for r in seen],
            'tensorguard_robot_epsilon_budget': [([r.robot_id], r.epsilon_budget) for r in seen],
            'tensorguard_robot_last_update_bytes': [([r.robot_id], r.last_update_bytes) for r in seen],
            'tensorguard_robot_episodes_buffered': [([r.robot_id], r.episodes_buffered) for r in seen],
            'tensorguard_robot_model_version': [([r.robot_id], r.model_version) for r in seen],
            'tensorguard_robot_last_round_id': [([r.robot_id], r.last_round_id) for r in seen],
            'tensorguard_robot_status_age_seconds': [([r.robot_id], snapshot.taken_at - r.last_seen) for r in seen],
            'tensorguard_robot_silent': [([r.robot_id], int(r.silent)) for r in snapshot.robots],
            'tensorguard_robot_late': [([r.robot_id], int(r.late)) for r in snapshot.robots],
            'tensorguard_robot_revoked': [([r.robot_id], int(r.revoked)) for r in snapshot.robots],
        }
        for name, samples in per_robot.items():
            yield self._gauge(name, ['robot'], samples)
        rejections = self._counter('tensorguard_robot_rejections_total', ['robot', 'reason'])
        for robot in seen:
            for reason, count in sorted(robot.rejections.items()):
                rejections.add_metric([robot.robot_id, reason], count)
        yield rejections
        yield self._gauge('tensorguard_diagnostic_level', ['name'],
                          [([d.name], d.level) for d in snapshot.diagnostics])

    @staticmethod
    def _gauge(name: str, labels: list[str] | None = None, samples: list[tuple[list[str], float]] | None = None,
               value: float | None = None) -> GaugeMetricFamily:
        if labels is None:
            return GaugeMetricFamily(name, METRICS[name][1], value=value)
        family = GaugeMetricFamily(name, METRICS[name][1], labels=labels)
        for label_values, sample in samples or []:
            family.add_metric(label_values, sample)
        return family

    @staticmethod
    def _counter(name: str, labels: list[str] | None = None) -> CounterMetricFamily:
        return CounterMetricFamily(_family_name(name), METRICS[name][1], labels=labels or [])


def registry(state: FleetState) -> CollectorRegistry:
    """A registry holding only the fleet's metrics (no process or platform collectors)."""
    result = CollectorRegistry(auto_describe=False)
    result.register(FleetMetrics(state))
    return result
