"""Distributed Skellam DP encoder/decoder (Agarwal, Kairouz, Liu, NeurIPS 2021, Algorithm 1).

A robot's update x (length d) becomes an integer vector mod 2^b:
  1. clip to L2 norm C;
  2. optionally rotate: pad to a power of two, flip signs with public random signs from the round
     seed, apply the orthonormal Walsh-Hadamard transform (spreads mass so modular wrap is rare);
  3. scale by gamma;
  4. conditional randomised rounding: round every coordinate up with probability equal to its
     fractional part, and retry until the L2 norm is at most the bound of Kairouz, Liu, Steinke,
     "The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation",
     ICML 2021, Theorem 1 (each try succeeds with probability >= 1 - beta);
  5. add Skellam noise Sk(local_variance), the difference of two Poisson(local_variance/2);
  6. reduce mod 2^b.
Skellam noise is closed under addition, so the sum over at least `min_clients` robots carries
Skellam noise of variance >= min_clients * local_variance = (noise_multiplier * gamma * C)^2.
Decoding the decrypted sum: centred lift mod 2^b, divide by gamma, undo the rotation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .csprng import SecretRandom, public_signs

_DOMAIN_ROTATION = b'TensorGuard/dp/v1/rotation'
_MAX_ROUNDING_TRIES = 1000
_ROTATION_FAILURE_LOG2 = 40


class DPError(ValueError):
    """Raised for invalid DP configurations or inputs."""


def rounded_l2_bound(scaled_norm: float, dim: int, beta: float) -> float:
    """L2 norm bound after conditional randomised rounding (Kairouz-Liu-Steinke 2021, Theorem 1).

    min( sqrt(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2)), c + sqrt(d) ) for input norm c;
    with beta = 0 rounding is unconditional and only the second (deterministic) bound holds.
    """
    deterministic = scaled_norm + math.sqrt(dim)
    if beta == 0:
        return deterministic
    squared = scaled_norm**2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (scaled_norm + math.sqrt(dim) / 2)
    return min(math.sqrt(squared), deterministic)


def l1_bound_of_integer_vector(l2_bound: float, dim: int) -> float:
    """L1 bound of an integer vector with L2 norm <= l2_bound: min(sqrt(d) L2, L2^2) (|v| <= v^2 on Z)."""
    return min(math.sqrt(dim) * l2_bound, l2_bound**2)


def _hadamard(x: np.ndarray) -> np.ndarray:
    """Orthonormal fast Walsh-Hadamard transform over the last axis (length a power of two)."""
    n = x.shape[-1]
    y = np.array(x, dtype=np.float64, copy=True)
    h = 1
    while h < n:
        view = y.reshape(-1, n // (2 * h), 2, h)
        top, bottom = view[:, :, 0, :].copy(), view[:, :, 1, :]
        view[:, :, 0, :] += bottom
        np.subtract(top, bottom, out=view[:, :, 1, :])
        h *= 2
    return y * (1.0 / math.sqrt(n))


@dataclass(frozen=True)
class SkellamConfig:
    """Everything both ends of one round need: clipping, rotation, scale, rounding, noise, modulus."""

    dim: int
    clipping_norm: float
    noise_multiplier: float
    min_clients: int
    max_clients: int
    bits: int
    beta: float = math.exp(-0.5)
    rotate: bool = True
    overflow_stddevs: float = 4.0

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise DPError(f'dim must be positive, got {self.dim}')
        if not (self.clipping_norm > 0 and math.isfinite(self.clipping_norm)):
            raise DPError(f'clipping_norm must be positive and finite, got {self.clipping_norm}')
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise DPError(f'noise_multiplier must be positive and finite, got {self.noise_multiplier}')
        if not 1 <= self.min_clients <= self.max_clients:
            raise DPError(f'need 1 <= min_clients <= max_clients, got {self.min_clients}, {self.max_clients}')
        if not 2 <= self.bits <= 30:
            raise DPError(f'bits must be in 2..30, got {self.bits}')
        if not 0 <= self.beta < 1:
            raise DPError(f'beta must be in [0, 1), got {self.beta}')
        if self.scale <= 0:
            raise DPError(f'{self.bits} bits cannot hold the sum of {self.max_clients} clients at this noise level')

    @property
    def padded_dim(self) -> int:
        """Length of the encoded vector (next power of two when rotating)."""
        return 1 << (self.dim - 1).bit_length() if self.rotate else self.dim

    @property
    def coordinate_fraction(self) -> float:
        """Bound on |coordinate| / L2 norm after rotation (1 without rotation).

        A randomly sign-flipped Hadamard coordinate is a Rademacher sum with variance |x|^2/d,
        so it exceeds t |x| with probability <= 2 exp(-t^2 d / 2); union over d coordinates at
        failure 2^-40.
        """
        if not self.rotate:
            return 1.0
        d = self.padded_dim
        return min(1.0, math.sqrt(2 * math.log(2 * d * 2.0**_ROTATION_FAILURE_LOG2) / d))

    @cached_property
    def scale(self) -> float:
        """gamma: largest scale with max_clients * (signal + k sigma noise) inside [-2^(b-1), 2^(b-1)).

        Per coordinate the sum of max_clients encoded vectors is at most
        max_clients * gamma * C * coordinate_fraction (aligned updates) plus noise of variance
        max_clients * (local_variance + 1/4) (Skellam plus rounding), taken at
        `overflow_stddevs` standard deviations.
        """
        half = 2.0 ** (self.bits - 1)
        signal = self.max_clients * self.clipping_norm * self.coordinate_fraction
        noise_per_gamma_sq = self.max_clients * (self.noise_multiplier * self.clipping_norm) ** 2 / self.min_clients

        def fits(gamma: float) -> bool:
            spread = self.overflow_stddevs * math.sqrt(noise_per_gamma_sq * gamma**2 + self.max_clients / 4)
            return gamma * signal + spread <= half

        lo, hi = 0.0, half / signal
        if not fits(lo):
            return 0.0
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    @property
    def local_variance(self) -> float:
        """Variance of each robot's Skellam noise per coordinate (scaled units)."""
        return (self.noise_multiplier * self.scale * self.clipping_norm) ** 2 / self.min_clients

    @property
    def aggregate_variance(self) -> float:
        """mu: Skellam variance per coordinate of a sum over min_clients robots (scaled units)."""
        return self.min_clients * self.local_variance

    @property
    def l2_sensitivity(self) -> float:
        """L2 bound of one robot's rounded, scaled contribution (conditional rounding bound)."""
        return rounded_l2_bound(self.scale * self.clipping_norm, self.padded_dim, self.beta)

    @property
    def l1_sensitivity(self) -> float:
        """L1 bound of one robot's rounded contribution."""
        return l1_bound_of_integer_vector(self.l2_sensitivity, self.padded_dim)

    def aggregate_stddev(self, clients: int) -> float:
        """Predicted per-coordinate std of the decoded sum of `clients` robots (unscaled units).

        Skellam noise plus rounding error (variance <= 1/4 per coordinate per robot), divided by
        gamma; the orthonormal rotation preserves it per coordinate on average.
        """
        return math.sqrt(clients * (self.local_variance + 0.25)) / self.scale


