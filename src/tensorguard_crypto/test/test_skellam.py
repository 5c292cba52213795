"""Tests for the Skellam DP encoder/decoder and the CSPRNG samplers behind it."""
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorguard_crypto.csprng import RandomnessError, SecretRandom, public_signs, public_uniform_mod
from tensorguard_crypto.skellam import (
    DPError,
    SkellamConfig,
    SkellamDecoder,
    SkellamEncoder,
    _hadamard,
    l1_bound_of_integer_vector,
    rounded_l2_bound,
)

RNG = SecretRandom()


def assert_mean_var(samples: np.ndarray, mean: float, var: float, fourth_moment_factor: float = 3.0):
    """Sample mean and variance within 6 standard errors of the targets."""
    n = samples.size
    assert abs(samples.mean() - mean) < 6 * math.sqrt(var / n) + 1e-12
    assert abs(samples.var() - var) < 6 * var * math.sqrt((fourth_moment_factor - 1 + 1e-9) / n) + 1e-9


@pytest.mark.parametrize('lam', [0.3, 4.0, 9.99, 10.0, 57.5, 2.5e6])
def test_poisson_mean_and_variance(lam):
    samples = RNG.poisson(lam, 200_000).astype(np.float64)
    assert samples.min() >= 0
    assert_mean_var(samples, lam, lam, fourth_moment_factor=3 + 1 / lam)


def test_poisson_small_mean_matches_pmf():
    samples = RNG.poisson(2.0, 200_000)
    for k in range(6):
        p = math.exp(-2) * 2**k / math.factorial(k)
        assert abs(np.mean(samples == k) - p) < 6 * math.sqrt(p * (1 - p) / samples.size)


@pytest.mark.parametrize('variance', [1.0, 37.0, 626_807.5])
def test_skellam_is_centred_with_target_variance(variance):
    samples = RNG.skellam(variance, 200_000).astype(np.float64)
    assert_mean_var(samples, 0.0, variance, fourth_moment_factor=3 + 1 / variance)


def test_centered_binomial_and_ternary():
    cbd = RNG.centered_binomial(21, 400_000).astype(np.float64)
    assert cbd.min() >= -21 and cbd.max() <= 21
    assert_mean_var(cbd, 0.0, 10.5)
    ternary = RNG.ternary(300_000)
    for v in (-1, 0, 1):
        assert abs(np.mean(ternary == v) - 1 / 3) < 6 * math.sqrt(2 / 9 / ternary.size)
    with pytest.raises(RandomnessError):
        RNG.centered_binomial(33, 4)
    with pytest.raises(RandomnessError):
        RNG.poisson(-1.0, 3)


