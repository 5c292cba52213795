"""The single source of randomness for tensorguard_crypto's lattice and DP code.

Secret randomness (ring keys, lattice errors, DP noise, randomised rounding) comes from
`SecretRandom`: a ChaCha20 keystream (RFC 8439 cipher, via the `cryptography` package) keyed
with 32 bytes and a 12-byte nonce from `os.urandom`, freshly for every instance. `cryptography`
takes a 16-byte nonce whose first 4 bytes are the initial 32-bit block counter; it starts at
zero, so one key yields 2^32 blocks (256 GiB), and the stream re-keys from `os.urandom` before
that. (A random counter, as this module once used, overflows after as little as 64 bytes: a
Skellam encoding of the shipped 195,312-value update draws 11-15 MiB, so about one robot-round in
20,000 failed with "Exceeded the maximum number of bytes"; `flower-frontier`, whose workers share
one encoder across 125 robots (about 1.4 GiB of keystream), failed in its sixth private round of
1,000 robots.) Samplers are vectorised over numpy arrays but never touch numpy's or Python's
pseudo-random generators.

Public randomness (the ring elements a_j every robot derives from the round seed, the rotation
signs of the randomised Hadamard transform) comes from SHAKE-128 over domain-separated input,
so every party derives identical values.
"""
from __future__ import annotations

import hashlib
import math
import os
import struct

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_TWO_POW_MINUS_53 = 2.0 ** -53
_LOG_FACTORIAL_SMALL = np.array([math.lgamma(k + 1.0) for k in range(10)])


class RandomnessError(ValueError):
    """Raised for invalid sampler arguments."""


def _log_factorial(k: np.ndarray) -> np.ndarray:
    """log(k!) for integer-valued float arrays k >= 0 (table below 10, Stirling series above)."""
    k = np.asarray(k, dtype=np.float64)
    small = k < 10
    x = np.where(small, 10.0, k) + 1.0
    inv = 1.0 / x
    inv2 = inv * inv
    series = inv * (1.0 / 12 - inv2 * (1.0 / 360 - inv2 * (1.0 / 1260 - inv2 / 1680)))
    stirling = (x - 0.5) * np.log(x) - x + 0.5 * math.log(2 * math.pi) + series
    table = _LOG_FACTORIAL_SMALL[np.where(small, k, 0).astype(np.int64)]
    return np.where(small, table, stirling)


