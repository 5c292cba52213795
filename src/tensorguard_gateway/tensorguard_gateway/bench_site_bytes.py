"""WAN bytes per round per site, with and without site-level aggregation (docs/site-aggregation.md).

    ros2 run tensorguard_gateway bench_site_bytes [--robots 2 4 8] [--repeats 3]

For each site size it runs one round of the demo fleet's shape (config/fleet.yaml's DP and lattice
settings, config/simulated_fleet.yaml's adapter: the update vector the aggregator announces when
every coordinate is sent) with the real library: the key service's signed round key, the
aggregator's signed round config, each robot's Skellam encoding, lattice encryption, seal and
signed `UpdatePackage` (the calls of the edge client), and in site mode the site gateway's
`SiteCollector` and its signed `SitePartialSum`. It counts the bytes of the ROS messages that cross
the WAN for the site, serialized with rclpy as the gateway carries them (a Zenoh payload is exactly
that serialization): up, every robot's `EncryptedUpdate` (off) or one `SitePartialSum` (on); down,
the `RoundConfig`. Zenoh framing, TLS records and the server gateway's 32-byte acknowledgements are
not counted. The update vectors are random with norm below the clipping norm: the sizes depend only
on the round's shape. The site gateway's time to verify, open and add its robots' updates and
sign the sum is timed too (median and range over the repeats).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import yaml
from rclpy.serialization import serialize_message

from tensorguard_crypto import update_codec
from tensorguard_crypto.accountant import DPProfile
from tensorguard_crypto.hybrid import SealedBoxKey
from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.secagg import generate_key_service_keys
from tensorguard_crypto.site_sum import SiteCollector
from tensorguard_crypto.verify import PinnedKeys
from tensorguard_crypto.wire import (
    RoundConfigPackage,
    RoundKeyAnnouncement,
    SafetyStats,
    SiteAggregatorEntry,
    UpdatePackage,
)
from tensorguard_learning.aggregation import strategy_from_name
from tensorguard_learning.compression import adapter_round_coordinates
from tensorguard_learning.policy import MoEConfig, build_policy
from tensorguard_msgs.msg import RoundConfig

from .site_aggregation import partial_sum_message, update_message

ROOT = Path(os.environ.get('TENSORGUARD_ROOT', '.'))


def demo_dimension(plan_path: Path, strategy: str, round_seed: bytes) -> tuple[int, int]:
    """Length of the update vector the demo fleet's adapter gives (every coordinate sent), and its
    number of adapter coordinates."""
    plan = yaml.safe_load(plan_path.read_text())
    tasks = tuple(dict.fromkeys([t for tasks in plan['robot_tasks'] for t in tasks] + plan['pretrain_tasks']))
    policy = build_policy(MoEConfig(tasks=tasks, **plan['policy']))
    total = sum(policy.segment_sizes())
    indices = adapter_round_coordinates(round_seed, policy, total)
    return strategy_from_name(strategy).vector_length(policy.segment_sizes(), indices), total


class Round:
    """One round of one site's robots, made with the real library (see module docstring)."""

    def __init__(self, shared: dict, shape: tuple[int, int], robots: int, site_mode: bool) -> None:
        dim, coordinates = shape
        seed = os.urandom(32)
        profile = DPProfile.from_fleet_parameters(shared)
        self.codec = update_codec.build_codec(profile, dim, shared['max_clients'], shared['security_level'], seed)
        params = self.codec.secagg
        aggregator = Identity.generate('aggregator', Role.AGGREGATOR)
        key_service = Identity.generate('key_service', Role.KEY_SERVICE)
        self.robots = [Identity.generate(f'robot_{i + 1}') for i in range(robots)]
        self.gateway = Identity.generate('site_a_aggregator', Role.SITE_AGGREGATOR)
        self.seal_key = SealedBoxKey()
        _, public = generate_key_service_keys(params)
        now = time.time()
        round_key = RoundKeyAnnouncement(
            round_id=1, security_level=params.security_bits, ring_degree=params.n, modulus_bits=params.coefficient_bits,
            plaintext_bits=params.plaintext_bits, public_key=public.to_bytes(), signer_key_id=key_service.key_id,
            created_at=now).signed_by(key_service)
        sites = (SiteAggregatorEntry(site_id='site_a', signer_key_id=self.gateway.key_id,
                                     seal_key=self.seal_key.public_key,
                                     robots=tuple(r.key_id for r in self.robots)),) if site_mode else ()
        self.config = RoundConfigPackage(
            round_id=1, round_seed=seed, model_version=1, num_coordinates=coordinates,
            total_coordinates=coordinates, num_experts=8,
            deadline=now + 3600, quorum=2, round_key=round_key.serialize(),
            aggregator_transport_key=SealedBoxKey().public_key, key_service_key_id=key_service.key_id,
            aggregator_key_id=aggregator.key_id, signer_key_id=aggregator.key_id, created_at=now,
            aggregation_strategy=shared['strategy'], site_aggregators=sites,
            **update_codec.announce(self.codec)).signed_by(aggregator)
        self.public_key = public.to_bytes()

    def update(self, robot: Identity, vector: np.ndarray) -> bytes:
        """What a robot's edge client publishes (the library calls of `EdgeClient.process_round`)."""
        config = self.config
        parts = update_codec.encrypt_update(
            self.codec, self.public_key, update_codec.body_seal_key(config, robot.key_id),
            update_codec.body_seal_context(robot.key_id, config.round_id, config.config_digest()), vector)
        return UpdatePackage(
            robot_id=robot.key_id, round_id=config.round_id, round_seed=config.round_seed,
            config_digest=config.config_digest(), model_version=config.model_version, created_at=time.time(),
            body_chunks=parts.body_chunks, expert_metadata=(), safety_stats=SafetyStats(1.0, 1e-5, 0.0, 0.0, 0, 0),
            bodies=parts.bodies, key_ciphertext=parts.key_ciphertext).signed_by(robot).serialize()

    def config_message_bytes(self) -> int:
        """The serialized `RoundConfig` message the site receives."""
        config = self.config
        msg = RoundConfig(round_id=config.round_id, model_version=config.model_version,
                          aggregator_key_id=config.aggregator_key_id, package=config.serialize())
        return len(serialize_message(msg))


