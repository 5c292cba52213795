"""Provisioning of a demo fleet (ROS-free), as an operator and N robot owners would do it.

The library calls behind ``tensorguard fleet init`` / ``enroll``, the fleet server's
``publish_initial_model`` and ``tensorguard robot install``: server identities enrolled in the KMS, an
initial model pre-trained on the server's own demonstrations and its held-out set, then every robot
enrolled, each given a bundle that is installed into its ``robots/<id>/``.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tensorguard_aggregator.initial_model import publish_initial_model
from tensorguard_crypto.fleet import FleetPaths, enroll_robot_bundle, install_bundle, provision_server
from tensorguard_crypto.params import standard_params
from tensorguard_learning.policy import MoEPolicy
from tensorguard_sim.bootstrap_model import bootstrap_spec, write_initial_files
from tensorguard_sim.plan import FleetPlan


def provision(fleet: FleetPaths, shared: dict, plan: FleetPlan, passphrase: bytes,
              log: Callable[[str], None]) -> MoEPolicy:
    """Server keys, the initial model and the held-out set, then every robot's enrolment: a bundle per
    robot in ``<fleet>/../bundles/``, installed into ``robots/<id>/`` as `tensorguard robot install` does.

    The initial policy and held-out set are written to files and published with `publish_initial_model`,
    as an operator does with ``bootstrap_model`` and the fleet server's ``publish_initial_model`` command."""
    params = standard_params(shared['security_level'], shared['plaintext_bits'], shared['max_clients'],
                             shared['min_clients'])
    provision_server(fleet, passphrase)
    log(f'provisioned server identities in {fleet.server}; the key service makes one lattice key per round '
        f'(ring n={params.n}, log2 q={params.coefficient_bits})')
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=fleet.root.parent, prefix='.initial-model-') as inputs:
        policy_file, held_out = Path(inputs) / 'policy.pt', Path(inputs) / 'held_out'
        policy = write_initial_files(bootstrap_spec(plan), plan.fleet_tasks, policy_file, held_out)
        publish_initial_model(fleet, policy_file, held_out, passphrase)
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
