"""One round's update codec: float update vector <-> Skellam-noised integers <-> ciphertexts.

Robots and the server derive the same `RoundCodec` from the server-signed `RoundConfigPackage`
plus their own configuration, and refuse a round whose announced parameters differ from what
their own configuration implies (a robot never lets the server pick a weaker noise level, a
smaller minimum client count or another ring). The chain, robot to server:

    vector (float, length dim)
      -> SkellamEncoder: clip to C, rotate, scale, round, add Skellam noise, wrap mod 2^b
      -> RoundEncryptor: one body under a fresh per-round ternary key, key ciphertext under the
         key service's round key; the body sealed to the aggregator's round transport key (hybrid)
      ... aggregator: sum of bodies;  key service: sum of key ciphertexts, decrypt the aggregate ...
      -> SkellamDecoder: centred lift, unscale, unrotate -> estimated SUM of the clipped vectors
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tensorguard_crypto import hybrid
from tensorguard_crypto.accountant import DPProfile
from tensorguard_crypto.params import SecAggParams, standard_params
from tensorguard_crypto.secagg import (
    BodyCiphertext,
    KeyCiphertext,
    KeyService,
    KeyServicePublicKey,
    RoundEncryptor,
    pack_residues,
    sum_bodies,
    unpack_residues,
)
from tensorguard_crypto.skellam import SkellamConfig, SkellamDecoder, SkellamEncoder
from tensorguard_crypto.wire import RoundConfigPackage

BODY_LABEL = 'update'
_RELATIVE_TOLERANCE = 1e-9


class RoundMismatch(ValueError):
    """The round's announced parameters differ from what this party's configuration implies."""

    reason = 'round_parameters_mismatch'


@dataclass(frozen=True)
class RoundCodec:
    """Lattice and DP parameters of one round, as every party derives them."""

    secagg: SecAggParams
    skellam: SkellamConfig
    round_seed: bytes

    @property
    def num_values(self) -> int:
        """Integers per update after padding for the rotation."""
        return self.skellam.padded_dim

    @property
    def body_bytes(self) -> int:
        """Exact wire size of one update's bodies."""
        return self.secagg.body_bytes(self.num_values)

    @property
    def sealed_body_bytes(self) -> int:
        """Exact wire size of one update's bodies once sealed to the aggregator."""
        return self.body_bytes + hybrid.SEAL_OVERHEAD_BYTES

    @property
    def body_chunks(self) -> int:
        """Ring elements per update."""
        return self.secagg.chunks(self.num_values)

    @property
    def key_ciphertext_bytes(self) -> int:
        """Exact wire size of one key ciphertext."""
        return self.secagg.key_ciphertext_bytes


def build_codec(profile: DPProfile, dim: int, max_clients: int, security_level: int,
                round_seed: bytes) -> RoundCodec:
    """The codec a party's own configuration implies for a `dim`-vector round."""
    secagg = standard_params(security_level, profile.bits, max_clients, profile.min_clients)
    return RoundCodec(secagg, profile.skellam_config(dim, max_clients), bytes(round_seed))


def announce(codec: RoundCodec) -> dict:
    """The RoundConfigPackage fields that describe `codec` (server side)."""
    return {'clipping_norm': codec.skellam.clipping_norm, 'noise_mu': codec.skellam.aggregate_variance,
            'scale': codec.skellam.scale, 'plaintext_bits': codec.skellam.bits,
            'min_clients': codec.skellam.min_clients, 'security_level': codec.secagg.security_bits,
            'ring_degree': codec.secagg.n, 'modulus_bits': codec.secagg.coefficient_bits}


def codec_for_round(config: RoundConfigPackage, profile: DPProfile, dim: int, max_clients: int) -> RoundCodec:
    """Build our own codec for `config` and check the server announced exactly it."""
    codec = build_codec(profile, dim, max_clients, config.security_level, config.round_seed)
    for name, ours in announce(codec).items():
        theirs = getattr(config, name)
        same = (math.isclose(theirs, ours, rel_tol=_RELATIVE_TOLERANCE) if isinstance(ours, float)
                else theirs == ours)
        if not same:
            raise RoundMismatch(f'round {config.round_id} announces {name}={theirs}, our configuration implies {ours}')
    return codec


@dataclass(frozen=True)
class EncryptedParts:
    """What a robot puts into its UpdatePackage."""

    bodies: bytes
    key_ciphertext: bytes
    body_chunks: int


def body_seal_context(robot_id: str, round_id: int, config_digest: bytes) -> bytes:
    """What a sealed body is bound to: one robot, one round, one round config."""
    return f'TensorGuard/body/{robot_id}/{round_id}/'.encode() + bytes(config_digest)


def body_seal_key(config: RoundConfigPackage, robot_id: str) -> bytes:
    """The X25519 key `robot_id` seals its bodies to this round: its site aggregator's if the signed
    round config assigns it to one (site aggregation, site_sum.py), else the aggregator's transport key."""
    site = config.site_of(robot_id)
    return config.aggregator_transport_key if site is None else site.seal_key


