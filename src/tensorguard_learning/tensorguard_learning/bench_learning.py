"""Benchmark: federated MoE-adapter learning on Meta-World with simulated robots (non-IID split).

Prints ONE table: success rate (simulator episodes, Beta lower bound) of centralised BC on pooled
data, local-only (mean over robots), FedAvg, FedMoE, FedMoE + random-k compression; bytes per robot
per round; time per round. Run: ``bench_fleet_learning`` (defaults) or ``--quick`` (smoke run).
"""
from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tensorguard_learning.aggregation import ExpertDrivenStrategy, FedAvgStrategy, apply_update
from tensorguard_learning.compression import ErrorFeedback, directed_coordinates, round_coordinates, sparsify
from tensorguard_learning.demonstrations import Demonstration, DemonstrationStore
from tensorguard_learning.envelope import OperatingEnvelope
from tensorguard_learning.evaluation import EvaluationGate, EvaluationMetrics, SafetyThresholds, policy_kl
from tensorguard_learning.metaworld_source import RolloutReport, record_demonstrations, rollout_success
from tensorguard_learning.policy import MoEConfig, MoEPolicy
from tensorguard_learning.training import BCData, TrainingBudget, pretrain, train_local

DEFAULT_TASKS = ('push-v3', 'door-open-v3', 'drawer-close-v3', 'button-press-topdown-v3',
                 'window-open-v3', 'window-close-v3')
EVAL_SEED = 1_000_000
HELD_OUT_SEED = 2_000_000
PRETRAIN_SEED = 3_000_000


@dataclass
class Row:
    """One line of the result table."""

    method: str
    report: RolloutReport | None
    bytes_per_round: int | None
    seconds_per_round: float | None
    note: str = ''
    robot_reports: list[RolloutReport] | None = None


def _cached_demos(task: str, episodes: int, seed: int, cache: Path) -> list[Demonstration]:
    path = cache / f'{task}-{episodes}-{seed}.npz'
    if path.exists():
        with np.load(path) as z:
            lengths = z['lengths']
            states = np.split(z['states'], np.cumsum(lengths)[:-1])
            actions = np.split(z['actions'], np.cumsum(lengths)[:-1])
        return [Demonstration(task, s, a, episode_index=i) for i, (s, a) in enumerate(zip(states, actions))]
    demos = record_demonstrations(task, episodes, seed)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, lengths=np.array([d.num_frames for d in demos]),
             states=np.concatenate([d.observation_state for d in demos]),
             actions=np.concatenate([d.action for d in demos]))
    return demos


def _robot_tasks(robot: int, tasks: tuple[str, ...], per_robot: int) -> list[str]:
    return [tasks[(robot + j) % len(tasks)] for j in range(per_robot)]


@dataclass
class FederatedRun:
    """Outcome of T federated rounds."""

    policy: MoEPolicy
    previous: MoEPolicy
    bytes_per_round: int
    seconds_per_round: float
    vector_norms: list[float]
    delta_norms: list[float]