class SkellamEncoder:
    """Robot side: clip, rotate, scale, round, add Skellam noise, wrap to 2^b."""

    def __init__(self, config: SkellamConfig, round_seed: bytes) -> None:
        self.config = config
        self._signs = _rotation_signs(config, round_seed)
        self._rng = SecretRandom()

    def encode(self, update: np.ndarray) -> np.ndarray:
        """Encoded vector (uint64 in [0, 2^b), length padded_dim) of a float update of length dim."""
        cfg = self.config
        x = np.asarray(update, dtype=np.float64).reshape(-1)
        if x.size != cfg.dim or not np.all(np.isfinite(x)):
            raise DPError(f'update must be {cfg.dim} finite values, got {x.size}')
        norm = float(np.linalg.norm(x))
        if norm > cfg.clipping_norm:
            x = x * (cfg.clipping_norm / norm)
        padded = np.zeros(cfg.padded_dim)
        padded[: cfg.dim] = x
        if cfg.rotate:
            padded = _hadamard(padded * self._signs)
        rounded = self._conditional_round(padded * cfg.scale)
        noisy = rounded + self._rng.skellam(cfg.local_variance, cfg.padded_dim)
        return (noisy & ((1 << cfg.bits) - 1)).astype(np.uint64)

    def _conditional_round(self, scaled: np.ndarray) -> np.ndarray:
        bound = self.config.l2_sensitivity
        floor = np.floor(scaled)
        fraction = scaled - floor
        base = floor.astype(np.int64)
        for _ in range(_MAX_ROUNDING_TRIES):
            rounded = base + self._rng.bernoulli(fraction)
            if math.sqrt(float(np.dot(rounded.astype(np.float64), rounded))) <= bound:
                return rounded
        raise DPError('conditional randomised rounding did not meet its norm bound; beta too small')


class SkellamDecoder:
    """Aggregator side: centred lift of the decrypted sum mod 2^b, unscale, unrotate."""

    def __init__(self, config: SkellamConfig, round_seed: bytes) -> None:
        self.config = config
        self._signs = _rotation_signs(config, round_seed)

    def decode_sum(self, aggregate: np.ndarray) -> np.ndarray:
        """Estimated sum of the clipped updates (float64, length dim)."""
        cfg = self.config
        values = np.asarray(aggregate).reshape(-1)
        if values.size != cfg.padded_dim:
            raise DPError(f'aggregate must have {cfg.padded_dim} values, got {values.size}')
        modulus, half = 1 << cfg.bits, 1 << (cfg.bits - 1)
        centred = ((values.astype(np.int64) + half) & (modulus - 1)) - half
        y = centred / cfg.scale
        if cfg.rotate:
            y = _hadamard(y) * self._signs
        return y[: cfg.dim]

    def decode_mean(self, aggregate: np.ndarray, clients: int) -> np.ndarray:
        """Estimated mean of the clipped updates of `clients` robots."""
        if clients < 1:
            raise DPError(f'clients must be positive, got {clients}')
        return self.decode_sum(aggregate) / clients


def _rotation_signs(config: SkellamConfig, round_seed: bytes) -> np.ndarray:
    if len(round_seed) != 32:
        raise DPError(f'round_seed must be 32 bytes, got {len(round_seed)}')
    return public_signs(config.padded_dim, _DOMAIN_ROTATION, bytes(round_seed))
