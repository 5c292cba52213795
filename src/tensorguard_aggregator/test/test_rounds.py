"""The aggregator's rule for which segments a round may update (ROS-free)."""
from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import yaml

from tensorguard_aggregator.rounds import SEGMENT_NOISE_MARGIN, segment_weight_floor
from tensorguard_crypto import update_codec
from tensorguard_crypto.accountant import DPProfile
from tensorguard_learning.aggregation import ExpertDrivenStrategy

FLEET_YAML = Path(__file__).resolve().parents[3] / 'config' / 'fleet.yaml'


def shipped_codec(dim: int) -> tuple[update_codec.RoundCodec, float]:
    """The codec and min_segment_weight that config/fleet.yaml gives a `dim`-vector round."""
    config = yaml.safe_load(FLEET_YAML.read_text())
    shared = config['/**']['ros__parameters']
    profile = DPProfile.from_fleet_parameters(shared)
    codec = update_codec.build_codec(profile, dim, shared['max_clients'], shared['security_level'],
                                     secrets.token_bytes(32))
    return codec, config['/**/aggregator']['ros__parameters'].get('min_segment_weight', 0.1)


def test_floor_is_the_larger_of_the_setting_and_the_noise_margin():
    codec, _ = shipped_codec(1000)
    noise = codec.skellam.aggregate_stddev(4)
    assert segment_weight_floor(codec, 4, 0.0) == SEGMENT_NOISE_MARGIN * noise
    assert segment_weight_floor(codec, 4, 1e6) == 1e6


def test_shipped_config_updates_a_segment_only_one_robot_uses():
    """A task only one robot demonstrates reaches the sum with that robot's usage (about 0.5 for a
    robot with two tasks); the shipped floor must let it through, and the decoded mean must be
    that robot's delta up to the DP noise."""
    sizes = [64, 64]
    strategy = ExpertDrivenStrategy()
    codec, min_weight = shipped_codec(sum(sizes) + len(sizes))
    floor = segment_weight_floor(codec, 4, min_weight)
    assert floor < 0.4
    rng = np.random.default_rng(7)
    delta = rng.normal(0, 0.01, sum(sizes)).astype(np.float32)
    # Robot 0 alone uses segment 1, with weight 0.45; robots 1-3 use only segment 0.
    vectors = [np.concatenate([0.55 * delta[:64], 0.45 * delta[64:], [0.55, 0.45]]).astype(np.float32)]
    vectors += [np.concatenate([delta[:64], np.zeros(64), [1.0, 0.0]]).astype(np.float32)] * 3
    summed = update_codec.plaintext_sum(codec, vectors)
    weights = summed[-2:]
    assert weights[1] >= floor
    weights[weights < floor] = 0.0
    mean = strategy.finalize(summed, sizes)
    noise = codec.skellam.aggregate_stddev(4) / 0.45
    assert np.max(np.abs(mean[64:] - delta[64:])) < 6 * noise


def test_a_segment_nobody_used_stays_frozen():
    """Only DP noise reaches the weight of an unused segment: it must fall under the floor."""
    sizes = [64, 64]
    codec, min_weight = shipped_codec(sum(sizes) + len(sizes))
    floor = segment_weight_floor(codec, 4, min_weight)
    rng = np.random.default_rng(8)
    vectors = [np.concatenate([rng.normal(0, 0.01, 64), np.zeros(64), [1.0, 0.0]]).astype(np.float32)
               for _ in range(4)]
    for _ in range(20):
        assert update_codec.plaintext_sum(codec, vectors)[-1] < floor
