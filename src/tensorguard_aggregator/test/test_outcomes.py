"""Robots' signed outcome reports and the canary's on-robot checks, played by the attacker: a
network listener replaying, a robot speaking for another, a revoked robot, a robot inflating its
counts, a report for a model that does not exist, and the aggregator restarting between them."""
from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tensorguard_aggregator.gate import DeploymentGate, GateSettings
from tensorguard_aggregator.outcomes import OutcomeTally, ReplayedReport, UnknownModelVersion, VersionOutcomes
from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.kms import KeyManagementSystem, KeyMetadata
from tensorguard_crypto.verify import BadSignature, MalformedPackage, OversizedPackage, RevokedSigner, UnknownSigner
from tensorguard_crypto.wire import FieldValueError, OutcomeReport
from tensorguard_learning.evaluation import EvaluationMetrics


@pytest.fixture
def fleet(tmp_path):
    kms = KeyManagementSystem(audit_log_path=tmp_path / 'audit.log')
    robots = [Identity.generate(f'robot_{i}', Role.ROBOT) for i in range(3)]
    for robot in robots:
        kms.register_key(robot.key_id, KeyMetadata(
            key_id=robot.key_id, created_at=datetime.now(timezone.utc), owner='fleet', security_level=128,
            role=Role.ROBOT, public_key=robot.public_key_bytes()))
    return kms, robots, OutcomeTally(tmp_path / 'outcomes.json')


def report(robot: Identity, sequence: int, version: int, episodes: int, successes: int) -> bytes:
    return OutcomeReport(robot_id=robot.key_id, sequence=sequence, model_version=version, episodes=episodes,
                         successes=successes, created_at=time.time()).signed_by(robot).serialize()


def test_reports_pool_the_newest_tally_of_each_robot(fleet):
    kms, robots, tally = fleet
    tally.accept(report(robots[0], 1, 5, 4, 3), kms, latest_version=5)
    tally.accept(report(robots[0], 2, 5, 10, 8), kms, latest_version=5)  # cumulative: supersedes
    tally.accept(report(robots[1], 1, 5, 6, 6), kms, latest_version=5)
    tally.accept(report(robots[1], 2, 4, 9, 1), kms, latest_version=5)  # another version
    assert tally.for_version(5) == VersionOutcomes(16, 14, 2)
    assert tally.for_version(5, robots=['robot_1']) == VersionOutcomes(6, 6, 1)
    assert tally.for_version(4) == VersionOutcomes(9, 1, 1)


def test_a_replayed_report_is_refused_also_after_the_aggregator_restarts(fleet, tmp_path):
    kms, robots, tally = fleet
    old = report(robots[0], 1, 5, 10, 1)
    tally.accept(old, kms, latest_version=5)
    tally.accept(report(robots[0], 2, 5, 20, 2), kms, latest_version=5)
    with pytest.raises(ReplayedReport) as info:
        tally.accept(old, kms, latest_version=5)
    assert info.value.reason == 'replayed_report'
    restarted = OutcomeTally(tmp_path / 'outcomes.json')
    with pytest.raises(ReplayedReport):
        restarted.accept(old, kms, latest_version=5)
    assert restarted.for_version(5) == VersionOutcomes(20, 2, 1)


def test_a_robot_cannot_report_for_another_and_a_stranger_cannot_report(fleet):
    kms, robots, tally = fleet
    forged = OutcomeReport(robot_id='robot_1', sequence=1, model_version=5, episodes=50, successes=50,
                           created_at=time.time()).signed_by(robots[0])
    with pytest.raises(BadSignature):
        tally.accept(forged.serialize(), kms, latest_version=5)
    stranger = Identity.generate('robot_9', Role.ROBOT)
    with pytest.raises(UnknownSigner):
        tally.accept(report(stranger, 1, 5, 50, 50), kms, latest_version=5)
    assert tally.for_version(5) == VersionOutcomes(0, 0, 0)


def test_a_revoked_robot_reports_nothing(fleet):
    kms, robots, tally = fleet
    kms.revoke_key('robot_2', 'stolen')
    with pytest.raises(RevokedSigner):
        tally.accept(report(robots[2], 1, 5, 50, 50), kms, latest_version=5)


def test_reports_on_an_unpublished_version_and_malformed_reports_are_refused(fleet):
    kms, robots, tally = fleet
    with pytest.raises(UnknownModelVersion):
        tally.accept(report(robots[0], 1, 6, 5, 5), kms, latest_version=5)
    with pytest.raises(FieldValueError):
        OutcomeReport(robot_id='robot_0', sequence=1, model_version=5, episodes=3, successes=4, created_at=1.0)
    blob = report(robots[0], 1, 5, 5, 5)
    with pytest.raises(MalformedPackage):
        tally.accept(blob[:-7], kms, latest_version=5)
    with pytest.raises(OversizedPackage):
        tally.accept(blob + b'\x00' * 70_000, kms, latest_version=5)


@given(st.lists(st.tuples(st.integers(0, 500), st.integers(0, 500)), min_size=1, max_size=6),
       st.integers(1, 100))
def test_no_robot_counts_for_more_than_the_cap(tallies, cap):
    counts = {(f'robot_{i}', 5): (max(n, s), min(n, s)) for i, (n, s) in enumerate(tallies)}
    tally = OutcomeTally(Path('/nonexistent/outcomes.json'))
    tally.counts = counts
    pooled = tally.for_version(5, max_episodes_per_robot=cap)
    assert pooled.episodes <= cap * len(tallies)
    assert 0 <= pooled.successes <= pooled.episodes


def trial(successes: int, episodes: int = 40) -> EvaluationMetrics:
    return EvaluationMetrics({'push-v3': successes}, {'push-v3': episodes}, 0.1)


SETTINGS = GateSettings(min_success_rate=0.5, max_regression=0.1, canary_min_episodes=10)


def test_a_canary_is_promoted_only_if_the_robots_and_the_server_agree():
    gate = DeploymentGate(SETTINGS)
    assert gate.promote(trial(36), VersionOutcomes(12, 11, 2), VersionOutcomes(20, 18, 4)) == (True, [])
    for on_robot, fleet, why in [
            (VersionOutcomes(9, 9, 1), None, 'autonomous episodes'),          # too few reports
            (VersionOutcomes(12, 5, 2), None, 'below 0.50'),                  # fails on the robots
            (VersionOutcomes(12, 9, 2), VersionOutcomes(20, 19, 4), 'more than 0.10 below')]:  # regresses
        promoted, failures = gate.promote(trial(36), on_robot, fleet)
        assert not promoted and why in failures[0]
    promoted, failures = gate.promote(trial(10), VersionOutcomes(12, 12, 2))  # the server's trial fails
    assert not promoted and failures


def test_without_on_robot_episodes_required_the_servers_trial_decides():
    gate = DeploymentGate(dataclasses.replace(SETTINGS, canary_min_episodes=0))
    assert gate.promote(trial(36)) == (True, [])
    assert gate.promote(trial(36), VersionOutcomes(0, 0, 0))[0]