def test_public_expansion_is_deterministic_and_uniform():
    a = public_uniform_mod(12289, 50_000, b'domain', b'seed')
    assert np.array_equal(a, public_uniform_mod(12289, 50_000, b'domain', b'seed'))
    assert not np.array_equal(a, public_uniform_mod(12289, 50_000, b'domain', b'seed2'))
    assert not np.array_equal(a, public_uniform_mod(12289, 50_000, b'domai', b'nseed'))
    assert a.max() < 12289
    counts = np.bincount((a * 16 // 12289).astype(np.int64), minlength=16)
    assert float(np.sum((counts - a.size / 16) ** 2 / (a.size / 16))) < 15 + 8 * math.sqrt(30)
    signs = public_signs(1000, b'x')
    assert set(np.unique(signs)) == {-1.0, 1.0}


@settings(max_examples=20, deadline=None)
@given(log_d=st.integers(0, 10), data=st.data())
def test_hadamard_is_orthonormal_involution(log_d, data):
    d = 1 << log_d
    x = np.array(data.draw(st.lists(st.floats(-1e3, 1e3), min_size=d, max_size=d)))
    y = _hadamard(x)
    assert np.allclose(_hadamard(y), x, atol=1e-7)
    assert math.isclose(np.linalg.norm(y), np.linalg.norm(x), rel_tol=1e-9, abs_tol=1e-9)


def test_rounding_bounds_by_hand():
    # c = 100, d = 64, beta = e^-0.5: sqrt(2 ln(1/beta)) = 1
    # squared = 100^2 + 64/4 + 1 * (100 + 8/2) = 10000 + 16 + 104 = 10120 -> 100.598...
    assert rounded_l2_bound(100.0, 64, math.exp(-0.5)) == pytest.approx(math.sqrt(10120))
    assert rounded_l2_bound(100.0, 64, 0.0) == pytest.approx(108.0)  # c + sqrt(d)
    # c = 1, d = 100, beta = 1e-60: sqrt(2 ln 1e60) = 16.62; squared = 1 + 25 + 16.62 * 6 = 125.7,
    # sqrt = 11.21 > c + sqrt(d) = 11, so the deterministic bound wins
    assert rounded_l2_bound(1.0, 100, 1e-60) == pytest.approx(11.0)
    assert l1_bound_of_integer_vector(10.0, 64) == pytest.approx(80.0)  # sqrt(64) * 10 < 10^2
    assert l1_bound_of_integer_vector(3.0, 64) == pytest.approx(9.0)


def config(**overrides) -> SkellamConfig:
    base = dict(dim=1000, clipping_norm=1.0, noise_multiplier=1.0, min_clients=16, max_clients=100, bits=20)
    base.update(overrides)
    return SkellamConfig(**base)


def test_scale_keeps_worst_case_sum_inside_the_modulus():
    cfg = config(max_clients=50, rotate=False, dim=64)
    half = 2 ** (cfg.bits - 1)
    signal = cfg.max_clients * cfg.scale * cfg.clipping_norm
    noise = cfg.overflow_stddevs * math.sqrt(cfg.max_clients * (cfg.local_variance + 0.25))
    assert signal + noise <= half * (1 + 1e-9)
    assert signal + noise > half * 0.999  # and is the largest such scale
    assert cfg.aggregate_variance == pytest.approx((cfg.noise_multiplier * cfg.scale) ** 2)


def test_worst_case_aligned_updates_decode_without_wrap():
    cfg = config(max_clients=8, min_clients=8, dim=16, rotate=False, noise_multiplier=0.5)
    seed = os.urandom(32)
    update = np.zeros(16)
    update[3] = 5.0  # clipped to norm 1, all mass on one coordinate
    encoded = [SkellamEncoder(cfg, seed).encode(update) for _ in range(8)]
    total = np.sum(encoded, axis=0) % (1 << cfg.bits)
    decoded = SkellamDecoder(cfg, seed).decode_sum(total)
    assert abs(decoded[3] - 8.0) < 6 * cfg.aggregate_stddev(8)


def test_encoder_clips_rounds_within_bound_and_wraps():
    cfg = config(dim=300)
    encoder = SkellamEncoder(cfg, os.urandom(32))
    encoded = encoder.encode(np.full(300, 10.0))
    assert encoded.dtype == np.uint64 and encoded.size == 512 and encoded.max() < 2**20
    scaled = np.full(512, 1 / math.sqrt(512)) * cfg.scale  # norm c = gamma * C, fractional coordinates
    rounded = encoder._conditional_round(scaled)
    assert np.all((rounded == np.floor(scaled)) | (rounded == np.floor(scaled) + 1))
    assert np.linalg.norm(rounded) <= cfg.l2_sensitivity


def test_decode_inverts_encode_up_to_predicted_noise():
    cfg = config(dim=2000, noise_multiplier=0.3, min_clients=4, max_clients=4)
    seed = os.urandom(32)
    update = np.sin(np.arange(2000)) * 0.02
    decoded = SkellamDecoder(cfg, seed).decode_sum(SkellamEncoder(cfg, seed).encode(update))
    error = decoded - update * min(1.0, 1.0 / np.linalg.norm(update))
    predicted = cfg.aggregate_stddev(1)
    assert 0.8 * predicted < error.std() < 1.2 * predicted
    assert np.max(np.abs(error)) < 6 * predicted


def test_invalid_inputs_raise_dp_error():
    cfg = config(dim=10)
    encoder = SkellamEncoder(cfg, os.urandom(32))
    with pytest.raises(DPError, match='10 finite'):
        encoder.encode(np.zeros(11))
    with pytest.raises(DPError, match='finite'):
        encoder.encode(np.array([np.nan] + [0.0] * 9))
    with pytest.raises(DPError, match='values'):
        SkellamDecoder(cfg, os.urandom(32)).decode_sum(np.zeros(3, dtype=np.uint64))
    with pytest.raises(DPError, match='round_seed'):
        SkellamEncoder(cfg, b'123')
    with pytest.raises(DPError, match='clipping_norm'):
        config(clipping_norm=0.0)
    with pytest.raises(DPError, match='min_clients'):
        config(min_clients=200)
    with pytest.raises(DPError, match='cannot hold'):
        config(bits=4, max_clients=100)
