"""A simulated fleet learning privately over real ROS 2: the README's main command.

It does what an operator and N robot owners would do, then watches:
1. provisions a fleet directory (`provisioning`) with the library calls behind ``tensorguard fleet
   init`` / ``enroll`` and ``tensorguard robot install``: server identities enrolled in the KMS, an
   initial model pre-trained on the server's own demonstrations, and N enrolled robots, each given a
   bundle (``<run>/bundles/``) that is installed into its ``robots/<id>/``;
2. starts every node in its own process, configured from ``config/fleet.yaml``: the key service,
   the aggregator, and per robot (namespace ``/robot_<i>``) a Meta-World ``sim_robot``, its
   ``edge_node`` and, when the arm runs autonomous episodes (``sim_robot`` ``autonomous_every``),
   the robot's ``policy_node``, which the arm enables and follows in those episodes;
3. waits until every robot has recorded demonstrations, then runs the rounds through the
   aggregator's ``RunRound`` action, and prints one row per round from what the nodes publish
   (``FleetStatus``, each robot's ``RobotStatus``) and the server's round log; between rounds it
   waits for the robots' own episodes of the deployed model (on-robot success);
4. writes a JSON report and stops every process.

The passphrase protecting every key file is drawn from the OS CSPRNG for this run and handed to
the child processes in their environment only; it is never printed or written.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch

from tensorguard_aggregator.gate import DeploymentGate, GateSettings
from tensorguard_crypto.fleet import FleetPaths
from tensorguard_learning.policy import MoEPolicy
from tensorguard_ros.params import parameters_from_file
from tensorguard_sim.fleet_monitor import run_rounds
from tensorguard_sim.plan import FleetPlan, load_config
from tensorguard_sim.provisioning import provision
from tensorguard_sim.ros_parameters import node_parameters


def evaluate_initial_model(policy: MoEPolicy, plan: FleetPlan, params_path: Path) -> dict:
    """Round 0, the starting point the rounds are measured against: the initial model rolled out
    under the aggregator's own evaluation settings (tasks, episodes per task, round 0's seeds)."""
    settings = node_parameters(params_path, '/tensorguard/aggregator', GateSettings)
    metrics = DeploymentGate(replace(settings, eval_tasks=list(plan.fleet_tasks))).evaluate(policy, round_id=0)
    return {'round_id': 0, 'participants': [], 'rejected': 0, 'rejections_by_reason': {}, 'bytes_per_robot': 0,
            'epsilon_spent_max': 0.0, 'success_rate': metrics.success_rate,
            'success_lower_bound': metrics.success_lower_bound, 'deployed_success_rate': metrics.success_rate,
            'gate_decision': 'initial', 'model_version': 1,
            'seconds': 0.0, 'detail': f'successes per task: {metrics.successes}'}


class Processes:
    """The fleet's node processes; stopped together."""

    def __init__(self, log_dir: Path, env: dict) -> None:
        self.log_dir = log_dir
        self.env = env
        self.children: dict[str, subprocess.Popen] = {}

    def start(self, name: str, module: str, params_file: Path, namespace: str = '/',
              overrides: dict | None = None) -> None:
        """Start `python -m module` as a ROS node with the YAML and per-node overrides."""
        args = [sys.executable, '-m', module, '--ros-args', '-r', f'__ns:={namespace}',
                '--params-file', str(params_file)]
        for key, value in (overrides or {}).items():
            args += ['-p', f'{key}:={json.dumps(value) if isinstance(value, (list, bool)) else value}']
        log = open(self.log_dir / f'{name}.log', 'w')
        self.children[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                               start_new_session=True)

    def stop_all(self) -> None:
        """SIGINT every node, then SIGKILL what did not stop within 10 s."""
        for child in self.children.values():
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGINT)
        deadline = time.monotonic() + 10
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()

    def dead(self) -> list[str]:
        """Names of nodes that exited."""
        return [name for name, child in self.children.items() if child.poll() is not None]


def policy_parameters(params_file: Path, robot_id: str, trust_path: Path) -> dict:
    """A robot's policy node overrides: its identity and trust anchors, and the edge node's ``inputs.*``
    as the parameter file resolves them for the edge node, so both see one observation layout."""
    edge = parameters_from_file(params_file, f'/{robot_id}/edge_node')
    return {**{key: value for key, value in edge.items() if key.startswith('inputs.')},
            'robot_id': robot_id, 'trust_path': str(trust_path)}


def edge_node_parameters(fleet: FleetPaths, robot_id: str) -> dict:
    """The per-robot parameters of an installed robot's edge node: its identity, state and trust files."""
    robot_dir = fleet.robot_dir(robot_id)
    return {'robot_id': robot_id, 'state_dir': str(robot_dir / 'state'),
            'key_path': str(robot_dir / 'identity.key'), 'trust_path': str(robot_dir / 'trust.json')}


