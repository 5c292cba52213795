"""Provisioning of a demo fleet (ROS-free), as an operator and N robot owners would do it.

The library calls behind ``tensorguard fleet init`` / ``enroll`` and ``tensorguard robot install``:
server identities enrolled in the KMS, an initial model pre-trained on the server's own
demonstrations and its held-out set, then every robot enrolled, each given a bundle that is
installed into its ``robots/<id>/``.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from tensorguard_aggregator.rounds import Aggregator, AggregatorSettings
from tensorguard_crypto.fleet import FleetPaths, enroll_robot_bundle, install_bundle, provision_server
from tensorguard_crypto.params import standard_params
from tensorguard_learning.policy import MoEPolicy
from tensorguard_sim.bootstrap_model import BootstrapSpec, build_initial_policy, record_held_out
from tensorguard_sim.plan import FleetPlan

# The fleet-wide parameters (``/**`` in the fleet YAML) the aggregator's core needs to sign the initial model.
ROUND_PARAMETERS = ('security_level', 'plaintext_bits', 'max_clients', 'clipping_norm', 'noise_multiplier',
                    'min_clients')


def bootstrap_spec(plan: FleetPlan) -> BootstrapSpec:
    """The initial model of `plan`: its tasks are the fleet's and the pre-training tasks."""
    return BootstrapSpec(policy_tasks=tuple(dict.fromkeys(plan.fleet_tasks + plan.pretrain_tasks)),
                         pretrain_tasks=plan.pretrain_tasks,
                         pretrain_episodes_per_task=plan.pretrain_episodes_per_task,
                         pretrain_steps=plan.pretrain_steps, policy_options=plan.policy,
                         held_out_episodes_per_task=plan.held_out_episodes_per_task)


def provision(fleet: FleetPaths, shared: dict, plan: FleetPlan, passphrase: bytes,
              log: Callable[[str], None]) -> MoEPolicy:
    """Server keys, the initial model and the held-out set, then every robot's enrolment: a bundle per
    robot in ``<fleet>/../bundles/``, installed into ``robots/<id>/`` as `tensorguard robot install` does."""
    params = standard_params(shared['security_level'], shared['plaintext_bits'], shared['max_clients'],
                             shared['min_clients'])
    provision_server(fleet, passphrase)
    log(f'provisioned server identities in {fleet.server}; the key service makes one lattice key per round '
        f'(ring n={params.n}, log2 q={params.coefficient_bits})')
    started = time.monotonic()
    policy = build_initial_policy(bootstrap_spec(plan))
    record_held_out(fleet, plan.fleet_tasks, plan.held_out_episodes_per_task)
    aggregator = Aggregator(AggregatorSettings(fleet_dir=str(fleet.root), **{k: shared[k] for k in ROUND_PARAMETERS}),
                            passphrase)
    aggregator.publish_model(policy, round_id=0, decision='initial')
    log(f'initial model: base pre-trained on {", ".join(plan.pretrain_tasks)} '
        f'({time.monotonic() - started:.0f} s), adapter {policy.cfg.num_experts} experts (top-{policy.cfg.top_k}, '
        f'{sum(policy.segment_sizes()):,} federated parameters)')
    enroll_robots(fleet, plan, passphrase)
    log(f'enrolled {plan.robots} robots (bundles in {fleet.root.parent / "bundles"}, '
        f'installed into {fleet.root / "robots"})')
    return policy


def enroll_robots(fleet: FleetPaths, plan: FleetPlan, passphrase: bytes) -> None:
    """Enrol every robot of `plan`: a bundle in ``<fleet>/../bundles/``, installed into ``robots/<id>/``."""
    bundles = fleet.root.parent / 'bundles'
    for i in range(plan.robots):
        robot_id = plan.robot_id(i)
        bundle = bundles / f'{robot_id}.bundle.tar'
        enroll_robot_bundle(fleet, robot_id, passphrase, bundle)
        install_bundle(bundle, fleet.robot_dir(robot_id), passphrase)
