"""`tensorguard flower-frontier`: success against epsilon for fleets of K robots, beside the non-private run.

For each K of ``--robots`` the fleet of `flower-scale` (split.py: the same tasks, seeds and initial
model) runs ``--rounds`` rounds once without privacy (the reference) and ``--repeats`` times per
noise multiplier of ``--noise-multipliers``, with the noise calibrated for all K robots (min_clients
= K, no client sampling, so no amplification). Repeats differ only in the DP noise (fresh round
seeds from the OS CSPRNG); the table and plot give their median final success and its range. Rounds
run through `plaintext.run_rounds`: the robots' and the aggregator's own library calls without the
lattice layer, whose decryption is exact. Every run starts from the same initial model and is
evaluated by the gate on the same seeds per round, so runs are paired.

Writes ``<out>/report.json`` (every round of every run, rewritten after each run),
``<out>/frontier.md`` (every run, the median per K and noise multiplier, and per epsilon the
smallest K whose median final success is within ``--gap`` points of its non-private run) and
``<out>/frontier.png`` (median final success against epsilon with the range of the repeats, one
line per K, its non-private success dashed).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import torch
from tqdm import tqdm

from tensorguard_aggregator.gate import DeploymentGate, GateSettings
from tensorguard_edge.client import EdgeSettings
from tensorguard_flower.plaintext import Mechanism, RobotPool, lattice_refusal, run_rounds
from tensorguard_flower.split import add_fleet_arguments, check_fleet_arguments, initial_model, robot_demonstrations

matplotlib.use('Agg')
from matplotlib import pyplot  # noqa: E402  (the backend is chosen before pyplot loads)


def _parse(argv: Sequence[str], prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument('--robots', type=int, nargs='+', default=[16, 100, 1000], help='fleet sizes K (each >= 2)')
    parser.add_argument('--noise-multipliers', type=float, nargs='+', default=[0.75, 1.25, 1.5, 3.0])
    parser.add_argument('--delta', type=float, default=1e-5)
    parser.add_argument('--eval-episodes', type=int, default=10, help='evaluation episodes per fleet task and round')
    parser.add_argument('--gap', type=float, default=10.0, help='points of success a private run may lose')
    parser.add_argument('--repeats', type=int, default=1, help='private runs per K and noise multiplier')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1, help='training processes')
    parser.add_argument('--out', type=Path, required=True, help='new directory for the report, table and plot')
    add_fleet_arguments(parser)
    args = parser.parse_args(list(argv))
    check_fleet_arguments(parser, args)
    if min(args.robots) < 2:
        parser.error('every K in --robots must be at least 2 (the key service never decrypts a single update)')
    for k in args.robots:
        if refusal := lattice_refusal(k):
            parser.error(f'--robots {k}: {refusal}')
    if min(args.noise_multipliers) <= 0:
        parser.error('--noise-multipliers must be positive (the non-private reference always runs)')
    if args.repeats < 1:
        parser.error('--repeats must be at least 1')
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f'{args.out} exists and is not empty')
    return args


def final_successes(runs: list[dict]) -> dict[tuple[int, float | None], list[float]]:
    """Final success of every run, grouped by (K, noise multiplier) in the order the runs were made."""
    finals: dict[tuple[int, float | None], list[float]] = {}
    for run in runs:
        finals.setdefault((run['robots'], run['noise_multiplier']), []).append(run['rows'][-1]['success'])
    return finals


def smallest_fleets(runs: list[dict], gap: float) -> list[dict]:
    """Per noise multiplier: its epsilon and the smallest K whose median final success over the repeats
    is within `gap` points of the same K's non-private final success (None if no K measured is)."""
    finals = final_successes(runs)
    epsilon = {run['noise_multiplier']: run['rows'][-1]['epsilon'] for run in runs}
    needs = []
    for multiplier in sorted({z for _, z in finals if z is not None}):
        within = [k for k, z in finals if z == multiplier
                  and 100 * (finals[k, None][0] - statistics.median(finals[k, z])) <= gap]
        needs.append({'noise_multiplier': multiplier, 'epsilon': epsilon[multiplier],
                      'smallest_k': min(within) if within else None})
    return needs


def markdown(runs: list[dict], needs: list[dict], rounds: int, gap: float, delta: float) -> str:
    """The table of every run, the medians over repeats and the K each epsilon needs."""
    lines = ['| K | noise multiplier | epsilon after round ' + ', '.join(str(r) for r in range(1, rounds + 1))
             + ' | success per round (LB95) | final vs non-private (points) | frozen segments per round | '
             'tasks kept from the previous model per round | seconds |', '|---:|---:|---|---|---:|---|---|---:|']
    reference = {run['robots']: run['rows'][-1]['success'] for run in runs if run['noise_multiplier'] is None}
    for run in runs:
        rows = run['rows']
        private = run['noise_multiplier'] is not None
        lines.append(
            f"| {run['robots']} | {run['noise_multiplier'] if private else 'non-private'} | "
            + (', '.join(f"{row['epsilon']:.2f}" for row in rows) if private else 'inf') + ' | '
            + ', '.join(f"{row['success']:.2f} ({row['lower']:.2f})" for row in rows) + ' | '
            + (f"{100 * (rows[-1]['success'] - reference[run['robots']]):+.0f}" if private else '-') + ' | '
            + ', '.join(str(row['frozen_segments']) for row in rows) + ' | '
            + ', '.join(str(len(row['selection']['kept_tasks'])) if row.get('selection') else '-' for row in rows)
            + f" | {run['seconds']:.0f} |")
    lines += ['', f'Smallest K measured whose final success is within {gap:g} points of its non-private run:', '',
              f'| noise multiplier | epsilon (delta {delta:g}) | smallest K |', '|---:|---:|---:|']
    lines += [f"| {need['noise_multiplier']} | {need['epsilon']:.2f} | "
              f"{need['smallest_k'] if need['smallest_k'] is not None else 'none measured'} |" for need in needs]
    finals = final_successes(runs)
    lines += ['', 'Final success over the repeats (private runs differ only in their DP noise):', '',
              '| K | noise multiplier | runs | median final success (min-max) | median vs non-private (points) | '
              'runs within the gap |', '|---:|---:|---:|---|---:|---:|']
    for (k, z), values in finals.items():
        if z is not None:
            reference = finals[k, None][0]
            within = sum(100 * (reference - value) <= gap for value in values)
            lines.append(f'| {k} | {z} | {len(values)} | {statistics.median(values):.2f} ({min(values):.2f}-'
                         f'{max(values):.2f}) | {100 * (statistics.median(values) - reference):+.0f} | '
                         f'{within} of {len(values)} |')
    return '\n'.join(lines) + '\n'