def encrypt_update(codec: RoundCodec, key_service_public_key: bytes, transport_key: bytes, seal_context: bytes,
                   vector: np.ndarray) -> EncryptedParts:
    """Clip, noise and encrypt one robot's update vector; the bodies come back sealed to `transport_key`."""
    encoded = SkellamEncoder(codec.skellam, codec.round_seed).encode(vector)
    public_key = KeyServicePublicKey.from_bytes(key_service_public_key, codec.secagg)
    encryptor = RoundEncryptor(codec.secagg, codec.round_seed, public_key)
    body = encryptor.encrypt(encoded, BODY_LABEL)
    sealed = hybrid.seal(transport_key, body.to_bytes(), seal_context)
    return EncryptedParts(sealed, encryptor.key_ciphertext().to_bytes(), body.chunks)


class BodySum:
    """The aggregator's running sum of accepted bodies (it never sees a key)."""

    def __init__(self, codec: RoundCodec) -> None:
        self.codec = codec
        self.total: BodyCiphertext | None = None
        self.count = 0

    def parse(self, bodies: bytes) -> BodyCiphertext:
        """Check one robot's bodies (exact length, every residue < q) before anything is recorded."""
        return BodyCiphertext.from_bytes(bodies, self.codec.secagg, self.codec.num_values)

    def add(self, body: BodyCiphertext) -> None:
        """Add one robot's parsed bodies."""
        self.total = body if self.total is None else sum_bodies([self.total, body])
        self.count += 1

    def remove(self, body: BodyCiphertext) -> None:
        """Take one previously added robot's bodies out of the sum again (the scheme is additive)."""
        if self.total is None or self.count == 0:
            raise ValueError('no bodies have been added')
        q = self.codec.secagg.q
        negated = BodyCiphertext(body.params, (np.uint64(q) - body.values) % np.uint64(q))
        self.count -= 1
        self.total = None if self.count == 0 else sum_bodies([self.total, negated])

    def to_bytes(self) -> bytes:
        """The summed bodies, packed like one robot's bodies."""
        if self.total is None:
            raise ValueError('no bodies have been added')
        return self.total.to_bytes()


def decrypt_aggregate(params: SecAggParams, round_seed: bytes, key_service: KeyService, summed_bodies: bytes,
                      key_ciphertexts: Sequence[bytes]) -> bytes:
    """Key service: sum the contributors' key ciphertexts, decrypt the summed bodies, pack the result.

    It needs no knowledge of the update's layout: every coefficient of every chunk is decrypted
    (padding decrypts to noise-free zeros' sum) and the aggregator keeps what it needs.
    """
    chunk_bytes = params.body_bytes(params.n)
    if not summed_bodies or len(summed_bodies) % chunk_bytes:
        raise ValueError(f'summed bodies must be a whole number of {chunk_bytes}-byte chunks')
    num_values = len(summed_bodies) // chunk_bytes * params.n
    body = BodyCiphertext.from_bytes(summed_bodies, params, num_values)
    keys = [KeyCiphertext.from_bytes(blob, params) for blob in key_ciphertexts]
    plain = key_service.aggregate(body, keys, round_seed, BODY_LABEL, num_values)
    return pack_residues(plain, params.plaintext_bits)


def decode_aggregate(codec: RoundCodec, aggregate: bytes) -> np.ndarray:
    """Aggregator: the estimated SUM of the contributors' clipped vectors (float64, length dim)."""
    values = unpack_residues(aggregate, codec.body_chunks * codec.secagg.n, codec.secagg.plaintext_bits)
    return SkellamDecoder(codec.skellam, codec.round_seed).decode_sum(values[:codec.num_values])


def encoded_sum(codec: RoundCodec, vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The robots' vectors Skellam-encoded and summed mod 2^b: what the key service's decryption
    yields, without the lattice layer. Sums over disjoint groups of robots add up mod 2^b."""
    encoder = SkellamEncoder(codec.skellam, codec.round_seed)
    total = np.zeros(codec.num_values, dtype=np.int64)
    for vector in vectors:
        total = (total + encoder.encode(vector).astype(np.int64)) % (1 << codec.skellam.bits)
    return total


def decode_encoded_sum(codec: RoundCodec, residues: np.ndarray) -> np.ndarray:
    """Aggregator: the estimated SUM of the clipped vectors from summed residues mod 2^b."""
    return SkellamDecoder(codec.skellam, codec.round_seed).decode_sum(np.asarray(residues) % (1 << codec.skellam.bits))


def plaintext_sum(codec: RoundCodec, vectors: Sequence[np.ndarray]) -> np.ndarray:
    """What `decode_aggregate` yields for these robots' vectors, without the lattice layer: each one
    Skellam-encoded, summed mod 2^b, decoded. The encryption is exact, so this is the same sum; it
    serves simulations and tests of what the aggregator sees."""
    return decode_encoded_sum(codec, encoded_sum(codec, vectors))