def measure(shared: dict, shape: tuple[int, int], robots: int) -> dict:
    """Bytes up and down for one site of `robots` robots, site aggregation off and on, and the site
    gateway's time to build its sum."""
    rng = np.random.default_rng()  # benchmark data only, never a secret
    vectors = [rng.normal(size=shape[0]) for _ in range(robots)]
    vectors = [v / np.linalg.norm(v) * 0.9 * shared['clipping_norm'] for v in vectors]
    off, on = Round(shared, shape, robots, False), Round(shared, shape, robots, True)
    off_updates = [off.update(robot, v) for robot, v in zip(off.robots, vectors)]
    on_updates = [on.update(robot, v) for robot, v in zip(on.robots, vectors)]
    keys = PinnedKeys({r.key_id: (Role.ROBOT, r.public_key_bytes()) for r in on.robots})
    started = time.perf_counter()
    collector = SiteCollector(on.config, 'site_a', on.seal_key, keys, on.gateway, on.codec.secagg)
    for blob in on_updates:
        collector.add(blob)
    partial = collector.partial_sum()
    seconds = time.perf_counter() - started
    return {'robots': robots,
            'off_up': sum(len(serialize_message(update_message(blob))) for blob in off_updates),
            'on_up': len(serialize_message(partial_sum_message(partial))),
            'one_update': len(serialize_message(update_message(off_updates[0]))),
            'off_down': off.config_message_bytes(), 'on_down': on.config_message_bytes(),
            'site_seconds': seconds}


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print one JSON line per site size, then a summary table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--robots', type=int, nargs='+', default=[2, 4, 8], help='robots per site')
    parser.add_argument('--repeats', type=int, default=3, help='rounds per site size and mode')
    parser.add_argument('--fleet-config', type=Path, default=ROOT / 'config' / 'fleet.yaml')
    parser.add_argument('--plan', type=Path, default=ROOT / 'config' / 'simulated_fleet.yaml')
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(n < 1 for n in args.robots):
        parser.error('--repeats and --robots must be positive')
    shared = yaml.safe_load(args.fleet_config.read_text())['/**']['ros__parameters']
    shape = demo_dimension(args.plan, shared['strategy'], os.urandom(32))
    print(f'update vector: {shape[0]} values ({shape[1]} adapter coordinates); '
          f'fleet config {args.fleet_config}, plan {args.plan}')
    rows = []
    for robots in args.robots:
        runs = [measure(shared, shape, robots) for _ in range(args.repeats)]
        row = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        for key in ('off_up', 'on_up', 'off_down', 'on_down'):
            row[f'{key}_range'] = [min(run[key] for run in runs), max(run[key] for run in runs)]
        row['site_seconds_range'] = [min(run['site_seconds'] for run in runs), max(run['site_seconds'] for run in runs)]
        print(json.dumps(row))
        rows.append(row)
    print('| robots per site | up, off (every EncryptedUpdate) | up, on (one SitePartialSum) | on / off '
          '| down (RoundConfig), off / on | site gateway build time, median (min-max) |')
    print('|---|---|---|---|---|---|')
    for row in rows:
        low, high = row['site_seconds_range']
        ratio = row['on_up'] / row['off_up']
        print(f"| {row['robots']} | {row['off_up']:,.0f} B | {row['on_up']:,.0f} B | {ratio:.2f} "
              f"| {row['off_down']:,.0f} / {row['on_down']:,.0f} B "
              f"| {row['site_seconds']:.2f} s ({low:.2f}-{high:.2f}) |")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
