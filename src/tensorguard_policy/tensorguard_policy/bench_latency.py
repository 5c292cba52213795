"""Benchmark: the policy node's work per control step for the shipped adapter, on this machine.

One step is what the node's control timer does once an observation is there: `PolicyController.tick`
(the MoE policy's forward pass on one observation, then the ActionGuard's checks, clipping and rate
limit) and `action_message` (the JointTrajectory command of the simulated arm). The policy has the
shipped adapter's architecture (the ``policy`` section and tasks of config/simulated_fleet.yaml) and
is verified from a signed package exactly as on a robot; its weights are the untrained initial ones
(the work per step does not depend on their values). Several runs of many steps each, after a
warm-up; per run p50 and p99; the report gives the median over runs and the spread (min-max).

    python -m tensorguard_policy.bench_latency [--runs 5] [--steps 2000] [--output report.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import yaml
from builtin_interfaces.msg import Time

from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.verify import PinnedKeys
from tensorguard_crypto.wire import model_package
from tensorguard_edge.robot_inputs import action_message
from tensorguard_edge.streams import JOINT_TRAJECTORY, SourceSpec
from tensorguard_learning.policy import MoEConfig, build_policy
from tensorguard_policy.runner import PolicyController
from tensorguard_policy.settings import PolicySettings

PLAN = Path(os.environ.get('TENSORGUARD_ROOT', '.')) / 'config' / 'simulated_fleet.yaml'
COMMAND = SourceSpec(name='command', topic='command', type=JOINT_TRAJECTORY, joints=('x', 'y', 'z', 'grip'))


def shipped_config(plan_path: Path) -> MoEConfig:
    """The adapter the simulated fleet ships: its ``policy`` options over the fleet's and pre-training tasks."""
    plan = yaml.safe_load(plan_path.read_text())
    tasks = tuple(dict.fromkeys([t for tasks in plan['robot_tasks'] for t in tasks] + plan['pretrain_tasks']))
    return MoEConfig(tasks=tasks, **plan['policy'])


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the architecture where there is none)."""
    try:
        lines = Path('/proc/cpuinfo').read_text().splitlines()
    except OSError:
        return platform.machine()
    return next((line.split(':', 1)[1].strip() for line in lines if line.startswith('model name')), platform.machine())


def ready_controller(config: MoEConfig, settings: PolicySettings) -> PolicyController:
    """A controller holding a verified model of `config`, enabled and driving an autonomous episode."""
    server = Identity.generate('server', Role.SERVER)
    package = model_package(model_version=1, parent_version=0, round_id=0,
                            parameters=build_policy(config).state_bytes(), gate_decision='initial',
                            signer_key_id='server', created_at=time.time()).signed_by(server)
    controller = PolicyController(PinnedKeys({'server': (Role.SERVER, server.public_key_bytes())}), 'robot_1',
                                  settings.envelope(), 1.0 / settings.control_rate_hz, config.obs_dim)
    controller.offer_model(package.serialize(), [])
    controller.set_enabled(True)
    controller.start_episode(0, config.tasks[0], autonomous=True)
    return controller


def run(controller: PolicyController, observations: np.ndarray) -> np.ndarray:
    """Seconds per step for each observation (stamped now, so the watchdog never stops it)."""
    seconds = np.empty(len(observations))
    stamp = Time()
    for i, obs in enumerate(observations):
        now = time.time_ns()
        start = time.perf_counter()
        command = controller.tick(now, (now, obs))
        action_message(COMMAND, command, stamp)
        seconds[i] = time.perf_counter() - start
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print (and optionally write) its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=5, help='independent runs (default 5)')
    parser.add_argument('--steps', type=int, default=2000, help='measured steps per run (default 2000)')
    parser.add_argument('--warmup', type=int, default=200, help='unmeasured steps before each run (default 200)')
    parser.add_argument('--plan', type=Path, default=PLAN, help='fleet plan with the policy section')
    parser.add_argument('--output', type=Path, help='also write the JSON report here')
    args = parser.parse_args(argv)

    config = shipped_config(args.plan)
    settings = PolicySettings()
    rng = np.random.default_rng(0)
    runs = []
    for _ in range(args.runs):
        controller = ready_controller(config, settings)
        run(controller, rng.standard_normal((args.warmup, config.obs_dim)).astype(np.float32))
        ms = 1000 * run(controller, rng.standard_normal((args.steps, config.obs_dim)).astype(np.float32))
        if controller.status().commands != args.warmup + args.steps:  # every step must have run the model
            raise RuntimeError(f'only {controller.status().commands} of {args.warmup + args.steps} steps commanded')
        runs.append({'p50_ms': float(np.percentile(ms, 50)), 'p99_ms': float(np.percentile(ms, 99)),
                     'max_ms': float(ms.max()), 'mean_ms': float(ms.mean())})
    summary = {key: {'median': float(np.median([r[key] for r in runs])), 'min': min(r[key] for r in runs),
                     'max': max(r[key] for r in runs)} for key in ('p50_ms', 'p99_ms')}
    report = {
        'benchmark': 'policy node step (PolicyController.tick + action_message)',
        'date': datetime.now(timezone.utc).isoformat(timespec='seconds'),
        'machine': {'platform': platform.platform(), 'cpu': cpu_model(),
                    'cpus': os.cpu_count(), 'python': platform.python_version(), 'torch': torch.__version__,
                    'torch_threads': torch.get_num_threads(),
                    'load_average_1m': os.getloadavg()[0]},
        'adapter': {'tasks': len(config.tasks), 'num_experts': config.num_experts, 'top_k': config.top_k,
                    'expert_hidden': config.expert_hidden, 'base_hidden': config.base_hidden,
                    'obs_dim': config.obs_dim, 'action_dim': config.action_dim},
        'runs': args.runs, 'steps_per_run': args.steps, 'warmup_steps': args.warmup,
        'per_run': runs, 'summary': summary, 'goal_p99_ms': 5.0,
        'meets_goal': summary['p99_ms']['max'] < 5.0,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
