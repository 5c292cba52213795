"""Negacyclic ring arithmetic in R_q = Z_q[X]/(X^N + 1), batched over leading axes.

Elements are numpy uint64 arrays whose last axis holds the N coefficients (or the N NTT
evaluations), every entry reduced into [0, q). The modulus is a single prime q < 2^32 with
q = 1 (mod 2N), so a product of two residues fits in 64 bits and a primitive 2N-th root of
unity psi exists. The forward transform is the Cooley-Tukey negacyclic NTT with psi powers in
bit-reversed order and the inverse is the Gentleman-Sande one (Longa and Naehrig, "Speeding up
the Number Theoretic Transform for Faster Ideal Lattice-Based Cryptography", CANS 2016,
Algorithms 1 and 2), each evaluated in constant-geometry (Pease) form: every forward stage
pairs element k with element k + N/2 and writes the pair to positions 2k, 2k + 1 (the inverse
reads 2k, 2k + 1 and writes k, k + N/2), so numpy works on long runs instead of short
butterfly groups. The NTT output is in bit-reversed order, which
pointwise products do not care about. Modular reduction divides by the scalar q, which numpy
turns into a multiply-and-shift (libdivide), and every step writes into preallocated buffers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

U64 = np.uint64


class RingError(ValueError):
    """Raised for invalid ring parameters or operands."""


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin primality test, exact for every n < 3.3e24."""
    if n < 2:
        return False
    witnesses = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in witnesses:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in witnesses:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while p * p <= n:
        if n % p == 0:
            factors.append(p)
            while n % p == 0:
                n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return factors


