"""Robots' signed reports of how the models they run do on the robot (ROS-free).

Each robot signs a cumulative tally of its autonomous episodes per model version
(`wire.OutcomeReport`). `OutcomeTally` keeps the newest verified report of every robot and version,
refuses replays (a report whose sequence does not advance the robot's last one), and answers the
canary question: how did a version do on these robots? One robot cannot carry a decision: its
episodes count up to a cap, its successes in proportion. The tally is saved after every accepted
report, so a restart does not reopen the door to replays; an unreadable file is set aside by the
caller, like every other piece of server state.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tensorguard_aggregator.rounds import write_atomic
from tensorguard_crypto.refusal import Reason
from tensorguard_crypto.verify import KeyResolver, VerificationError, verify_outcome_report
from tensorguard_crypto.wire import OutcomeReport


class ReplayedReport(VerificationError):
    """An outcome report whose sequence does not advance the robot's last accepted report."""

    reason = Reason.REPLAYED_REPORT


class UnknownModelVersion(VerificationError):
    """An outcome report for a model version the server has not published."""

    reason = Reason.UNKNOWN_MODEL_VERSION


@dataclass(frozen=True)
class VersionOutcomes:
    """Pooled on-robot outcomes of one model version."""

    episodes: int
    successes: int
    robots: int

    @property
    def success_rate(self) -> float:
        """Successes per episode (NaN without episodes)."""
        return self.successes / self.episodes if self.episodes else math.nan


class OutcomeTally:
    """The newest verified outcome report per robot and model version, persisted to `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sequences: dict[str, int] = {}
        self.counts: dict[tuple[str, int], tuple[int, int]] = {}
        if path.exists():
            saved = json.loads(path.read_text())
            self.sequences = {robot: int(seq) for robot, seq in saved['sequences'].items()}
            self.counts = {(robot, int(version)): (int(episodes), int(successes))
                           for robot, version, episodes, successes in saved['counts']}

    def accept(self, data: bytes, keys: KeyResolver, latest_version: int) -> OutcomeReport:
        """Verify one serialized report and record it; raises `VerificationError` (with a reason) otherwise."""
        report = verify_outcome_report(data, keys)
        if report.model_version > latest_version:
            raise UnknownModelVersion(f'{report.robot_id!r} reports on model version {report.model_version}; '
                                      f'the newest published is {latest_version}')
        last = self.sequences.get(report.robot_id, -1)
        if report.sequence <= last:
            raise ReplayedReport(f'{report.robot_id!r} report {report.sequence} does not advance its last '
                                 f'accepted report {last}')
        self.sequences[report.robot_id] = report.sequence
        self.counts[(report.robot_id, report.model_version)] = (report.episodes, report.successes)
        self._save()
        return report

    def for_version(self, version: int, robots: Iterable[str] | None = None,
                    max_episodes_per_robot: int | None = None) -> VersionOutcomes:
        """Pooled outcomes of `version` on `robots` (all robots if None), each robot capped."""
        wanted = None if robots is None else set(robots)
        episodes = successes = reporters = 0
        for (robot, reported), (n, s) in self.counts.items():
            if reported != version or (wanted is not None and robot not in wanted) or n == 0:
                continue
            if max_episodes_per_robot is not None and n > max_episodes_per_robot:
                n, s = max_episodes_per_robot, math.floor(s * max_episodes_per_robot / n)
            episodes, successes, reporters = episodes + n, successes + s, reporters + 1
        return VersionOutcomes(episodes, successes, reporters)

    def _save(self) -> None:
        counts = [[robot, version, n, s] for (robot, version), (n, s) in sorted(self.counts.items())]
        write_atomic(self.path, json.dumps({'sequences': self.sequences, 'counts': counts}).encode())
