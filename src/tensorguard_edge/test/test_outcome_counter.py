"""The robot's outcome counter: cumulative per version, signed, and never reusing a sequence after a restart."""
from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.verify import PinnedKeys, verify_outcome_report
from tensorguard_edge.outcomes import OutcomeCounter


def test_counts_are_cumulative_per_version_signed_and_survive_a_restart(tmp_path):
    robot = Identity.generate('robot_1', Role.ROBOT)
    keys = PinnedKeys({'robot_1': (Role.ROBOT, robot.public_key_bytes())})
    counter = OutcomeCounter(tmp_path / 'outcomes.json', robot)
    counter.record(3, True)
    counter.record(3, False)
    last = counter.record(4, True)
    assert (last.model_version, last.episodes, last.successes, last.sequence) == (4, 1, 1, 3)
    restarted = OutcomeCounter(tmp_path / 'outcomes.json', robot)
    report = verify_outcome_report(restarted.record(3, True).serialize(), keys)
    assert (report.model_version, report.episodes, report.successes, report.sequence) == (3, 3, 2, 4)