def primitive_root_of_unity(order: int, q: int) -> int:
    """Smallest-generator-derived primitive `order`-th root of unity mod prime q."""
    if (q - 1) % order:
        raise RingError(f'q={q} has no primitive root of unity of order {order}')
    factors = _prime_factors(q - 1)
    for g in range(2, q):
        if all(pow(g, (q - 1) // f, q) != 1 for f in factors):
            return pow(g, (q - 1) // order, q)
    raise RingError(f'no generator found for q={q}')


def _bit_reverse(values: np.ndarray, bits: int) -> np.ndarray:
    out = np.zeros_like(values)
    for b in range(bits):
        out |= ((values >> b) & 1) << (bits - 1 - b)
    return out


@dataclass(frozen=True)
class NegacyclicRing:
    """The ring Z_q[X]/(X^n + 1) with batched NTT, pointwise and coefficient arithmetic."""

    n: int
    q: int
    _fwd_twiddles: tuple[np.ndarray, ...] = field(init=False, repr=False, compare=False)
    _inv_twiddles: tuple[np.ndarray, ...] = field(init=False, repr=False, compare=False)
    _n_inv: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1):
            raise RingError(f'ring degree n={self.n} must be a power of two >= 2')
        if not (2 < self.q < 2**32) or not is_prime(self.q):
            raise RingError(f'modulus q={self.q} must be a prime below 2^32')
        if (self.q - 1) % (2 * self.n):
            raise RingError(f'q={self.q} is not 1 mod 2n={2 * self.n}: no negacyclic NTT')
        psi = primitive_root_of_unity(2 * self.n, self.q)
        if pow(psi, self.n, self.q) != self.q - 1:
            raise RingError('psi^n != -1; not a primitive 2n-th root')
        log_n = self.n.bit_length() - 1
        rev = _bit_reverse(np.arange(self.n, dtype=np.int64), log_n)
        powers = np.array([pow(psi, int(e), self.q) for e in range(self.n)], dtype=U64)
        inv_psi = pow(psi, -1, self.q)
        inv_powers = np.array([pow(inv_psi, int(e), self.q) for e in range(self.n)], dtype=U64)
        psi_rev, psi_inv_rev = powers[rev], inv_powers[rev]
        pair = np.arange(self.n // 2)
        groups = [1 << s for s in range(log_n)]
        object.__setattr__(self, '_fwd_twiddles', tuple(psi_rev[m + pair % m] for m in groups))
        object.__setattr__(self, '_inv_twiddles', tuple(psi_inv_rev[m + pair % m] for m in reversed(groups)))
        object.__setattr__(self, '_n_inv', pow(self.n, -1, self.q))

    def _check(self, a: np.ndarray) -> np.ndarray:
        if a.dtype != U64 or a.ndim < 1 or a.shape[-1] != self.n:
            raise RingError(f'expected uint64 array with last axis {self.n}, got {a.dtype} {a.shape}')
        return a

    def _reduce_below_2q(self, x: np.ndarray, scratch: np.ndarray) -> None:
        """x <- x mod q for x in [0, 2q), in place (x - q wraps above x when x < q)."""
        np.subtract(x, U64(self.q), out=scratch)
        np.minimum(x, scratch, out=x)

    def _sub_into(self, x: np.ndarray, y: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
        """out <- x - y mod q for residues: the wrapped difference or it plus q, whichever is smaller."""
        np.subtract(x, y, out=out)
        np.add(out, U64(self.q), out=scratch)
        np.minimum(out, scratch, out=out)

    def _mulmod_into(self, x: np.ndarray, y: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
        """out <- x * y mod q for residues x, y < q (broadcasting), via floor division by q."""
        np.multiply(x, y, out=out)
        np.floor_divide(out, U64(self.q), out=scratch)
        scratch *= U64(self.q)
        out -= scratch

    def ntt(self, a: np.ndarray) -> np.ndarray:
        """Forward negacyclic NTT over the last axis (output in bit-reversed order)."""
        src = np.array(self._check(a), dtype=U64, copy=True).reshape(-1, self.n)
        dst = np.empty_like(src)
        half = self.n // 2
        prod = np.empty((src.shape[0], half), dtype=U64)
        scratch = np.empty_like(prod)
        for twiddles in self._fwd_twiddles:
            upper, lower = src[:, :half], src[:, half:]
            self._mulmod_into(lower, twiddles, prod, scratch)
            even, odd = dst[:, 0::2], dst[:, 1::2]
            np.add(upper, prod, out=even)
            self._reduce_below_2q(even, scratch)
            self._sub_into(upper, prod, odd, scratch)
            src, dst = dst, src
        return src.reshape(a.shape)

    def intt(self, a: np.ndarray) -> np.ndarray:
        """Inverse negacyclic NTT over the last axis (input in bit-reversed order)."""
        src = np.array(self._check(a), dtype=U64, copy=True).reshape(-1, self.n)
        dst = np.empty_like(src)
        half = self.n // 2
        diff = np.empty((src.shape[0], half), dtype=U64)
        scratch = np.empty_like(diff)
        for twiddles in self._inv_twiddles:
            even, odd = src[:, 0::2], src[:, 1::2]
            upper, lower = dst[:, :half], dst[:, half:]
            np.add(even, odd, out=upper)
            self._reduce_below_2q(upper, scratch)
            self._sub_into(even, odd, diff, scratch)
            self._mulmod_into(diff, twiddles, lower, scratch)
            src, dst = dst, src
        flat = src.reshape(-1)
        self._mulmod_into(flat, U64(self._n_inv), flat, dst.reshape(-1))
        return src.reshape(a.shape)

    def pointwise(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Coefficient-wise product mod q (the ring product when both are in NTT form)."""
        shape = np.broadcast_shapes(self._check(x).shape, self._check(y).shape)
        out = np.empty(shape, dtype=U64)
        self._mulmod_into(x, y, out, np.empty(shape, dtype=U64))
        return out

    def multiply(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ring product of coefficient-form elements, via NTT."""
        return self.intt(self.pointwise(self.ntt(x), self.ntt(y)))

    def add(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Coefficient-wise sum mod q."""
        out = np.add(self._check(x), self._check(y))
        self._reduce_below_2q(out, np.empty_like(out))
        return out

    def sub(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Coefficient-wise difference mod q."""
        shape = np.broadcast_shapes(self._check(x).shape, self._check(y).shape)
        out = np.empty(shape, dtype=U64)
        self._sub_into(x, y, out, np.empty(shape, dtype=U64))
        return out

    def from_signed(self, values: np.ndarray) -> np.ndarray:
        """Map small signed integers (|v| < q) to residues in [0, q)."""
        v = np.asarray(values, dtype=np.int64)
        if v.size and (int(v.min()) <= -self.q or int(v.max()) >= self.q):
            raise RingError('signed values must have absolute value below q')
        out = (v + self.q).view(U64)
        self._reduce_below_2q(out, np.empty_like(out))
        return out

    def centered(self, residues: np.ndarray) -> np.ndarray:
        """Centred lift of residues to signed int64 in (-q/2, q/2]."""
        r = np.asarray(residues, dtype=U64).astype(np.int64)
        return np.where(r > self.q // 2, r - self.q, r)
