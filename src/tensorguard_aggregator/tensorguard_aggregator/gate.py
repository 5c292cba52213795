"""The aggregator's deployment decisions and its round log (ROS-free).

`DeploymentGate` evaluates a round's candidate in the simulator and decides reject / canary /
deploy; a canary goes to `GateSettings.canary_robots` while a second, independent trial (fresh
seeds) decides whether it is promoted to the fleet or rolled back. With `select_per_task`, a
selection trial on its own seeds comes first: for every group of tasks that share experts, the
candidate's segments of that group are taken only if they did not lower the group's successes,
else the deployed model's are kept; the gate then evaluates that merged candidate on the round's
seeds, so its reported success is not the one the selection was made on. Selection uses only the
decrypted aggregate and the server's simulator, so it is post-processing: no privacy cost. The gate
remembers the measured success rate of the model the fleet runs, the reference of its regression
check. `RoundLog` is the server's JSON-lines record of closed rounds (``server/rounds.jsonl``), from
which that reference is restored after a restart.

The aggregator node declares `GateSettings` as ROS parameters and calls these; `fleet_replay`
uses the same gate without ROS.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tensorguard_aggregator.outcomes import VersionOutcomes
from tensorguard_crypto.fleet import FleetPaths
from tensorguard_learning.evaluation import EvaluationGate, EvaluationMetrics, SafetyThresholds, evaluate_policy
from tensorguard_learning.policy import MoEPolicy, merge_segments, task_groups
from tensorguard_learning.training import BCData
from tensorguard_ros.config_fields import described

# Seed offsets: round r's evaluation starts at eval_seed + 1000 r, its per-task selection trial 250 later
# and the canary's second trial 500 later (hence at most 250 episodes per task).
ROUND_SEED_STRIDE = 1000
SELECTION_TRIAL_OFFSET = 250
CANARY_TRIAL_OFFSET = 500


@dataclass
class GateSettings:
    """Evaluator, gate and round-schedule configuration (each field becomes a ROS parameter)."""

    eval_tasks: list[str] = described('Meta-World tasks the candidate is rolled out on.',
                                      default_factory=lambda: ['push-v3'], read_only=True)
    eval_episodes_per_task: int = described('Simulator episodes per task and evaluation.', 10,
                                            minimum=1, maximum=SELECTION_TRIAL_OFFSET, read_only=True)
    eval_seed: int = described('Public simulator seed of the first evaluation episode.', 2_000_000, minimum=0)
    min_success_rate: float = described('Gate: lower credible bound of success must clear this.', 0.5,
                                        minimum=0.0, maximum=1.0, read_only=True)
    max_kl_divergence: float = described('Gate: mean KL(candidate || current) on held-out states.', 5.0,
                                         minimum=0.0, read_only=True)
    deploy_margin: float = described('Gate: deploy directly if the bound clears the minimum by this much.', 0.05,
                                     minimum=0.0, maximum=1.0, read_only=True)
    max_regression: float = described(
        "Gate: reject a candidate whose success rate is more than this below the deployed model's "
        'measured rate (1.0: off; the first model the aggregator deploys has no reference).', 1.0,
        minimum=0.0, maximum=1.0, read_only=True)
    select_per_task: bool = described(
        "Gate: keep the deployed model's experts and routing for every group of tasks whose successes the "
        'candidate lowered on a separate selection trial (two more evaluations per round).', False,
        read_only=True)
    canary_percentage: float = described('Fraction of the fleet that runs a canary model first.', 0.25,
                                         minimum=0.0, maximum=1.0, read_only=True)
    canary_min_episodes: int = described(
        'Canary: autonomous episodes the canary robots must report on the candidate before it can be '
        "promoted (0: the server's second trial alone decides).", 0, minimum=0, read_only=True)
    canary_window_s: float = described(
        'Canary: seconds to wait for those reports; too few by then is a rollback.', 600.0, minimum=0.0,
        read_only=True)
    canary_max_episodes_per_robot: int = described(
        "Canary: one robot's reported episodes count up to this many, so no single robot decides.", 50,
        minimum=1, read_only=True)
    round_period_s: float = described('Seconds between automatic rounds (0: only on request).', 0.0, minimum=0.0)
    max_rounds: int = described('Stop announcing automatic rounds after this many (0: never).', 0, minimum=0)
    first_round_delay_s: float = described('Seconds after activation before the first automatic round.', 5.0,
                                           minimum=0.0)

    def evaluation_gate(self) -> EvaluationGate:
        """The gate these settings describe."""
        return EvaluationGate(SafetyThresholds(
            min_success_rate=self.min_success_rate, max_kl_divergence=self.max_kl_divergence,
            min_episodes=min(10, self.eval_episodes_per_task * len(self.eval_tasks)),
            deploy_margin=self.deploy_margin, max_regression=self.max_regression))

    def evaluation_seed(self, round_id: int, canary_trial: bool = False, selection_trial: bool = False) -> int:
        """Public simulator seed of the first episode of round `round_id`'s evaluation (or canary or
        selection trial)."""
        offset = CANARY_TRIAL_OFFSET if canary_trial else SELECTION_TRIAL_OFFSET if selection_trial else 0
        return self.eval_seed + ROUND_SEED_STRIDE * round_id + offset

    def canary_robots(self, robots: Iterable[str]) -> list[str]:
        """The robots that run a canary model: the first `canary_percentage` of them by id, at least one."""
        ordered = sorted(robots)
        return ordered[:max(1, math.ceil(self.canary_percentage * len(ordered)))]


class DeploymentGate:
    """Decides what becomes of each round's candidate and tracks the deployed model's success rate."""

    def __init__(self, settings: GateSettings, deployed_success: float | None = None) -> None:
        self.settings = settings
        self.thresholds = settings.evaluation_gate()
        self.deployed_success = deployed_success

    def evaluate(self, policy: MoEPolicy, round_id: int, current: MoEPolicy | None = None,
                 held_out: BCData | None = None, canary_trial: bool = False) -> EvaluationMetrics:
        """Roll `policy` out with the round's seeds; KL to `current` on `held_out` if both are given."""
        metrics = evaluate_policy(policy, self.settings.eval_tasks, self.settings.eval_episodes_per_task,
                                  self.settings.evaluation_seed(round_id, canary_trial),
                                  current=current, held_out=held_out)
        metrics.reference_success_rate = self.deployed_success
        return metrics

    def select_tasks(self, candidate: MoEPolicy, current: MoEPolicy, round_id: int
                     ) -> tuple[MoEPolicy, dict | None]:
        """The candidate the gate goes on to evaluate, and what the selection did (None when
        `select_per_task` is off: the candidate unchanged).

        Both models roll out on the round's selection seeds; each `task_groups` group keeps the deployed
        model's segments if the candidate succeeded in fewer of its episodes, ties go to the candidate.
        """
        if not self.settings.select_per_task:
            return candidate, None
        tasks, episodes = self.settings.eval_tasks, self.settings.eval_episodes_per_task
        seed = self.settings.evaluation_seed(round_id, selection_trial=True)
        new = evaluate_policy(candidate, tasks, episodes, seed).successes
        old = evaluate_policy(current, tasks, episodes, seed).successes
        kept = [group for group in task_groups([candidate, current], tasks)
                if sum(new[t] for t in group.tasks) < sum(old[t] for t in group.tasks)]
        selected = merge_segments(candidate, current, [i for group in kept for i in group.segments])
        return selected, {'kept_tasks': sorted(t for group in kept for t in group.tasks),
                          'selection_successes': new, 'deployed_selection_successes': old}

    def decide(self, metrics: EvaluationMetrics) -> tuple[str, list[str]]:
        """('reject' | 'canary' | 'deploy', the failed checks) for a candidate's metrics."""
        _, failures = self.thresholds.evaluate(metrics)
        return self.thresholds.decide(metrics).value, failures

    def promote(self, trial: EvaluationMetrics, on_robot: VersionOutcomes | None = None,
                fleet_on_robot: VersionOutcomes | None = None) -> tuple[bool, list[str]]:
        """After a canary: (promote to the fleet, else roll back; the failed checks).

        The server's second trial must pass the gate, and, when `canary_min_episodes` asks for it,
        so must the canary robots' own episodes (`on_robot`): enough of them, a success rate at least
        the gate's minimum, and no more than `max_regression` below the rate the fleet's current
        model reached on the robots (`fleet_on_robot`, when it has as many episodes).
        """
        passed, failures = self.thresholds.evaluate(trial)
        if self.settings.canary_min_episodes:
            failures = failures + self.on_robot_failures(on_robot or VersionOutcomes(0, 0, 0), fleet_on_robot)
        return passed and not failures, failures

    def on_robot_failures(self, candidate: VersionOutcomes, fleet: VersionOutcomes | None) -> list[str]:
        """The on-robot checks a canary failed (empty: passed)."""
        needed, settings = self.settings.canary_min_episodes, self.settings
        if candidate.episodes < needed:
            return [f'canary robots reported {candidate.episodes} autonomous episodes of the {needed} required']
        if candidate.success_rate < settings.min_success_rate:
            return [f'on-robot success {candidate.success_rate:.2f} below {settings.min_success_rate:.2f}']
        if (fleet is not None and fleet.episodes >= needed
                and candidate.success_rate < fleet.success_rate - settings.max_regression):
            return [f'on-robot success {candidate.success_rate:.2f} is more than {settings.max_regression:.2f} '
                    f"below the fleet model's {fleet.success_rate:.2f}"]
        return []

    def settle(self, decision: str, metrics: EvaluationMetrics, promoted: bool = False) -> float | None:
        """Record what the fleet runs after the round; return that model's measured success rate.

        A deployed or promoted candidate's rate (from its first evaluation) becomes the reference;
        after a rejection or a rollback the previous reference stays.
        """
        if decision == 'deploy' or (decision == 'canary' and promoted):
            self.deployed_success = metrics.success_rate
        return self.deployed_success


class RoundLog:
    """The server's append-only log of closed rounds, one JSON object per line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def of(cls, paths: FleetPaths) -> RoundLog:
        """The round log of the fleet directory `paths` (``server/rounds.jsonl``)."""
        return cls(paths.server / 'rounds.jsonl')

    def append(self, outcome: dict) -> None:
        """Append one round's outcome (raises OSError if the disk refuses)."""
        with open(self.path, 'a') as log:
            log.write(json.dumps(outcome) + '\n')

    def outcome(self, round_id: int) -> dict:
        """The last recorded outcome of round `round_id` ({} if none); OSError or ValueError if unreadable."""
        for line in reversed(self.path.read_text().splitlines()):
            entry = json.loads(line)
            if entry['round_id'] == round_id:
                return entry
        return {}

    def deployed_success_rate(self) -> float | None:
        """The deployed model's measured success rate as last recorded (None if never measured)."""
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        recorded = [json.loads(line).get('deployed_success_rate') for line in lines if line.strip()]
        return next((rate for rate in reversed(recorded) if rate is not None), None)
