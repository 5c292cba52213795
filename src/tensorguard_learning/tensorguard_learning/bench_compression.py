"""Compression at equal round budgets: success at checkpoint rounds and cumulative bytes per robot.

Same fleet, data, base and options as ``bench_fleet_learning`` (every option of that command is
accepted, e.g. ``--tasks``, ``--robots``, ``--compression-ratio``, ``--cache-dir``); ``--rounds``
defaults to the last checkpoint. Each method is federated once and its global model evaluated at
every checkpoint on the same held-out goals. Methods:

- ``dense``: every coordinate every round (FedMoE).
- ``randomk_ef``: the shipped compression, a fresh shared random-k every round, error feedback
  and the FedProx term ``--proximal-mu``.
- ``head``: a public, fixed coordinate set sent every round: every expert's biases and output
  layer plus the task segments (`compression.expert_head_coordinates`), no error feedback; its
  size follows from the layout, not from ``--compression-ratio``.
- ``held:N``: the same byte budget as ``randomk_ef``, but the shared random-k set is held for N rounds (``held:all``:
  never redrawn) and the unsent part of each delta is dropped (no error feedback, so robots
  restart from the global model every round and need no proximal term).
- ``directed_ef``: the byte budget of ``randomk_ef``, half of it on the coordinates where the
  previous round's public aggregate moved most, half random-k (`compression.directed_coordinates`,
  time-correlated sparsification), error feedback and the proximal term as ``randomk_ef``.
- ``randomk_ef@R`` / ``directed_ef@R`` / ``held:N@R``: the same with ratio 1/R instead of
  ``--compression-ratio``.

Prints a markdown table (success with its Beta 95% lower bound and n; cumulative bytes per robot)
and optionally writes it (``--markdown``) and a JSON report (``--json``).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from tensorguard_learning.aggregation import ExpertDrivenStrategy
from tensorguard_learning.bench_learning import EVAL_SEED, _federate, _parse, _robot_tasks, policy_config, prepare_fleet
from tensorguard_learning.compression import expert_head_coordinates
from tensorguard_learning.envelope import OperatingEnvelope
from tensorguard_learning.errors import ConfigError
from tensorguard_learning.evaluation import EvaluationMetrics
from tensorguard_learning.metaworld_source import rollout_success
from tensorguard_learning.policy import MoEPolicy


@dataclass(frozen=True)
class Method:
    """One compression setting of the comparison."""

    name: str
    compressed: bool
    coordinate_period: int = 1
    error_feedback: bool = True
    expert_head: bool = False
    ratio: int | None = None
    directed_share: float = 0.0


def parse_method(spec: str, rounds: int) -> Method:
    """`dense`, `randomk_ef`, `directed_ef`, `head` or `held:N` / `held:all`, all but `dense` and `head`
    optionally with `@R` (see the module docstring)."""
    base, _, ratio = spec.partition('@')
    if ratio:
        if not ratio.isdigit() or int(ratio) < 2 or base in ('dense', 'head'):
            raise ConfigError(f'unknown method {spec!r}: @R needs an integer R >= 2 after randomk_ef, '
                              'directed_ef or held:N')
        return replace(parse_method(base, rounds), name=spec, ratio=int(ratio))
    if spec == 'head':
        return Method(spec, compressed=True, error_feedback=False, expert_head=True)
    if spec == 'dense':
        return Method(spec, compressed=False)
    if spec == 'randomk_ef':
        return Method(spec, compressed=True)
    if spec == 'directed_ef':
        return Method(spec, compressed=True, directed_share=0.5)
    if spec.startswith('held:'):
        period = spec[5:]
        if period == 'all':
            return Method(spec, compressed=True, coordinate_period=max(rounds, 1), error_feedback=False)
        if period.isdigit() and int(period) > 0:
            return Method(spec, compressed=True, coordinate_period=int(period), error_feedback=False)
    raise ConfigError(f"unknown method {spec!r}: use 'dense', 'randomk_ef', 'directed_ef', 'head', 'held:N' (N > 0) "
                      "or 'held:all'")


@dataclass
class Checkpoint:
    """The global model after `round` rounds."""

    round: int
    successes: int
    episodes: int
    success_rate: float
    lower_bound_95: float
    per_task: dict[str, list[int]]
    cumulative_bytes_per_robot: int


@dataclass
class MethodResult:
    """All checkpoints of one method."""

    method: str
    bytes_per_round: int
    seconds: float
    checkpoints: list[Checkpoint] = field(default_factory=list)


def _evaluate(policy: MoEPolicy, tasks: tuple[str, ...], episodes: int, rnd: int) -> Checkpoint:
    report = rollout_success(policy, tasks, episodes, EVAL_SEED)
    s = sum(r.successes for r in report.results.values())
    bound = EvaluationMetrics({'all': s}, {'all': report.episodes}).success_lower_bound
    return Checkpoint(rnd, s, report.episodes, report.mean_success, bound,
                      {t: [r.successes, r.episodes] for t, r in report.results.items()}, 0)


def run_method(method: Method, fleet, args: argparse.Namespace, checkpoints: list[int], bar: tqdm) -> MethodResult:
    """Federate `args.rounds` rounds with `method` and evaluate the global model at each checkpoint."""
    tasks = fleet.base.cfg.tasks
    found: list[Checkpoint] = []

    def on_round(rnd: int, policy: MoEPolicy) -> None:
        if rnd in checkpoints:
            bar.set_postfix_str(f'{method.name}: evaluating round {rnd}')
            found.append(_evaluate(policy, tasks, args.eval_episodes, rnd))
            bar.set_postfix_str(method.name)

    envelope = OperatingEnvelope(max_trainable_params=2_000_000, target_update_size_kb=1024)
    t0 = time.perf_counter()
    run = _federate(method.name, fleet.base, fleet.robot_data, ExpertDrivenStrategy(), args, envelope,
                    (method.ratio or args.compression_ratio) if method.compressed else None, bar,
                    coordinate_period=method.coordinate_period, error_feedback=method.error_feedback,
                    on_round=on_round,
                    coordinates=expert_head_coordinates(fleet.base) if method.expert_head else None,
                    directed_share=method.directed_share)
    for c in found:
        c.cumulative_bytes_per_robot = c.round * run.bytes_per_round
    return MethodResult(method.name, run.bytes_per_round, time.perf_counter() - t0, found)


def bytes_to_success(result: MethodResult, target: float) -> Checkpoint | None:
    """The first checkpoint whose success rate reaches `target`, or None."""
    return next((c for c in result.checkpoints if c.success_rate >= target), None)


def markdown(results: list[MethodResult], target: float) -> str:
    """The comparison table: success (LB95, n) and cumulative MB per robot at each checkpoint."""
    rounds = [c.round for c in results[0].checkpoints]
    lines = ['| method | bytes/robot/round | ' + ' | '.join(f'round {r}: success (LB95, n); MB/robot' for r in rounds)
             + f' | first checkpoint >= {target:.0%}: round, MB/robot |',
             '|---|---:|' + '---|' * len(rounds) + '---|']
    for res in results:
        cells = [f'{c.success_rate:.1%} ({c.lower_bound_95:.1%}, {c.episodes}); '
                 f'{c.cumulative_bytes_per_robot / 1e6:.2f}' for c in res.checkpoints]
        hit = bytes_to_success(res, target)
        reach = f'{hit.round}, {hit.cumulative_bytes_per_robot / 1e6:.2f}' if hit else 'not reached'
        lines.append(f'| {res.method} | {res.bytes_per_round:,} | ' + ' | '.join(cells) + f' | {reach} |')
    lines.append('')
    lines.append('Per task (successes/episodes, task order as in the header) at each checkpoint:')
    lines.append('')
    for res in results:
        per = '; '.join(f'r{c.round}: ' + ' '.join(f'{s}/{n}' for s, n in c.per_task.values()) for c in res.checkpoints)
        lines.append(f'- {res.method}: {per}')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `bench_compression`."""
    torch.set_num_threads(1)
    argv = list(sys.argv[1:] if argv is None else argv)
    own = argparse.ArgumentParser(prog='bench_compression', description=__doc__, add_help=True,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    own.add_argument('--methods', nargs='+', default=['dense', 'randomk_ef', 'held:all'])
    own.add_argument('--checkpoints', nargs='+', type=int, default=[50, 100, 150, 200])
    own.add_argument('--target', type=float, default=0.8, help='success rate for the bytes-to-success column')
    own.add_argument('--json', type=Path, help='write the JSON report here')
    own.add_argument('--markdown', type=Path, help='write the markdown table here')
    mine, rest = own.parse_known_args(argv)
    args = _parse(rest)
    if '--rounds' not in rest and not args.quick:
        args.rounds = max(mine.checkpoints)
    checkpoints = sorted({c for c in mine.checkpoints if 0 < c <= args.rounds}
                         | ({args.rounds} if args.quick else set()))
    if not checkpoints:
        raise ConfigError(f'no checkpoint in 1..{args.rounds}')
    methods = [parse_method(m, args.rounds) for m in mine.methods]
    tasks = tuple(args.tasks)
    cfg = policy_config(args)
    t_start = time.perf_counter()
    bar = tqdm(total=2 + len(methods) * args.rounds, desc='bench_compression', unit='step', file=sys.stderr)
    bar.set_postfix_str('demonstrations, pre-training')
    fleet = prepare_fleet(args, cfg, bar)
    results = [run_method(m, fleet, args, checkpoints, bar) for m in methods]
    bar.close()

    split = ', '.join(f'r{r}:' + '+'.join(_robot_tasks(r, tasks, args.tasks_per_robot)) for r in range(args.robots))
    header = [f'# bench_compression  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  {platform.machine()} '
              f'{platform.python_version()} torch {torch.__version__} threads=1',
              f'# command: bench_compression {" ".join(argv)}',
              f'# tasks: {", ".join(tasks)}; base pre-trained on {", ".join(tasks[:args.pretrain_tasks])}',
              f'# robots: {args.robots}; {split}',
              f'# adapter: {sum(fleet.base.segment_sizes())} federated parameters; {args.rounds} rounds x '
              f'{args.local_steps} local steps; compression ratio 1/{args.compression_ratio}; '
              f'eval {args.eval_episodes} episodes per task',
              f'# wall time {time.perf_counter() - t_start:.0f} s (per method, including evaluations: '
              + ', '.join(f'{r.method} {r.seconds:.0f} s' for r in results) + ')']
    table = '\n'.join(header) + '\n' + markdown(results, mine.target)
    print()
    print(table)
    if mine.markdown:
        mine.markdown.write_text(table + '\n')
    if mine.json:
        mine.json.write_text(json.dumps({'command': ['bench_compression', *argv], 'tasks': list(tasks),
                                         'rounds': args.rounds, 'compression_ratio': args.compression_ratio,
                                         'robots': args.robots, 'eval_episodes_per_task': args.eval_episodes,
                                         'methods': [asdict(m) for m in methods],
                                         'results': [asdict(r) for r in results]}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
