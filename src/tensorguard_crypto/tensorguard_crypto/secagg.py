"""One-shot key-additive ring-LWE secure aggregation (body layer + key layer).

Body layer (BGV-style, plaintext in the low bits; Brakerski, Gentry, Vaikuntanathan, ITCS 2012):
for round seed `seed`, label L and chunk j every party derives the same public uniform ring
element a_j = SHAKE-128(seed, L, j) (sampled directly in the NTT domain, which is a bijection of
R_q, so it is uniform there too). Robot i draws a fresh ternary k_i for the round and sends only

    b_ij = a_j * k_i + 2^b * e_ij + m_ij   (mod q),   e_ij ~ CBD(21),   m_ij in [-2^(b-1), 2^(b-1))

in NTT form. Bodies add coefficient-wise, and the sum over a set S is a ciphertext of
sum_i m_ij under K_S = sum_{i in S} k_i: centring (B_j - a_j * K_S) mod q gives
2^b E + M with |2^b E + M| < q/2 (checked by `SecAggParams`), and reducing that mod 2^b gives
M mod 2^b exactly. Compared with a BFV-style Delta*m encoding this needs no relation between q
and 2^b and has no rounding step.

Key layer (LPR public-key RLWE; Lyubashevsky, Peikert, Regev, EUROCRYPT 2010): the key service
publishes pk = (p0 = -(a s + e), a). Robot i sends (p0 u + e1 + Delta_k k_i, a u + e2) with
fresh ternary u and CBD errors. Key ciphertexts add; the key service decrypts only their sum,
rounding to K_S (|K_S| <= max_clients < q / (2 Delta_k)), then opens the summed bodies.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np

from .csprng import SecretRandom, public_uniform_mod
from .params import ERROR_ETA, SecAggParams

U64 = np.uint64
_DOMAIN_A = b'TensorGuard/secagg/v1/body-a'
_DOMAIN_PK = b'TensorGuard/secagg/v1/pk-a'
_ENCRYPT_BLOCK_CHUNKS = 16


class SecAggError(ValueError):
    """Raised for malformed ciphertexts, mismatched parameters or refused decryptions."""


def pack_residues(values: np.ndarray, bits: int) -> bytes:
    """Pack residues (< 2^bits, bits <= 32) into exactly ceil(count * bits / 8) bytes, little-endian."""
    flat = np.ascontiguousarray(values, dtype=U64).reshape(-1)
    if bits % 8 == 0:
        return flat.astype('<u8').view(np.uint8).reshape(-1, 8)[:, : bits // 8].tobytes()
    bit_matrix = np.unpackbits(flat.astype('<u8').view(np.uint8).reshape(-1, 8), axis=1, bitorder='little')
    return np.packbits(bit_matrix[:, :bits].reshape(-1), bitorder='little').tobytes()


def unpack_residues(data: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of `pack_residues`; the byte length must match exactly."""
    if len(data) != (count * bits + 7) // 8:
        raise SecAggError(f'expected {(count * bits + 7) // 8} bytes for {count} values of {bits} bits, '
                          f'got {len(data)}')
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits % 8 == 0:
        padded = np.zeros((count, 8), dtype=np.uint8)
        padded[:, : bits // 8] = raw.reshape(count, bits // 8)
        return padded.view('<u8').reshape(-1).astype(U64)
    bit_matrix = np.zeros((count, 64), dtype=np.uint8)
    bit_matrix[:, :bits] = np.unpackbits(raw, bitorder='little')[: count * bits].reshape(count, bits)
    return np.packbits(bit_matrix, axis=1, bitorder='little').view('<u8').reshape(-1).astype(U64)


def _checked_residues(data: bytes, shape: tuple[int, int], params: SecAggParams, what: str) -> np.ndarray:
    values = unpack_residues(data, shape[0] * shape[1], params.coefficient_bits)
    if np.any(values >= U64(params.q)):
        raise SecAggError(f'{what} has a coefficient >= q')
    return values.reshape(shape)


def public_body_elements(params: SecAggParams, round_seed: bytes, label: str, first_chunk: int,
                         count: int) -> np.ndarray:
    """NTT-domain public ring elements a_j for chunks first_chunk .. first_chunk + count - 1."""
    parts = (_DOMAIN_A, params.domain(), bytes(round_seed), label.encode())
    return np.stack([public_uniform_mod(params.q, params.n, *parts, struct.pack('<Q', j))
                     for j in range(first_chunk, first_chunk + count)])


@dataclass(frozen=True, eq=False)
class BodyCiphertext:
    """Bodies of one vector (chunks x n residues, NTT form); a sum of bodies has the same type."""

    params: SecAggParams
    values: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        if self.values.dtype != U64 or self.values.ndim != 2 or self.values.shape[1] != self.params.n:
            raise SecAggError(f'body must be a uint64 (chunks, {self.params.n}) array')

    @property
    def chunks(self) -> int:
        """Number of ring elements."""
        return self.values.shape[0]

    def to_bytes(self) -> bytes:
        """Tightly packed residues, ceil(log2 q) bits each."""
        return pack_residues(self.values, self.params.coefficient_bits)

    @classmethod
    def from_bytes(cls, data: bytes, params: SecAggParams, num_values: int) -> "BodyCiphertext":
        """Parse bodies of a `num_values` vector; exact length and every residue < q are enforced."""
        if num_values < 1:
            raise SecAggError(f'num_values must be positive, got {num_values}')
        if len(data) != params.body_bytes(num_values):
            raise SecAggError(f'body of {num_values} values must be {params.body_bytes(num_values)} bytes, '
                              f'got {len(data)}')
        return cls(params, _checked_residues(data, (params.chunks(num_values), params.n), params, 'body'))


@dataclass(frozen=True, eq=False)
class KeyCiphertext:
    """A key-layer ciphertext (c0, c1) in NTT form; sums of key ciphertexts have the same type."""

    params: SecAggParams
    c0: np.ndarray = field(repr=False)
    c1: np.ndarray = field(repr=False)

    def to_bytes(self) -> bytes:
        """c0 then c1, tightly packed."""
        return pack_residues(np.stack([self.c0, self.c1]), self.params.coefficient_bits)

    @classmethod
    def from_bytes(cls, data: bytes, params: SecAggParams) -> "KeyCiphertext":
        """Parse a key ciphertext; exact length and every residue < q are enforced."""
        if len(data) != params.key_ciphertext_bytes:
            raise SecAggError(f'key ciphertext must be {params.key_ciphertext_bytes} bytes, got {len(data)}')
        c0, c1 = _checked_residues(data, (2, params.n), params, 'key ciphertext')
        return cls(params, c0, c1)


@dataclass(frozen=True, eq=False)
class KeyServicePublicKey:
    """pk = (p0, a) of the key service; a is expanded from a public 32-byte seed."""

    params: SecAggParams
    seed: bytes
    p0: np.ndarray = field(repr=False)

    def a(self) -> np.ndarray:
        """The public element a (NTT form)."""
        return _public_key_element(self.params, self.seed)

    def to_bytes(self) -> bytes:
        """seed (32 bytes) then packed p0."""
        return self.seed + pack_residues(self.p0, self.params.coefficient_bits)

    @classmethod
    def from_bytes(cls, data: bytes, params: SecAggParams) -> "KeyServicePublicKey":
        """Parse a public key; exact length and every residue < q are enforced."""
        expected = 32 + (params.n * params.coefficient_bits + 7) // 8
        if len(data) != expected:
            raise SecAggError(f'public key must be {expected} bytes, got {len(data)}')
        return cls(params, data[:32], _checked_residues(data[32:], (1, params.n), params, 'public key')[0])


@dataclass(frozen=True, eq=False)
class KeyServiceSecretKey:
    """The key service's ternary secret s (coefficient form, int8)."""

    params: SecAggParams
    s: np.ndarray = field(repr=False)

    def __repr__(self) -> str:
        return f'KeyServiceSecretKey(n={self.params.n}, <secret>)'

    def to_bytes(self) -> bytes:
        """One byte per coefficient (s + 1 in {0, 1, 2}); store it encrypted at rest."""
        return (self.s.astype(np.int16) + 1).astype(np.uint8).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, params: SecAggParams) -> "KeyServiceSecretKey":
        """Parse a secret key; exact length and ternary coefficients are enforced."""
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size != params.n or np.any(raw > 2):
            raise SecAggError(f'secret key must be {params.n} bytes with values in {{0, 1, 2}}')
        return cls(params, raw.astype(np.int8) - 1)


