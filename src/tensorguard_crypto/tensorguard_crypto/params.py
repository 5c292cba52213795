"""Parameter sets for the secure aggregation scheme, checked against the HE standard and the noise budget.

Security: the ring R_q = Z_q[X]/(X^n + 1) with a uniform ternary secret and error of standard
deviation about 3.2 is in the HomomorphicEncryption.org standard (Albrecht et al., "Homomorphic
Encryption Security Standard", 2018, ternary-secret table, classical security) when
ceil(log2 q) is at most the table's entry for (security level, n). The same table ships in
Microsoft SEAL as SEAL_HE_STD_PARMS_{128,192,256}_TC. Errors are centred-binomial with eta = 21
(standard deviation sqrt(10.5) = 3.24, at least the standard's 8/sqrt(2 pi) = 3.19).

Correctness: a sum over K robots decrypts exactly when every coefficient's accumulated noise stays
inside the decoding window; `SecAggParams` checks both layers for `max_clients` with a per
coefficient failure probability of at most 2^-failure_log2 (Hoeffding tail bounds, see
`body_noise_bound` and `key_noise_bound`) and refuses parameters that do not fit.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from .ring import NegacyclicRing, is_prime

HE_STANDARD_TERNARY_MAX_LOG_Q: dict[int, dict[int, int]] = {
    128: {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881},
    192: {1024: 19, 2048: 37, 4096: 75, 8192: 152, 16384: 305, 32768: 611},
    256: {1024: 14, 2048: 29, 4096: 58, 8192: 118, 16384: 237, 32768: 476},
}
"""Max ceil(log2 q) per (classical security bits, ring degree n), ternary secret, sigma ~3.2."""

DEFAULT_PRIME = 4294475777
"""Largest prime below 2^32 that is 1 mod 2^14: NTT-friendly for every n <= 8192."""

ERROR_ETA = 21
"""Centred-binomial parameter of every lattice error (variance 10.5)."""


class ParameterError(ValueError):
    """Raised when a parameter set is outside the HE standard table or its noise budget."""


def body_noise_bound(clients: int, eta: int, failure_log2: int) -> float:
    """Bound on one coefficient of the summed body errors sum_i e_i, failing w.p. <= 2^-failure_log2.

    sum_i e_i is a sum of 2*eta*clients independent fair coins minus its mean, so Hoeffding gives
    P(|E| >= t) <= 2 exp(-t^2 / (eta * clients)).
    """
    return math.sqrt(eta * clients * (failure_log2 + 1) * math.log(2))


def key_noise_bound(clients: int, n: int, eta: int, failure_log2: int) -> float:
    """Bound on one coefficient of the summed key-layer noise, failing w.p. <= 2^-failure_log2.

    Decrypting a sum of key ciphertexts leaves v = sum_i (-e*u_i + e1_i + e2_i*s) with the key
    service's (e, s) fixed and (u_i, e1_i, e2_i) fresh. Per coefficient that is a sum of
    independent bounded terms whose squared ranges add up to 4|e|^2 + 2 eta |s|^2 + 2 eta per
    robot; key generation enforces |e|^2 <= eta*n and |s|^2 <= n, so Hoeffding gives
    P(|v| >= t) <= 2 exp(-2 t^2 / (clients * 2 eta (3n + 1))).
    """
    squared_ranges = clients * 2 * eta * (3 * n + 1)
    return math.sqrt(squared_ranges * (failure_log2 + 1) * math.log(2) / 2)


@dataclass(frozen=True)
class SecAggParams:
    """One validated parameter set: ring, plaintext width b, and client limits."""

    security_bits: int
    n: int
    q: int
    plaintext_bits: int
    max_clients: int
    min_clients: int = 2
    failure_log2: int = 60

    def __post_init__(self) -> None:
        table = HE_STANDARD_TERNARY_MAX_LOG_Q.get(self.security_bits)
        if table is None:
            raise ParameterError(f'security level {self.security_bits} not in the HE standard table (128, 192, 256)')
        if self.n not in table:
            raise ParameterError(f'ring degree n={self.n} not in the HE standard table ({sorted(table)})')
        if self.q.bit_length() > table[self.n]:
            raise ParameterError(
                f'log2 q = {self.q.bit_length()} exceeds {table[self.n]}, the HE standard maximum for '
                f'{self.security_bits}-bit security at n={self.n}')
        if not is_prime(self.q) or (self.q - 1) % (2 * self.n) or self.q >= 2**32:
            raise ParameterError(f'q={self.q} must be a prime below 2^32 with q = 1 mod 2n')
        if not 1 <= self.plaintext_bits <= 30:
            raise ParameterError(f'plaintext_bits must be in 1..30, got {self.plaintext_bits}')
        if not 1 <= self.min_clients <= self.max_clients:
            raise ParameterError(f'need 1 <= min_clients <= max_clients, got {self.min_clients}, {self.max_clients}')
        if not 20 <= self.failure_log2 <= 128:
            raise ParameterError(f'failure_log2 must be in 20..128, got {self.failure_log2}')
        if not self.body_budget_ok(self.max_clients):
            raise ParameterError(
                f'max_clients={self.max_clients} exceeds the body noise budget of this parameter set '
                f'(at most {self.max_supported_clients()} clients for b={self.plaintext_bits}, '
                f'log2 q={self.q.bit_length()})')
        if not self.key_budget_ok(self.max_clients):
            raise ParameterError(f'max_clients={self.max_clients} exceeds the key-layer noise budget')

    def body_budget_ok(self, clients: int) -> bool:
        """True if `clients` summed bodies decrypt: 2^b (2 |E| + clients) < q (centred window)."""
        bound = body_noise_bound(clients, ERROR_ETA, self.failure_log2)
        return 2**self.plaintext_bits * (2 * bound + clients) < self.q

    def key_budget_ok(self, clients: int) -> bool:
        """True if `clients` summed key ciphertexts decrypt: noise below half the key scale."""
        return key_noise_bound(clients, self.n, ERROR_ETA, self.failure_log2) < self.key_scale / 2

    def max_supported_clients(self) -> int:
        """Largest client count the body layer can sum for this q and b."""
        lo, hi = 0, self.q
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.body_budget_ok(mid) else (lo, mid - 1)
        return lo

    @property
    def key_scale(self) -> int:
        """Scale Delta_k of the key layer: floor(q / (2 max_clients + 1)) leaves room for |K| <= max_clients."""
        return self.q // (2 * self.max_clients + 1)

    @property
    def plaintext_modulus(self) -> int:
        """2^b: bodies carry integers mod 2^b."""
        return 1 << self.plaintext_bits

    @property
    def coefficient_bits(self) -> int:
        """Bits per packed ciphertext coefficient, ceil(log2 q)."""
        return (self.q - 1).bit_length()

    def chunks(self, num_values: int) -> int:
        """Ring elements needed for `num_values` plaintext coefficients."""
        return -(-num_values // self.n)

    def body_bytes(self, num_values: int) -> int:
        """Wire size of the body ciphertext of a `num_values` vector."""
        return (self.chunks(num_values) * self.n * self.coefficient_bits + 7) // 8

    @property
    def key_ciphertext_bytes(self) -> int:
        """Wire size of one key-layer ciphertext (two ring elements)."""
        return (2 * self.n * self.coefficient_bits + 7) // 8

    @property
    def expansion(self) -> float:
        """Wire bits per plaintext coefficient over b (ignoring the last chunk's padding)."""
        return self.coefficient_bits / self.plaintext_bits

    def domain(self) -> bytes:
        """Bytes binding derived public randomness to this ring (n, q)."""
        return struct.pack('<IQ', self.n, self.q)

    def ring(self) -> NegacyclicRing:
        """The ring R_q of this parameter set (tables cached per (n, q))."""
        return _ring(self.n, self.q)


_RINGS: dict[tuple[int, int], NegacyclicRing] = {}


def _ring(n: int, q: int) -> NegacyclicRing:
    if (n, q) not in _RINGS:
        _RINGS[(n, q)] = NegacyclicRing(n, q)
    return _RINGS[(n, q)]


def standard_params(security_bits: int = 128, plaintext_bits: int = 20, max_clients: int = 1000,
                    min_clients: int = 2) -> SecAggParams:
    """Parameter set for a security level: q = DEFAULT_PRIME and the smallest table n that admits it.

    Rows used: 128 -> n=2048 (max log q 54), 192 -> n=2048 (37), 256 -> n=4096 (58).
    """
    table = HE_STANDARD_TERNARY_MAX_LOG_Q.get(security_bits)
    if table is None:
        raise ParameterError(f'security level {security_bits} not in the HE standard table (128, 192, 256)')
    n = min(n for n, max_log_q in table.items() if max_log_q >= DEFAULT_PRIME.bit_length())
    return SecAggParams(security_bits, n, DEFAULT_PRIME, plaintext_bits, max_clients, min_clients)
