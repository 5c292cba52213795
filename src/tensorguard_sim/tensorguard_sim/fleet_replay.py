"""Replay the simulated fleet's learning in one process, for tuning its configuration.

The ROS fleet (`simulated_fleet`) takes about four minutes a run and spends most of it on
processes, DDS and encryption, none of which changes what is learned. This replay makes the same
library calls on the same data, so a configuration can be compared in a fraction of that:

- the initial model and held-out set exactly as provisioning builds them (`bootstrap_model.bootstrap_spec`);
- each robot's demonstrations as its `sim_robot` records them (episode k of robot i: task
  ``tasks[k % len(tasks)]``, simulator seed ``FleetPlan.seed_of(i) + k``), the first N of them in round r;
- per robot `train_local` with the edge node's budget, `ExpertDrivenStrategy.flatten_update`;
- the real Skellam encoder and decoder of the round (`update_codec.plaintext_sum`); the lattice
  encryption is left out because it is exact (the decrypted sum is the modular sum);
- the aggregator's step from sum to candidate (`rounds.segment_weight_floor`, `rounds.apply_round_sum`);
- the aggregator's `DeploymentGate`: its evaluation (seeds ``eval_seed + 1000 * round``, KL) and its
  decision (KL and regression checks) on whether the candidate replaces the model; a `canary`
  decision counts as deployed (the ROS fleet runs a second trial first).

What it does not model: robots joining late or dropping out, the canary's second trial, and the
exact number of episodes a robot holds when a round opens, which in the ROS fleet depends on
timing (``--episodes`` sets it).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tensorguard_aggregator.gate import DeploymentGate, GateSettings
from tensorguard_aggregator.rounds import AggregatorSettings, apply_round_sum, segment_weight_floor
from tensorguard_crypto import update_codec
from tensorguard_crypto.accountant import DPProfile
from tensorguard_edge.client import EdgeSettings
from tensorguard_learning.aggregation import ExpertDrivenStrategy
from tensorguard_learning.envelope import OperatingEnvelope
from tensorguard_learning.metaworld_source import record_demonstrations
from tensorguard_learning.training import BCData, TrainingBudget, train_local
from tensorguard_sim.bootstrap_model import bootstrap_spec, build_initial_policy, held_out_demonstrations
from tensorguard_sim.plan import FleetPlan, load_config
from tensorguard_sim.ros_parameters import node_parameters


def robot_demonstrations(plan: FleetPlan, robot: int, episodes: int) -> list:
    """The successful episodes among robot `robot`'s first `episodes`, as its sim_robot records them
    (`SimRobot.record_one`: its tasks in turn, one simulator seed per episode)."""
    tasks = plan.tasks_of(robot)
    return [d for k in range(episodes)
            for d in record_demonstrations(tasks[k % len(tasks)], 1, plan.seed_of(robot) + k)]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    config_dir = Path(os.environ.get('TENSORGUARD_ROOT', '.')) / 'config'
    parser = argparse.ArgumentParser(prog='fleet_replay', description=__doc__.splitlines()[0])
    parser.add_argument('--config', type=Path, default=config_dir / 'fleet.yaml', help='ROS parameters of every node')
    parser.add_argument('--plan', type=Path, default=config_dir / 'simulated_fleet.yaml', help='the simulation plan')
    parser.add_argument('--rounds', type=int, default=None, help='override the plan')
    parser.add_argument('--episodes', default='6,30,55,80,105',
                        help='episodes each robot holds in rounds 1, 2, ... (the last repeats)')
    parser.add_argument('--eval-episodes', type=int, default=None, help="per task; default: the aggregator's")
    parser.add_argument('--noise-multiplier', type=float, default=None, help='override fleet.yaml')
    parser.add_argument('--no-noise', action='store_true', help='clip only: no Skellam noise, no rounding')
    parser.add_argument('--min-segment-weight', type=float, default=None, help='override fleet.yaml')
    parser.add_argument('--policy', default='{}', help="JSON of MoEConfig fields overriding the plan's")
    parser.add_argument('--trainable-modules', default=None, help="comma-separated; default: the edge node's")
    parser.add_argument('--train-steps', type=int, default=None, help='override fleet.yaml')
    parser.add_argument('--no-gate', action='store_true', help='apply every candidate, whatever the gate says')
    parser.add_argument('--report', type=Path, default=None, help='write the rounds as JSON here')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: print one JSON line per round (round 0 is the initial model)."""
    args = _parse(argv)
    torch.set_num_threads(1)
    shared, plan = load_config(args.config, args.plan)
    plan = replace(plan, rounds=args.rounds or plan.rounds, policy={**plan.policy, **json.loads(args.policy)})
    aggregator = '/tensorguard/aggregator'
    rounds = node_parameters(args.config, aggregator, AggregatorSettings)
    edge = node_parameters(args.config, f'/{plan.robot_id(0)}/edge_node', EdgeSettings)
    gate = replace(node_parameters(args.config, aggregator, GateSettings), eval_tasks=list(plan.fleet_tasks))
    if args.eval_episodes:
        gate = replace(gate, eval_episodes_per_task=args.eval_episodes)
    noise = shared['noise_multiplier'] if args.noise_multiplier is None else args.noise_multiplier
    min_weight = rounds.min_segment_weight if args.min_segment_weight is None else args.min_segment_weight
    modules = tuple(args.trainable_modules.split(',')) if args.trainable_modules else tuple(edge.trainable_modules)
    budget = TrainingBudget(max_steps=args.train_steps or edge.train_steps, batch_size=edge.batch_size,
                            learning_rate=edge.learning_rate)
    schedule = [int(n) for n in args.episodes.split(',')]

    started = time.monotonic()
    policy = build_initial_policy(bootstrap_spec(plan))
    held_out = BCData.from_demonstrations(policy, held_out_demonstrations(plan.fleet_tasks,
                                                                          plan.held_out_episodes_per_task))
    most = schedule[min(plan.rounds, len(schedule)) - 1]
    demos = [robot_demonstrations(plan, robot, most) for robot in range(plan.robots)]
    profile = DPProfile.from_fleet_parameters({**shared, 'noise_multiplier': noise})
    envelope = OperatingEnvelope(trainable_modules=list(modules), max_trainable_params=edge.max_trainable_params,
                                 target_update_size_kb=edge.target_update_size_kb, round_interval_seconds=3600)
    strategy = ExpertDrivenStrategy()
    deployment = DeploymentGate(gate)
    print(f'# fleet_replay: {plan.robots} robots, {plan.rounds} rounds, policy {plan.policy}, modules {modules}, '
          f'noise {"off" if args.no_noise else noise}, min_segment_weight {min_weight}, '
          f'{budget.max_steps} steps, {gate.eval_episodes_per_task} eval episodes/task; '
          f'set-up {time.monotonic() - started:.0f} s', flush=True)

    rows = []
    for round_id in range(plan.rounds + 1):
        row_started = time.monotonic()
        row = {'round': round_id}
        if round_id:
            held = schedule[min(round_id, len(schedule)) - 1]
            reference = policy.flatten_segments()
            vectors = []
            for robot in range(plan.robots):
                data = demos[robot][:held]
                update = train_local(policy.clone(), data, budget, envelope, modules=modules, reference=reference)
                vectors.append(strategy.flatten_update(update))
            dim = vectors[0].size
            codec = update_codec.build_codec(profile, dim, shared['max_clients'], shared['security_level'],
                                             secrets.token_bytes(32))
            if args.no_noise:
                summed = np.sum([v * min(1.0, shared['clipping_norm'] / max(float(np.linalg.norm(v)), 1e-12))
                                 for v in vectors], axis=0)
                floor = min_weight
            else:
                summed = update_codec.plaintext_sum(codec, vectors)
                floor = segment_weight_floor(codec, len(vectors), min_weight)
            candidate, delta, _frozen = apply_round_sum(policy, summed, floor, strategy, rounds.server_learning_rate)
            row.update(episodes_per_robot=held, update_norms=[round(float(np.linalg.norm(v)), 3) for v in vectors],
                       delta_norm=round(float(np.linalg.norm(delta)), 3))
        else:
            candidate = policy
        if round_id:
            metrics = deployment.evaluate(candidate, round_id, current=policy, held_out=held_out)
            decision = 'deploy' if args.no_gate else deployment.decide(metrics)[0]
        else:
            metrics = deployment.evaluate(candidate, round_id)
            decision = 'initial'
        if decision != 'reject':
            policy, fleet_success = candidate, metrics.success_rate
            if round_id:
                # Like the aggregator's, the gate's reference is a model it deployed itself, never the initial one.
                deployment.settle('deploy', metrics)
        row.update(success_rate=metrics.success_rate, successes=metrics.successes,
                   kl=None if metrics.kl_divergence is None else round(metrics.kl_divergence, 2),
                   decision=decision, deployed_success_rate=fleet_success,
                   seconds=round(time.monotonic() - row_started, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.report:
        args.report.write_text(json.dumps({'argv': sys.argv[1:] if argv is None else argv, 'rounds': rows}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