@lru_cache(maxsize=16)
def _public_key_element(params: SecAggParams, seed: bytes) -> np.ndarray:
    a = public_uniform_mod(params.q, params.n, _DOMAIN_PK, params.domain(), seed)
    a.flags.writeable = False
    return a


def generate_key_service_keys(params: SecAggParams) -> tuple[KeyServiceSecretKey, KeyServicePublicKey]:
    """Fresh key-service key pair; the error is resampled until |e|^2 <= eta*n (the bound the noise budget assumes)."""
    rng, ring = SecretRandom(), params.ring()
    s = rng.ternary(params.n)
    e = rng.centered_binomial(ERROR_ETA, params.n)
    while int(np.dot(e, e)) > ERROR_ETA * params.n:
        e = rng.centered_binomial(ERROR_ETA, params.n)
    seed = rng.random_bytes(32)
    a_s = ring.pointwise(_public_key_element(params, seed), ring.ntt(ring.from_signed(s)))
    p0 = ring.sub(np.zeros(params.n, dtype=U64), ring.add(a_s, ring.ntt(ring.from_signed(e))))
    return KeyServiceSecretKey(params, s.astype(np.int8)), KeyServicePublicKey(params, seed, p0)


class RoundEncryptor:
    """A robot's encryption state for one round: a fresh ternary key k_i, one body per label."""

    def __init__(self, params: SecAggParams, round_seed: bytes, key_service_pk: KeyServicePublicKey) -> None:
        if len(round_seed) != 32:
            raise SecAggError(f'round_seed must be 32 bytes, got {len(round_seed)}')
        if key_service_pk.params != params:
            raise SecAggError('key service public key was made for different parameters')
        self.params = params
        self.round_seed = bytes(round_seed)
        self._rng = SecretRandom()
        self._ring = ring = params.ring()
        key, u = self._rng.ternary((2, params.n))
        e1, e2 = self._rng.centered_binomial(ERROR_ETA, (2, params.n))
        signed = np.stack([key, u, e1 + params.key_scale * key, e2])
        self._key_ntt, u_ntt, message_ntt, e2_ntt = ring.ntt(ring.from_signed(signed))
        self._key_ciphertext = KeyCiphertext(params, ring.add(ring.pointwise(key_service_pk.p0, u_ntt), message_ntt),
                                             ring.add(ring.pointwise(key_service_pk.a(), u_ntt), e2_ntt))
        self._labels: set[str] = set()

    def key_ciphertext(self) -> KeyCiphertext:
        """k_i encrypted under the key service's public key (send with the bodies)."""
        return self._key_ciphertext

    def encrypt(self, values: np.ndarray, label: str = '') -> BodyCiphertext:
        """Encrypt an integer vector with entries in [0, 2^b) under this round's key.

        Each label may be used once per round: two bodies under the same k_i and a_j would
        reveal the difference of their plaintexts up to small noise.
        """
        params, ring = self.params, self._ring
        flat = np.asarray(values).reshape(-1)
        if flat.size == 0 or not np.issubdtype(flat.dtype, np.integer):
            raise SecAggError('values must be a non-empty integer array')
        if flat.min() < 0 or flat.max() >= params.plaintext_modulus:
            raise SecAggError(f'values must lie in [0, 2^{params.plaintext_bits})')
        if label in self._labels:
            raise SecAggError(f'label {label!r} already encrypted this round; keys must not be reused')
        self._labels.add(label)
        chunks = params.chunks(flat.size)
        message = np.zeros(chunks * params.n, dtype=np.int64)
        message[: flat.size] = flat
        message = message.reshape(chunks, params.n)
        t = params.plaintext_modulus
        out = np.empty((chunks, params.n), dtype=U64)
        for start in range(0, chunks, _ENCRYPT_BLOCK_CHUNKS):
            block = slice(start, min(start + _ENCRYPT_BLOCK_CHUNKS, chunks))
            count = block.stop - block.start
            m = message[block]
            # centred plaintext m - t*[m >= t/2] plus t*e, folded into one multiple of t
            multiple = self._rng.centered_binomial(ERROR_ETA, (count, params.n)) - (m >= t // 2)
            noisy = ring.from_signed(m + t * multiple)
            a = public_body_elements(params, self.round_seed, label, block.start, count)
            out[block] = ring.add(ring.pointwise(a, self._key_ntt), ring.ntt(noisy))
        return BodyCiphertext(params, out)


def _reduce_sum(acc: np.ndarray, q: int) -> np.ndarray:
    quotient = acc // U64(q)
    quotient *= U64(q)
    acc -= quotient
    return acc


def sum_bodies(bodies: Sequence[BodyCiphertext]) -> BodyCiphertext:
    """Coefficient-wise sum mod q of bodies of the same shape and parameters."""
    if not bodies:
        raise SecAggError('no bodies to sum')
    first = bodies[0]
    acc = np.zeros_like(first.values)
    for body in bodies:
        if body.values.shape != acc.shape or (body.params is not first.params and body.params != first.params):
            raise SecAggError('bodies differ in parameters or length')
        acc += body.values
    return BodyCiphertext(first.params, _reduce_sum(acc, first.params.q))


def sum_key_ciphertexts(ciphertexts: Sequence[KeyCiphertext]) -> KeyCiphertext:
    """Coefficient-wise sum mod q of key ciphertexts."""
    if not ciphertexts:
        raise SecAggError('no key ciphertexts to sum')
    params = ciphertexts[0].params
    if any(ct.params != params for ct in ciphertexts):
        raise SecAggError('key ciphertexts differ in parameters')
    c0 = _reduce_sum(np.sum([ct.c0 for ct in ciphertexts], axis=0, dtype=U64), params.q)
    c1 = _reduce_sum(np.sum([ct.c1 for ct in ciphertexts], axis=0, dtype=U64), params.q)
    return KeyCiphertext(params, c0, c1)


@dataclass(frozen=True, eq=False)
class SummedKey:
    """K_S = sum of the contributors' ternary keys (NTT form), as recovered by the key service."""

    params: SecAggParams
    contributors: int
    key_ntt: np.ndarray = field(repr=False)


class KeyService:
    """Holder of the key-layer secret: decrypts only sums of key ciphertexts, then summed bodies."""

    def __init__(self, secret_key: KeyServiceSecretKey) -> None:
        self.params = secret_key.params
        self._ring = self.params.ring()
        self._s_ntt = self._ring.ntt(self._ring.from_signed(secret_key.s))

    def decrypt_key_sum(self, key_ciphertexts: Sequence[KeyCiphertext]) -> SummedKey:
        """Sum the given key ciphertexts and decrypt the sum (refuses fewer than min_clients)."""
        count = len(key_ciphertexts)
        if not self.params.min_clients <= count <= self.params.max_clients:
            raise SecAggError(f'need between {self.params.min_clients} and {self.params.max_clients} '
                              f'key ciphertexts, got {count}')
        total = sum_key_ciphertexts(key_ciphertexts)
        ring = self._ring
        noisy = ring.centered(ring.intt(ring.add(total.c0, ring.pointwise(total.c1, self._s_ntt))))
        scale = self.params.key_scale
        key = np.floor_divide(noisy + scale // 2, scale)
        if np.any(np.abs(key) > count):
            raise SecAggError('summed key ciphertexts do not decrypt to a sum of ternary keys')
        return SummedKey(self.params, count, ring.ntt(ring.from_signed(key)))

    def decrypt_sum(self, summed_body: BodyCiphertext, summed_key: SummedKey, round_seed: bytes,
                    label: str, num_values: int) -> np.ndarray:
        """Decrypt summed bodies with the matching summed key: sum of plaintexts mod 2^b (uint64)."""
        params, ring = self.params, self._ring
        if len(round_seed) != 32:
            raise SecAggError(f'round_seed must be 32 bytes, got {len(round_seed)}')
        if summed_body.params != params or summed_key.params != params:
            raise SecAggError('ciphertexts were made for different parameters')
        if summed_body.chunks != params.chunks(num_values):
            raise SecAggError(f'body has {summed_body.chunks} chunks, '
                              f'{num_values} values need {params.chunks(num_values)}')
        out = np.empty(summed_body.chunks * params.n, dtype=U64).reshape(summed_body.chunks, params.n)
        for start in range(0, summed_body.chunks, _ENCRYPT_BLOCK_CHUNKS):
            block = slice(start, min(start + _ENCRYPT_BLOCK_CHUNKS, summed_body.chunks))
            a = public_body_elements(params, round_seed, label, block.start, block.stop - block.start)
            phase = ring.intt(ring.sub(summed_body.values[block], ring.pointwise(a, summed_key.key_ntt)))
            out[block] = (ring.centered(phase) & (params.plaintext_modulus - 1)).astype(U64)
        return out.reshape(-1)[:num_values]

    def aggregate(self, summed_body: BodyCiphertext, key_ciphertexts: Sequence[KeyCiphertext],
                  round_seed: bytes, label: str, num_values: int) -> np.ndarray:
        """Sum and decrypt the contributors' key ciphertexts, then decrypt their summed bodies."""
        return self.decrypt_sum(summed_body, self.decrypt_key_sum(key_ciphertexts), round_seed, label, num_values)