class SecretRandom:
    """CSPRNG stream for secrets: ChaCha20 keyed from os.urandom, with vectorised samplers."""

    KEY_STREAM_BYTES = 64 * 2**32  # ChaCha20 with a 32-bit block counter from zero: 2^32 blocks of 64 bytes

    def __init__(self) -> None:
        self._rekey()

    def _rekey(self) -> None:
        counter_from_zero = bytes(4)
        self._stream = Cipher(algorithms.ChaCha20(os.urandom(32), counter_from_zero + os.urandom(12)),
                              mode=None).encryptor()
        self._left = self.KEY_STREAM_BYTES

    def random_bytes(self, count: int) -> bytes:
        """`count` bytes of keystream."""
        if count < 0:
            raise RandomnessError(f'byte count must be non-negative, got {count}')
        parts = []
        while count > self._left:
            parts.append(self._stream.update(bytes(self._left)))
            count -= self._left
            self._rekey()
        parts.append(self._stream.update(bytes(count)))
        self._left -= count
        return b''.join(parts)

    def words64(self, count: int) -> np.ndarray:
        """`count` uniform 64-bit words."""
        return np.frombuffer(self.random_bytes(8 * count), dtype='<u8').astype(np.uint64)

    def uniform01(self, shape: int | tuple[int, ...]) -> np.ndarray:
        """Uniform doubles k * 2^-53 in [0, 1)."""
        count = int(np.prod(shape))
        return ((self.words64(count) >> np.uint64(11)) * _TWO_POW_MINUS_53).reshape(shape)

    def ternary(self, shape: int | tuple[int, ...]) -> np.ndarray:
        """Uniform values in {-1, 0, 1} as int64 (bytes below 255 reduced mod 3)."""
        count = int(np.prod(shape))
        out = np.empty(0, dtype=np.int64)
        while out.size < count:
            need = count - out.size
            raw = np.frombuffer(self.random_bytes(need + need // 64 + 16), dtype=np.uint8)
            out = np.concatenate([out, raw[raw < 255].astype(np.int64) % 3 - 1])
        return out[:count].reshape(shape)

    def centered_binomial(self, eta: int, shape: int | tuple[int, ...]) -> np.ndarray:
        """Centred binomial CBD(eta) = sum of eta coin differences (variance eta/2), int64."""
        if not 1 <= eta <= 32:
            raise RandomnessError(f'centred-binomial eta must be in 1..32, got {eta}')
        count = int(np.prod(shape))
        words = self.words64(count)
        mask = np.uint64((1 << eta) - 1)
        plus = np.bitwise_count(words & mask).astype(np.int64)
        minus = np.bitwise_count((words >> np.uint64(eta)) & mask).astype(np.int64)
        return (plus - minus).reshape(shape)

    def bernoulli(self, p: np.ndarray) -> np.ndarray:
        """Independent coin flips with success probabilities p (array in [0, 1])."""
        p = np.asarray(p, dtype=np.float64)
        return self.uniform01(p.shape) < p

    def poisson(self, lam: float, shape: int | tuple[int, ...]) -> np.ndarray:
        """Poisson(lam) samples as int64: inversion for lam < 10, else Hoermann's PTRS.

        PTRS is the transformed-rejection sampler of W. Hoermann, "The transformed rejection
        method for generating Poisson random variables", Insurance: Mathematics and Economics
        12 (1993), run on all pending samples at once until every one is accepted.
        """
        if not (lam >= 0 and math.isfinite(lam)):
            raise RandomnessError(f'Poisson mean must be finite and >= 0, got {lam}')
        count = int(np.prod(shape))
        if lam == 0:
            return np.zeros(shape, dtype=np.int64)
        if lam < 10:
            return self._poisson_inversion(lam, count).reshape(shape)
        return self._poisson_ptrs(lam, count).reshape(shape)

    def _poisson_inversion(self, lam: float, count: int) -> np.ndarray:
        top = int(lam + 40 * math.sqrt(lam) + 40)
        ks = np.arange(top + 1, dtype=np.float64)
        cdf = np.cumsum(np.exp(ks * math.log(lam) - lam - _log_factorial(ks)))
        return np.searchsorted(cdf, self.uniform01(count), side='right').astype(np.int64)

    def _poisson_ptrs(self, lam: float, count: int) -> np.ndarray:
        slam, loglam = math.sqrt(lam), math.log(lam)
        b = 0.931 + 2.53 * slam
        a = -0.059 + 0.02483 * b
        inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
        v_r = 0.9277 - 3.6224 / (b - 2)
        out = np.empty(count, dtype=np.int64)
        pending = np.arange(count)
        while pending.size:
            u = self.uniform01(pending.size) - 0.5
            v = self.uniform01(pending.size)
            us = 0.5 - np.abs(u)
            k = np.floor((2 * a / np.maximum(us, 1e-300) + b) * u + lam + 0.43)
            quick = (us >= 0.07) & (v <= v_r)
            usable = (k >= 0) & ~((us < 0.013) & (v > us))
            with np.errstate(divide='ignore'):
                log_accept = np.log(v * inv_alpha / (a / np.maximum(us * us, 1e-300) + b))
            exact = usable & (log_accept <= -lam + k * loglam - _log_factorial(np.maximum(k, 0)))
            accepted = quick | exact
            out[pending[accepted]] = k[accepted].astype(np.int64)
            pending = pending[~accepted]
        return out

    def skellam(self, variance: float, shape: int | tuple[int, ...]) -> np.ndarray:
        """Symmetric Skellam noise Poisson(variance/2) - Poisson(variance/2), int64."""
        if not (variance >= 0 and math.isfinite(variance)):
            raise RandomnessError(f'Skellam variance must be finite and >= 0, got {variance}')
        return self.poisson(variance / 2, shape) - self.poisson(variance / 2, shape)


def public_xof(*parts: bytes) -> "hashlib._Hash":
    """SHAKE-128 over length-prefixed parts (unambiguous domain separation)."""
    xof = hashlib.shake_128()
    for part in parts:
        xof.update(struct.pack('<Q', len(part)))
        xof.update(part)
    return xof


def public_uniform_mod(q: int, count: int, *parts: bytes) -> np.ndarray:
    """`count` values uniform mod q (q < 2^32) from SHAKE-128(parts), by rejection sampling.

    Each candidate is a little-endian 32-bit word masked to ceil(log2 q) bits and kept when
    below q, so the accepted values are exactly uniform; the XOF stream is read further until
    `count` values are accepted.
    """
    if not 2 <= q < 2**32:
        raise RandomnessError(f'modulus must be in [2, 2^32), got {q}')
    xof = public_xof(*parts)
    mask = np.uint32((1 << (q - 1).bit_length()) - 1)
    words = count + count // 8 + 16
    while True:
        raw = np.frombuffer(xof.digest(4 * words), dtype='<u4') & mask
        accepted = raw[raw < np.uint32(q)]
        if accepted.size >= count:
            return accepted[:count].astype(np.uint64)
        words *= 2


def public_signs(count: int, *parts: bytes) -> np.ndarray:
    """`count` public uniform signs in {-1, +1} (float64) from SHAKE-128(parts)."""
    bits = np.unpackbits(np.frombuffer(public_xof(*parts).digest((count + 7) // 8), dtype=np.uint8))
    return 1.0 - 2.0 * bits[:count].astype(np.float64)