def start_fleet(procs: Processes, params_file: Path, fleet: FleetPaths, plan: FleetPlan) -> None:
    """Key service, aggregator, and per robot a simulated robot, its edge node and, if the arm runs
    autonomous episodes, its policy node."""
    root = str(fleet.root)
    procs.start('key_service', 'tensorguard_aggregator.key_service_node', params_file, '/tensorguard',
                {'fleet_dir': root})
    procs.start('aggregator', 'tensorguard_aggregator.aggregator_node', params_file, '/tensorguard',
                {'fleet_dir': root, 'eval_tasks': list(plan.fleet_tasks)})
    for i in range(plan.robots):
        robot_id = plan.robot_id(i)
        robot_dir = fleet.robot_dir(robot_id)
        procs.start(f'{robot_id}_sim', 'tensorguard_sim.sim_robot', params_file, f'/{robot_id}',
                    {'robot_id': robot_id, 'tasks': list(plan.tasks_of(i)), 'seed': plan.seed_of(i)})
        procs.start(f'{robot_id}_edge', 'tensorguard_edge.edge_node', params_file, f'/{robot_id}',
                    edge_node_parameters(fleet, robot_id))
        if parameters_from_file(params_file, f'/{robot_id}/sim_robot').get('autonomous_every', 0):
            procs.start(f'{robot_id}_policy', 'tensorguard_policy.policy_node', params_file, f'/{robot_id}',
                        policy_parameters(params_file, robot_id, robot_dir / 'trust.json'))


def main(argv: list[str] | None = None) -> int:
    """Entry point: provision, start, run the rounds, report."""
    parser = argparse.ArgumentParser(prog='simulated_fleet', description=__doc__.splitlines()[0])
    config_dir = Path(os.environ.get('TENSORGUARD_ROOT', '.')) / 'config'
    parser.add_argument('--config', type=Path, default=config_dir / 'fleet.yaml', help='ROS parameters of every node')
    parser.add_argument('--plan', type=Path, default=config_dir / 'simulated_fleet.yaml', help='the simulation plan')
    parser.add_argument('--run-dir', type=Path, default=None, help='where the fleet directory and logs go')
    parser.add_argument('--robots', type=int, default=None, help='override simulated_fleet.robots')
    parser.add_argument('--rounds', type=int, default=None, help='override simulated_fleet.rounds')
    parser.add_argument('--report', type=Path, default=None, help='JSON report path (default: <run-dir>/report.json)')
    parser.add_argument('--provision-only', action='store_true',
                        help='only provision the fleet directory (for launch/simulated_fleet.launch.py); '
                             'the passphrase is read from TENSORGUARD_KEY_PASSPHRASE')
    args = parser.parse_args(argv)

    shared, plan = load_config(args.config, args.plan)
    torch.set_num_threads(1)
    plan = replace(plan, robots=args.robots or plan.robots, rounds=args.rounds or plan.rounds)
    run_dir = args.run_dir or Path('.state') / time.strftime('fleet-%Y%m%d-%H%M%S')
    run_dir = run_dir.resolve()
    (run_dir / 'logs').mkdir(parents=True, exist_ok=True)
    fleet = FleetPaths(run_dir / 'fleet')
    started = time.monotonic()

    def log(text: str) -> None:
        print(f'[{time.monotonic() - started:6.1f} s] {text}', flush=True)

    if args.provision_only:
        passphrase = os.environ.get('TENSORGUARD_KEY_PASSPHRASE', '')
        if not passphrase:
            parser.error('--provision-only needs TENSORGUARD_KEY_PASSPHRASE in the environment')
        provision(fleet, shared, plan, passphrase.encode(), log)
        log(f'fleet directory ready: {fleet.root}')
        return 0
    passphrase = secrets.token_urlsafe(32)
    initial_policy = provision(fleet, shared, plan, passphrase.encode(), log)
    # SIGTERM (a CI timeout, `kill`) must still stop every node: turn it into a normal exit.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(128 + signal.SIGTERM))
    # One compute thread per node: a fleet of processes shares the machine's cores.
    env = {**os.environ, 'TENSORGUARD_KEY_PASSPHRASE': passphrase, 'OMP_NUM_THREADS': '1'}
    procs = Processes(run_dir / 'logs', env)
    try:
        start_fleet(procs, args.config.resolve(), fleet, plan)
        log(f'started {len(procs.children)} node processes (logs in {run_dir / "logs"})')
        # Measured while the robots record their first demonstrations.
        with ThreadPoolExecutor(max_workers=1) as pool:
            baseline = pool.submit(evaluate_initial_model, initial_policy, plan, args.config)
            report = run_rounds(plan, procs, log, baseline)
    finally:
        procs.stop_all()
    report['run_dir'] = str(run_dir)
    report['wall_seconds'] = round(time.monotonic() - started, 1)
    report_path = args.report or run_dir / 'report.json'
    report_path.write_text(json.dumps(report, indent=2))
    log(f'report written to {report_path}')
    return 0 if report.get('completed') else 1


if __name__ == '__main__':
    sys.exit(main())