def plot(runs: list[dict], path: Path, rounds: int, delta: float) -> None:
    """Median final success against epsilon with the range of the repeats, one line per K; the same K's
    non-private success dashed."""
    finals = final_successes(runs)
    epsilon = {run['noise_multiplier']: run['rows'][-1]['epsilon'] for run in runs}
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for index, k in enumerate(sorted({k for k, _ in finals})):
        colour = f'C{index}'
        private = sorted((z for kk, z in finals if kk == k and z is not None), key=lambda z: epsilon[z])
        x = [epsilon[z] for z in private]
        medians = [statistics.median(finals[k, z]) for z in private]
        spread = [[m - min(finals[k, z]) for m, z in zip(medians, private)],
                  [max(finals[k, z]) - m for m, z in zip(medians, private)]]
        axes.errorbar(x, medians, yerr=spread, fmt='o-', color=colour, capsize=3, label=f'K = {k}')
        for z, xi, m in zip(private, x, medians):
            axes.annotate(f'z={z:g}', (xi, m), textcoords='offset points', xytext=(4, 4), fontsize=7, color=colour)
        if (k, None) in finals:
            axes.axhline(finals[k, None][0], color=colour, linestyle='--', linewidth=1, label=f'K = {k}, non-private')
    axes.set_xscale('log')
    axes.set_xlabel(f'epsilon per robot after {rounds} rounds (delta = {delta:g})')
    axes.set_ylabel(f'success after round {rounds}')
    axes.set_ylim(-0.02, 1.02)
    axes.grid(True, which='both', alpha=0.3)
    axes.legend(fontsize=7, loc='best')
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def main(argv: Sequence[str] | None = None, prog: str = 'tensorguard flower-frontier') -> int:
    """Entry point (also `tensorguard flower-frontier`): run every (K, noise) pair, write the report, table and plot."""
    args = _parse(sys.argv[1:] if argv is None else argv, prog)
    torch.set_num_threads(1)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    initial = initial_model(args.cache, args.pretrain_steps, args.expert_hidden, args.expert_input_rank,
                            args.tasks, args.pretrain_tasks)
    edge = EdgeSettings(train_steps=args.train_steps)
    gate = GateSettings(eval_tasks=list(args.tasks), eval_episodes_per_task=args.eval_episodes,
                        select_per_task=args.select_per_task)
    baseline = DeploymentGate(gate).evaluate(initial.policy, 0)
    mechanisms = [Mechanism(None, args.clipping_norm, delta=args.delta)] + [
        Mechanism(z, args.clipping_norm, delta=args.delta) for z in args.noise_multipliers for _ in range(args.repeats)]
    runs: list[dict] = []
    with tqdm(total=sum(args.robots) * len(mechanisms) * args.rounds, desc='robot-rounds', unit='robot') as bar:
        for k in args.robots:
            with RobotPool(robot_demonstrations(args.cache, k, args.episodes, args.tasks), edge, args.workers) as pool:
                for mechanism in mechanisms:
                    run_started = time.monotonic()
                    label = f"K={k}, z={mechanism.noise_multiplier or 'none'}"
                    bar.set_postfix_str(label)
                    rows = run_rounds(pool, initial.policy, args.rounds, mechanism, DeploymentGate(gate),
                                      held_out=initial.held_out, trained=bar.update,
                                      progress=lambda row, label=label: bar.set_postfix_str(
                                          f"{label}, round {row['round']} success {row['success']:.2f}"))
                    runs.append({'robots': k, 'noise_multiplier': mechanism.noise_multiplier, 'rows': rows,
                                 'seconds': time.monotonic() - run_started})
                    tqdm.write(f'K={k} z={mechanism.noise_multiplier}: success '
                               + ' '.join(f"{row['success']:.2f}" for row in rows))
                    report = {'argv': list(sys.argv[1:] if argv is None else argv), 'tasks': list(args.tasks),
                              'pretrain_tasks': list(args.pretrain_tasks),
                              'initial_success': baseline.success_rate, 'initial_successes': baseline.successes,
                              'runs': runs, 'smallest_k': smallest_fleets(runs, args.gap),
                              'wall_s': time.monotonic() - started}
                    (args.out / 'report.json').write_text(json.dumps(report, indent=2))  # kept up to date
    (args.out / 'frontier.md').write_text(markdown(runs, report['smallest_k'], args.rounds, args.gap, args.delta))
    plot(runs, args.out / 'frontier.png', args.rounds, args.delta)
    print((args.out / 'frontier.md').read_text())
    print(f"initial model: success {baseline.success_rate:.2f}; wall {report['wall_s']:.0f} s; "
          f"report {args.out / 'report.json'}, plot {args.out / 'frontier.png'}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