def _federate(name: str, base: MoEPolicy, robot_data: list[BCData], strategy, args, envelope: OperatingEnvelope,
              compress_ratio: int | None, bar: tqdm, *, coordinate_period: int = 1, error_feedback: bool = True,
              on_round: Callable[[int, MoEPolicy], None] | None = None,
              coordinates: np.ndarray | None = None, directed_share: float = 0.0) -> FederatedRun:
    """Run T rounds of simulated robots training locally and the server aggregating in plaintext.

    With compression the round's coordinates are redrawn every `coordinate_period` rounds (1: every
    round); `error_feedback=False` drops the unsent part of each delta instead of carrying it (and
    then needs no proximal term: every robot restarts from the global model each round).
    `on_round(r, global_policy)` is called after round r (1-based) has been applied. `coordinates`
    replaces the random-k by one public, fixed coordinate set sent every round (no error feedback).
    `directed_share > 0` spends that share of k where the previous round's aggregate moved most
    (`compression.directed_coordinates`; the first round is all random-k).
    """
    global_policy = base.clone()
    sizes = global_policy.segment_sizes()
    total = sum(sizes)
    always = sum(sizes[base.cfg.num_experts:])
    k = max(1, (total + len(sizes)) // compress_ratio - always - len(sizes)) if compress_ratio else None
    if coordinates is not None:
        k, error_feedback = int(coordinates.size), False
    feedback = [ErrorFeedback(total) for _ in robot_data] if k and error_feedback else None
    robots = [base.clone() for _ in robot_data]
    norms: list[float] = []
    delta_norms: list[float] = []
    previous = global_policy.clone()
    start = time.perf_counter()
    bytes_per_round = 0
    for rnd in range(args.rounds):
        round_seed = hashlib.sha256(f'{name}/round/{rnd // coordinate_period}'.encode()).digest()
        always_send = range(base.cfg.num_experts, len(sizes))
        if coordinates is not None or not k:
            indices = coordinates
        elif directed_share and rnd:
            public_delta = (np.concatenate(global_policy.flatten_segments())
                            - np.concatenate(previous.flatten_segments()))
            indices = directed_coordinates(round_seed, sizes, k, public_delta, always_send, directed_share)
        else:
            indices = round_coordinates(round_seed, sizes, k, always_send=always_send)
        vectors = []
        for i, data in enumerate(robot_data):
            robot = robots[i]
            robot.load_segments(global_policy.flatten_segments())
            reference = feedback[i].start_from(robot) if feedback else None
            budget = TrainingBudget(max_steps=args.local_steps, batch_size=args.batch_size, learning_rate=args.lr,
                                    seed=rnd * 1000 + i, proximal_mu=args.proximal_mu if feedback else 0.0)
            update = train_local(robot, data, budget, envelope, reference=reference)
            if feedback:
                values = feedback[i].compress(update.dense_delta(), indices)
                vec = strategy.flatten_update(update, values, indices)
            elif k:
                vec = strategy.flatten_update(update, sparsify(update.dense_delta(), indices), indices)
            else:
                vec = strategy.flatten_update(update)
            envelope.check_update_size(vec.nbytes)
            bytes_per_round = vec.nbytes
            norms.append(float(np.linalg.norm(vec)))
            delta_norms.append(float(np.linalg.norm(vec[:-len(sizes)])))
            vectors.append(vec)
        previous = global_policy.clone()
        apply_update(global_policy, strategy.aggregate(vectors, sizes, indices))
        if on_round is not None:
            on_round(rnd + 1, global_policy)
        bar.update(1)
    seconds = (time.perf_counter() - start) / args.rounds
    return FederatedRun(global_policy, previous, bytes_per_round, seconds, norms, delta_norms)


@dataclass
class Fleet:
    """The server's pre-trained base and the simulated robots' data."""

    base: MoEPolicy
    robot_data: list[BCData]
    held_out: BCData
    pretrain_loss: float


def prepare_fleet(args: argparse.Namespace, cfg: MoEConfig, bar: tqdm | None = None) -> Fleet:
    """Pre-train the base on the first `args.pretrain_tasks` tasks and give each robot its non-IID demonstrations
    (cached, written into and read back from a `DemonstrationStore` per robot)."""
    tasks = cfg.tasks
    pre_demos = [d for t in tasks[:args.pretrain_tasks]
                 for d in _cached_demos(t, args.pretrain_demos, PRETRAIN_SEED, args.cache_dir)]
    base = MoEPolicy(cfg)
    pretrain_loss = pretrain(base, BCData.from_demonstrations(base, pre_demos),
                             TrainingBudget(max_steps=args.pretrain_steps, batch_size=args.batch_size,
                                            learning_rate=args.lr))
    held_out_demos = [d for t in tasks for d in _cached_demos(t, 3, HELD_OUT_SEED, args.cache_dir)]
    held_out = BCData.from_demonstrations(base, held_out_demos)
    if bar is not None:
        bar.update(1)

    robot_data: list[BCData] = []
    holders = {t: [r for r in range(args.robots) if t in _robot_tasks(r, tasks, args.tasks_per_robot)] for t in tasks}
    with tempfile.TemporaryDirectory(prefix='tg-bench-') as tmp:
        for r in range(args.robots):
            with DemonstrationStore(Path(tmp) / f'robot_{r}', max_bytes=1 << 30) as store:
                for t in _robot_tasks(r, tasks, args.tasks_per_robot):
                    seed = 10_000 * (holders[t].index(r) + 1)
                    for demo in _cached_demos(t, args.demos_per_robot_task, seed, args.cache_dir):
                        store.append_episode(demo)
                robot_data.append(BCData.from_store(base, store))
    if bar is not None:
        bar.update(1)
    return Fleet(base, robot_data, held_out, pretrain_loss)


def policy_config(args: argparse.Namespace) -> MoEConfig:
    """The adapter both benchmarks federate, from their shared options (`--tasks`, `--experts`,
    `--expert-hidden`, `--expert-input-rank`)."""
    return MoEConfig(tasks=tuple(args.tasks), expert_hidden=args.expert_hidden, num_experts=args.experts,
                     expert_input_rank=args.expert_input_rank)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='bench_fleet_learning', description=__doc__)
    p.add_argument('--tasks', nargs='+', default=list(DEFAULT_TASKS))
    p.add_argument('--pretrain-tasks', type=int, default=3, help='first N tasks form the server pre-training set')
    p.add_argument('--robots', type=int, default=6)
    p.add_argument('--tasks-per-robot', type=int, default=2)
    p.add_argument('--demos-per-robot-task', type=int, default=15)
    p.add_argument('--pretrain-demos', type=int, default=20)
    p.add_argument('--pretrain-steps', type=int, default=3000)
    p.add_argument('--rounds', type=int, default=600)
    p.add_argument('--local-steps', type=int, default=5)
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--compression-ratio', type=int, default=60)
    p.add_argument('--proximal-mu', type=float, default=0.1, help='FedProx mu for the compressed run')
    p.add_argument('--eval-episodes', type=int, default=20, help='per task, for the global/centralised policies')
    p.add_argument('--local-eval-episodes', type=int, default=5, help='per task, for each local-only policy')
    p.add_argument('--expert-hidden', type=int, default=64)
    p.add_argument('--experts', type=int, default=4)
    p.add_argument('--expert-input-rank', type=int, default=None, metavar='R',
                   help="experts' input layers fixed at their initial weights plus a trained rank-R correction "
                        "(MoEConfig.expert_input_rank); unset: trained in full")
    p.add_argument('--cache-dir', type=Path, default=Path.home() / '.cache' / 'tensorguard_learning')
    p.add_argument('--quick', action='store_true', help='tiny smoke run (2 tasks, 2 robots, few rounds)')
    args = p.parse_args(argv)
    if args.quick:
        args.tasks = args.tasks[:2]
        args.pretrain_tasks, args.robots, args.tasks_per_robot = 1, 2, 1
        args.demos_per_robot_task, args.pretrain_demos, args.pretrain_steps = 3, 3, 50
        args.rounds, args.local_steps, args.eval_episodes, args.local_eval_episodes = 3, 5, 2, 1
        args.expert_hidden = 32
    return args


