"""`tensorguard flower-scale`: K simulated robots learning through TensorGuard rounds on Flower's simulation engine.

It provisions a fleet in ``--out`` (server identities, K enrolled robots, a signed initial model
whose base the server pre-trains on its own Meta-World demonstrations of three other tasks, the
server's held-out states), gives every robot its own demonstrations, and runs ``--rounds`` rounds
of `TensorGuardStrategy` with the client app on K virtual SuperNodes (Ray backend, one CPU per
client). Every robot takes part in every round: there is no client sampling, so no privacy
amplification by sampling is claimed.

Data: non-IID and unshared, the split of `tensorguard_flower.split` (robot i demonstrates one task
from its own simulator seeds; episodes cached in ``--cache`` and reused by later runs).

The DP noise is calibrated for all K robots (``min_clients`` = quorum = K) and each robot holds its
own budget (``--epsilon-budget`` at delta 1e-5, hard stop). The gate deploys every candidate (its
thresholds are set so, as `fleet_replay --no-gate` does), so the report shows what the rounds learn.
Before the Flower run, the same robots run the same rounds without privacy (`plaintext.run_rounds`:
no clipping, no noise, no lattice layer), evaluated by the gate on the same seeds: the non-private
reference each private round is compared with (``--no-reference`` skips it).
Output: one line per round, a table at the end and ``<out>/report.json``: rounds, epsilon, success
with its lower bound, the non-private success of the same round and how many points the private
round is below it, the segments the aggregator left frozen because their summed weight was within
the DP noise, bytes per robot, seconds per round, set-up times, and the peak memory of the command's
process tree (this process, Ray and its workers, sampled every 0.5 s).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.simulation import run_simulation
from tqdm import tqdm

from tensorguard_aggregator.gate import DeploymentGate, GateSettings, RoundLog
from tensorguard_aggregator.key_service import KeyServiceCore, KeyServiceSettings
from tensorguard_aggregator.rounds import Aggregator, AggregatorSettings
from tensorguard_crypto.fleet import FleetPaths, enroll_robot, provision_server
from tensorguard_edge.client import EdgeClient, EdgeSettings
from tensorguard_flower.client_app import client_app, robot_settings
from tensorguard_flower.plaintext import SECURITY_LEVEL, Mechanism, RobotPool, lattice_refusal, run_rounds
from tensorguard_flower.split import add_fleet_arguments, check_fleet_arguments, initial_model, robot_demonstrations
from tensorguard_flower.strategy import TensorGuardStrategy


class PeakMemory:
    """Peak summed resident memory of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, tree_rss_bytes(os.getpid()))
            self._stop.wait(self.interval_s)


@dataclass(frozen=True)
class ProcessStat:
    """What this module reads of one process in /proc/<pid>/stat (proc(5))."""

    parent: int
    state: str
    cpu_s: float
    rss_bytes: int


def process_table() -> dict[int, ProcessStat]:
    """Every process by pid (zombies included), from /proc; one that ends while it is read is left out."""
    table, tick, page = {}, os.sysconf('SC_CLK_TCK'), os.sysconf('SC_PAGE_SIZE')
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / 'stat').read_text().rsplit(')', 1)[1].split()  # after the command name
            table[int(entry.name)] = ProcessStat(parent=int(fields[1]), state=fields[0],
                                                 cpu_s=(int(fields[11]) + int(fields[12])) / tick,
                                                 rss_bytes=int(fields[21]) * page)
        except (OSError, IndexError, ValueError):
            continue
    return table


def tree_rss_bytes(root: int) -> int:
    """Resident memory of process `root` and its descendants (from /proc)."""
    table = process_table()
    tree, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, stat in table.items() if stat.parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return sum(table[pid].rss_bytes for pid in tree if pid in table)


