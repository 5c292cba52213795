"""The fleet's first model (ROS-free): a base encoder pre-trained on the server's own public
demonstrations, then frozen; the MoE adapter is what the fleet federates from then on.

Also records the server's held-out demonstrations of the evaluation tasks, which the aggregator
loads (`tensorguard_aggregator.held_out`) to measure a candidate's KL divergence to the current
policy. None of this data comes from a robot. As a command, it writes both as the files the fleet
server's `publish_initial_model` takes (a production-shaped fleet's inputs, made for the demo's tasks):

    python -m tensorguard_sim.bootstrap_model --plan config/simulated_fleet.yaml [--robots N] \
        --policy initial-policy.pt --held-out held-out/
"""
from __future__ import annotations

import argparse
import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tensorguard_aggregator.held_out import MAX_BYTES
from tensorguard_crypto.keystore import KeyStoreError, write_private_file
from tensorguard_learning.demonstrations import Demonstration, DemonstrationStore
from tensorguard_learning.metaworld_source import record_demonstrations
from tensorguard_learning.policy import MoEConfig, MoEPolicy, build_policy
from tensorguard_learning.training import TrainingBudget, pretrain
from tensorguard_sim.plan import FleetPlan, load_plan

HELD_OUT_SEED = 500_000


@dataclass(frozen=True)
class BootstrapSpec:
    """What the initial model is pre-trained on and how the held-out set is drawn.

    `policy_options` are `MoEConfig` fields other than the task list (experts, top-k, ...).
    """

    policy_tasks: tuple[str, ...]
    pretrain_tasks: tuple[str, ...]
    pretrain_episodes_per_task: int
    pretrain_steps: int
    policy_options: dict
    held_out_episodes_per_task: int
    seed: int = 900_000


def build_initial_policy(spec: BootstrapSpec) -> MoEPolicy:
    """Pre-train base + adapter on the server's demonstrations of `pretrain_tasks`; freeze the base."""
    policy = build_policy(MoEConfig(tasks=spec.policy_tasks, **spec.policy_options))
    demos = [d for i, task in enumerate(spec.pretrain_tasks)
             for d in record_demonstrations(task, spec.pretrain_episodes_per_task, spec.seed + 1000 * i)]
    pretrain(policy, demos, TrainingBudget(max_steps=spec.pretrain_steps), freeze=True)
    return policy


def held_out_demonstrations(tasks: tuple[str, ...], episodes_per_task: int) -> list[Demonstration]:
    """The server's held-out demonstrations of the evaluation tasks (for the KL check)."""
    return [demo for i, task in enumerate(tasks)
            for demo in record_demonstrations(task, episodes_per_task, HELD_OUT_SEED + 1000 * i)]


def bootstrap_spec(plan: FleetPlan) -> BootstrapSpec:
    """The initial model of `plan`: its tasks are the fleet's and the pre-training tasks."""
    return BootstrapSpec(policy_tasks=tuple(dict.fromkeys(plan.fleet_tasks + plan.pretrain_tasks)),
                         pretrain_tasks=plan.pretrain_tasks,
                         pretrain_episodes_per_task=plan.pretrain_episodes_per_task,
                         pretrain_steps=plan.pretrain_steps, policy_options=plan.policy,
                         held_out_episodes_per_task=plan.held_out_episodes_per_task)


def record_held_out(directory: Path, tasks: tuple[str, ...], episodes_per_task: int) -> None:
    """Record the held-out demonstrations into the store at `directory`."""
    with DemonstrationStore(directory, max_bytes=MAX_BYTES, when_full='refuse') as store:
        for demo in held_out_demonstrations(tasks, episodes_per_task):
            store.append_episode(demo)


def write_initial_files(spec: BootstrapSpec, held_out_tasks: tuple[str, ...], policy_file: Path,
                        held_out: Path) -> MoEPolicy:
    """Build the initial policy of `spec` and write it to `policy_file` (`MoEPolicy.state_bytes`, mode 0600),
    then record the held-out demonstrations of `held_out_tasks` into a new store at `held_out`: the inputs of
    `publish_initial_model`. An existing policy file or non-empty `held_out` is refused first. Returns the policy."""
    if policy_file.exists() or policy_file.is_symlink():
        raise FileExistsError(f'{policy_file}: already exists; refusing to overwrite a policy file')
    if held_out.exists() and (not held_out.is_dir() or any(held_out.iterdir())):
        raise FileExistsError(f'{held_out}: already exists and is not an empty directory')
    policy = build_initial_policy(spec)
    write_private_file(policy_file, policy.state_bytes(), 'policy file')
    record_held_out(held_out, held_out_tasks, spec.held_out_episodes_per_task)
    return policy


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: write the simulation plan's initial policy and held-out set to files."""
    parser = argparse.ArgumentParser(prog='bootstrap_model', description=__doc__.splitlines()[0])
    config_dir = Path(os.environ.get('TENSORGUARD_ROOT', '.')) / 'config'
    parser.add_argument('--plan', type=Path, default=config_dir / 'simulated_fleet.yaml', help='the simulation plan')
    parser.add_argument('--robots', type=int, default=None,
                        help="override the plan's robots (their tasks are the held-out and evaluation tasks)")
    parser.add_argument('--policy', type=Path, required=True, help='policy file to write')
    parser.add_argument('--held-out', type=Path, required=True, help='demonstration store directory to create')
    args = parser.parse_args(argv)
    plan = load_plan(args.plan)
    plan = replace(plan, robots=args.robots or plan.robots)
    started = time.monotonic()
    try:
        policy = write_initial_files(bootstrap_spec(plan), plan.fleet_tasks, args.policy, args.held_out)
    except (OSError, KeyStoreError) as error:
        parser.exit(1, f'error: {error}\n')
    digest = hashlib.sha256(args.policy.read_bytes()).hexdigest()
    print(f'policy {args.policy} (sha256 {digest}): tasks {", ".join(policy.cfg.tasks)}; base pre-trained on '
          f'{", ".join(plan.pretrain_tasks)}; {policy.cfg.num_experts} experts (top-{policy.cfg.top_k}), '
          f'{sum(policy.segment_sizes()):,} federated parameters')
    print(f'held-out set {args.held_out}: {plan.held_out_episodes_per_task} episodes of each of '
          f'{", ".join(plan.fleet_tasks)} ({time.monotonic() - started:.0f} s in all)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