def _fmt_rate(report: RolloutReport) -> str:
    s, n = sum(r.successes for r in report.results.values()), report.episodes
    metrics = EvaluationMetrics({'all': s}, {'all': n})
    return f'{report.mean_success:6.1%} (LB95 {metrics.success_lower_bound:5.1%}, n={n})'


def main(argv: list[str] | None = None) -> int:
    """Entry point of `bench_fleet_learning`."""
    torch.set_num_threads(1)
    args = _parse(argv)
    tasks = tuple(args.tasks)
    t_start = time.perf_counter()
    envelope = OperatingEnvelope(max_trainable_params=2_000_000, target_update_size_kb=1024)
    cfg = policy_config(args)
    rounds_total = 3 * args.rounds
    bar = tqdm(total=rounds_total + args.robots + 6, desc='bench', unit='step', file=sys.stderr)

    bar.set_postfix_str('recording demonstrations')
    fleet = prepare_fleet(args, cfg, bar)
    base, robot_data, held_out, pretrain_loss = fleet.base, fleet.robot_data, fleet.held_out, fleet.pretrain_loss

    rows: list[Row] = []
    central_steps = args.rounds * args.local_steps
    pooled = BCData(torch.cat([d.states for d in robot_data]), torch.cat([d.actions for d in robot_data]),
                    torch.cat([d.task_ids for d in robot_data]))
    t0 = time.perf_counter()
    central = base.clone()
    train_local(central, pooled, TrainingBudget(max_steps=central_steps, batch_size=args.batch_size,
                                                learning_rate=args.lr), envelope)
    central_time = time.perf_counter() - t0
    bar.set_postfix_str('evaluating centralised')
    rows.append(Row('pre-trained base + initial adapter (round 0)',
                    rollout_success(base, tasks, args.eval_episodes, EVAL_SEED),
                    None, None, f'base pre-trained on {args.pretrain_tasks} task(s)'))
    rows.append(Row('centralised BC, pooled data (upper bound)',
                    rollout_success(central, tasks, args.eval_episodes, EVAL_SEED),
                    None, None, f'{central_steps} steps in {central_time:.0f} s'))
    bar.update(1)

    bar.set_postfix_str('local-only')
    local_reports = []
    t0 = time.perf_counter()
    for data in robot_data:
        local = base.clone()
        train_local(local, data, TrainingBudget(max_steps=central_steps, batch_size=args.batch_size,
                                                learning_rate=args.lr), envelope)
        local_reports.append(rollout_success(local, tasks, args.local_eval_episodes, EVAL_SEED))
        bar.update(1)
    local_mean = RolloutReport()
    for t in tasks:
        first = local_reports[0].results[t]
        local_mean.results[t] = type(first)(t, sum(rep.results[t].successes for rep in local_reports),
                                            sum(rep.results[t].episodes for rep in local_reports),
                                            sum(rep.results[t].steps for rep in local_reports))
    rows.append(Row('local-only (mean over robots)', local_mean, 0, None,
                    f'{central_steps} steps per robot; {args.local_eval_episodes} ep/task/robot'))
    bar.update(1)

    runs = {}
    compressed = f'FedMoE + random-k (1/{args.compression_ratio} bytes) + EF + prox {args.proximal_mu}'
    for name, strategy, ratio in (('FedAvg', FedAvgStrategy(), None), ('FedMoE', ExpertDrivenStrategy(), None),
                                  (compressed, ExpertDrivenStrategy(), args.compression_ratio)):
        bar.set_postfix_str(name)
        run = _federate(name, base, robot_data, strategy, args, envelope, ratio, bar)
        runs[name] = run
        bar.set_postfix_str(f'evaluating {name}')
        rows.append(Row(name, rollout_success(run.policy, tasks, args.eval_episodes, EVAL_SEED), run.bytes_per_round,
                        run.seconds_per_round,
                        f'update L2 norm median {np.median(run.vector_norms):.3f} (deltas only '
                        f'{np.median(run.delta_norms):.3f}, p95 {np.percentile(run.delta_norms, 95):.3f})'))
        bar.update(1)
    bar.close()

    fedmoe = runs['FedMoE']
    gate = EvaluationGate(SafetyThresholds(min_success_rate=0.85, max_kl_divergence=0.5))
    metrics = EvaluationMetrics.from_report(rows[-2].report, policy_kl(fedmoe.policy, fedmoe.previous, held_out))
    dense_bytes = (sum(base.segment_sizes()) + len(base.segment_sizes())) * 4

    print()
    print(f'# bench_fleet_learning  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  '
          f'{platform.machine()} {platform.python_version()} torch {torch.__version__} threads=1')
    print(f'# command: bench_fleet_learning {" ".join(argv if argv is not None else sys.argv[1:])}')
    print(f'# tasks: {", ".join(tasks)}; base pre-trained on {", ".join(tasks[:args.pretrain_tasks])} '
          f'({args.pretrain_demos} demos each, final BC loss {pretrain_loss:.4f})')
    split = ', '.join(f'r{r}:' + '+'.join(_robot_tasks(r, tasks, args.tasks_per_robot)) for r in range(args.robots))
    print(f'# robots: {args.robots}, each with {args.tasks_per_robot} task(s) x {args.demos_per_robot_task} demos '
          f'(non-IID); {split}')
    print(f'# adapter: {args.experts} experts (top-{cfg.top_k}), {sum(base.segment_sizes())} federated parameters '
          f'(dense fp32 update {dense_bytes} B); rounds {args.rounds} x {args.local_steps} local steps, '
          f'batch {args.batch_size}')
    print('| method | mean success (Beta 95% lower bound, episodes) | per task | bytes/robot/round | s/round | note |')
    print('|---|---|---|---|---|---|')
    for row in rows:
        per_task = ' '.join(f'{r.successes}/{r.episodes}' for r in row.report.results.values())
        b = '-' if row.bytes_per_round is None else f'{row.bytes_per_round:,}'
        s = '-' if row.seconds_per_round is None else f'{row.seconds_per_round:.2f}'
        print(f'| {row.method} | {_fmt_rate(row.report)} | {per_task} | {b} | {s} | {row.note} |')
    compressed = rows[-1]
    print(f'# compression: {dense_bytes / compressed.bytes_per_round:.1f}x fewer bytes than dense fp32')
    passed, failures = gate.evaluate(metrics)
    print(f'# gate on the final FedMoE model (min_success_rate 0.85 on the 95% lower bound, max KL 0.5 to the '
          f'previous-round model on {len(held_out)} held-out states): {gate.decide(metrics).value}; '
          f'KL {metrics.kl_divergence:.4f}; failures: {failures or "none"}')
    print(f'# total wall time {time.perf_counter() - t_start:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