def _parse(argv: Sequence[str], prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument('--robots', type=int, required=True, help='K, the number of simulated robots (>= 2)')
    parser.add_argument('--noise-multiplier', type=float, default=1.11,
                        help='the fleet default: epsilon 7.96 over three rounds at delta 1e-5, within the budget of 8')
    parser.add_argument('--epsilon-budget', type=float, default=8.0, help="each robot's budget at delta 1e-5")
    parser.add_argument('--eval-episodes', type=int, default=4, help='gate evaluation episodes per fleet task')
    parser.add_argument('--no-reference', dest='reference', action='store_false',
                        help='skip the non-private run of the same robots, rounds and evaluation seeds')
    parser.add_argument('--out', type=Path, required=True, help='new directory for the fleet and report.json')
    add_fleet_arguments(parser)
    args = parser.parse_args(list(argv))
    check_fleet_arguments(parser, args)
    if args.robots < 2:
        parser.error('--robots must be at least 2 (the key service never decrypts a single update)')
    if refusal := lattice_refusal(args.robots):
        parser.error(f'--robots {args.robots}: {refusal}')
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f'{args.out} exists and is not empty')
    return args


def main(argv: Sequence[str] | None = None, prog: str = 'tensorguard flower-scale') -> int:
    """Entry point (also `tensorguard flower-scale`): run the fleet, print the table, write report.json."""
    args = _parse(sys.argv[1:] if argv is None else argv, prog)
    torch.set_num_threads(1)
    started = time.monotonic()
    timings = {}
    passphrase = secrets.token_urlsafe(32)  # OS CSPRNG; reaches the Ray workers through the environment only
    os.environ['TENSORGUARD_KEY_PASSPHRASE'] = passphrase
    k = args.robots
    shared = dict(security_level=SECURITY_LEVEL, plaintext_bits=Mechanism.plaintext_bits, max_clients=k,
                  clipping_norm=args.clipping_norm, noise_multiplier=args.noise_multiplier, min_clients=k)
    with PeakMemory() as memory:
        demos = robot_demonstrations(args.cache, k, args.episodes, args.tasks)
        timings['demonstrations_s'] = time.monotonic() - started

        mark = time.monotonic()
        initial = initial_model(args.cache, args.pretrain_steps, args.expert_hidden, args.expert_input_rank,
                                args.tasks, args.pretrain_tasks)
        policy, held_out = initial.policy.clone(), initial.held_out
        timings['initial_model_s'] = time.monotonic() - mark

        mark = time.monotonic()
        paths = FleetPaths(args.out / 'fleet')
        provision_server(paths, passphrase.encode())
        aggregator = Aggregator(AggregatorSettings(fleet_dir=str(paths.root), quorum=k, round_deadline_s=86400.0,
                                                   delete_closed_updates=True, **shared), passphrase.encode())
        aggregator.publish_model(policy, 0, 'initial')
        edge = EdgeSettings(train_steps=args.train_steps, epsilon_budget=args.epsilon_budget,
                            **{key: value for key, value in shared.items() if key != 'security_level'})
        robots = []
        for i in tqdm(range(k), desc='enrolment'):
            robot_id = f'robot_{i + 1}'
            enroll_robot(paths, robot_id, passphrase.encode())
            robots.append(robot_settings(str(paths.root), robot_id, edge))
            client = EdgeClient(robots[-1])
            for demo in demos[i]:
                client.add_demonstration(demo)
            client.close()
        key_service = KeyServiceCore(KeyServiceSettings(fleet_dir=str(paths.root), min_quorum=k, **{
            key: shared[key] for key in ('security_level', 'plaintext_bits', 'max_clients', 'min_clients')}),
            passphrase.encode())
        gate = GateSettings(eval_tasks=list(args.tasks), eval_episodes_per_task=args.eval_episodes,
                            min_success_rate=0.0, deploy_margin=0.0, max_kl_divergence=1e9,
                            select_per_task=args.select_per_task)
        timings['provisioning_s'] = time.monotonic() - mark

        reference = []
        if args.reference:
            mark = time.monotonic()
            with RobotPool(demos, edge, os.cpu_count() or 1) as pool, \
                    tqdm(total=k * args.rounds, desc='non-private reference', unit='robot') as bar:
                reference = run_rounds(pool, initial.policy, args.rounds, Mechanism(None), DeploymentGate(gate),
                                       aggregator.settings.min_segment_weight, aggregator.settings.server_learning_rate,
                                       held_out, progress=lambda row: bar.set_postfix(done=row['round']),
                                       trained=bar.update)
            timings['reference_s'] = time.monotonic() - mark

        mark, simulation_started = time.monotonic(), time.time()
        bar = tqdm(total=args.rounds, desc=f'rounds of {k} robots')

        def show_round(outcome: dict) -> None:
            bar.set_postfix(outcome=outcome['outcome'], epsilon=round(outcome['epsilon_max'], 2),
                            success=outcome.get('success_rate'))
            bar.update()

        strategy = TensorGuardStrategy(aggregator, key_service, DeploymentGate(gate), RoundLog.of(paths), held_out,
                                       on_round=show_round)
        run_simulation(
            server_app=ServerApp(server_fn=lambda _context: ServerAppComponents(
                strategy=strategy, config=ServerConfig(num_rounds=args.rounds, round_timeout=86400.0))),
            client_app=client_app(robots), num_supernodes=k,
            backend_config={'client_resources': {'num_cpus': 1, 'num_gpus': 0.0},
                            'init_args': {'num_cpus': os.cpu_count(), 'logging_level': 'error'}})
        bar.close()
        timings['rounds_s'] = time.monotonic() - mark

    rows, previous = [], simulation_started
    for outcome in strategy.outcomes:
        rows.append({'round': outcome['round_id'], 'outcome': outcome['outcome'],
                     'robots': len(outcome['participants']), 'refused': outcome['refused'],
                     'rejected': outcome['rejected'], 'epsilon': outcome['epsilon_max'],
                     'success': outcome.get('success_rate'), 'lower': outcome.get('success_lower_bound'),
                     'decision': outcome.get('decision'), 'frozen_segments': outcome.get('frozen_segments'),
                     'selection': outcome.get('selection'),
                     'bytes_per_robot': outcome['bytes_per_robot'],
                     'seconds': outcome['closed_at'] - previous})
        previous = outcome['closed_at']
    for row, plain in zip(rows, reference):
        row.update(reference_success=plain['success'], reference_lower=plain['lower'],
                   points_below_reference=None if row['success'] is None else 100 * (plain['success'] - row['success']))
    report = {'argv': list(sys.argv[1:] if argv is None else argv), 'robots': k, 'tasks': list(args.tasks),
              'pretrain_tasks': list(args.pretrain_tasks),
              'federated_parameters': sum(policy.segment_sizes()), 'rows': rows, 'reference_rows': reference,
              'timings_s': timings,
              'wall_s': time.monotonic() - started, 'peak_memory_bytes': memory.peak_bytes}
    (args.out / 'report.json').write_text(json.dumps(report, indent=2))
    print(f"{'round':>5} {'robots':>6} {'refused':>7} {'epsilon':>8} {'success':>7} {'lower':>6} {'decision':>8} "
          f"{'frozen':>6} {'KB/robot':>9} {'secs':>6} {'non-private':>11}")
    for row in rows:
        print(f"{row['round']:>5} {row['robots']:>6} {sum(row['refused'].values()):>7} {row['epsilon']:>8.2f} "
              f"{row['success'] if row['success'] is not None else float('nan'):>7.2f} "
              f"{row['lower'] if row['lower'] is not None else float('nan'):>6.2f} {row['decision'] or '-':>8} "
              f"{row['frozen_segments'] if row['frozen_segments'] is not None else '-':>6} "
              f"{row['bytes_per_robot'] / 1024:>9.1f} {row['seconds']:>6.0f} "
              f"{row.get('reference_success', float('nan')):>11.2f}")
    print(f"set-up {timings['demonstrations_s'] + timings['initial_model_s'] + timings['provisioning_s']:.0f} s, "
          f"rounds {timings['rounds_s']:.0f} s, peak memory {memory.peak_bytes / 2**30:.2f} GiB; "
          f"report {args.out / 'report.json'}")
    return 0 if rows and all(row['outcome'] == 'aggregated' for row in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
