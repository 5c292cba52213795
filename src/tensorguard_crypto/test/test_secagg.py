"""Tests for the key-additive ring-LWE secure aggregation (body and key layers, params, wire)."""
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorguard_crypto.params import (
    DEFAULT_PRIME,
    ParameterError,
    SecAggParams,
    body_noise_bound,
    key_noise_bound,
    standard_params,
)
from tensorguard_crypto.secagg import (
    BodyCiphertext,
    KeyCiphertext,
    KeyService,
    KeyServicePublicKey,
    KeyServiceSecretKey,
    RoundEncryptor,
    SecAggError,
    SummedKey,
    generate_key_service_keys,
    pack_residues,
    sum_bodies,
    unpack_residues,
)

PARAMS = standard_params(128, plaintext_bits=20, max_clients=1000, min_clients=1)
KEYS = generate_key_service_keys(PARAMS)


def run_round(params, keys, plaintexts, label='', seed=None):
    """Every robot encrypts its vector; returns (seed, encryptors, bodies)."""
    seed = seed or os.urandom(32)
    encryptors = [RoundEncryptor(params, seed, keys[1]) for _ in plaintexts]
    bodies = [enc.encrypt(m, label) for enc, m in zip(encryptors, plaintexts)]
    return seed, encryptors, bodies


def bit_balance_z(values: np.ndarray, bits: int) -> float:
    """Largest |z| over bit positions of the frequency of ones (uniform values give |z| ~ N(0,1))."""
    ones = np.array([((values >> np.uint64(i)) & np.uint64(1)).mean() for i in range(bits)])
    return float(np.max(np.abs(ones - 0.5) / math.sqrt(0.25 / values.size)))


@pytest.mark.parametrize('clients, dim', [(1, 3000), (2, 5000), (17, 2500), (1000, 64)])
def test_decrypted_sum_equals_sum_mod_2b(clients, dim):
    @settings(max_examples=3 if clients < 1000 else 1, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(min_size=16, max_size=16))
    def check(entropy):
        generator = np.random.default_rng(list(entropy))  # test data only, never a secret
        plaintexts = [generator.integers(0, 2**20, dim, dtype=np.uint64) for _ in range(clients)]
        seed, encryptors, bodies = run_round(PARAMS, KEYS, plaintexts)
        service = KeyService(KEYS[0])
        result = service.aggregate(sum_bodies(bodies), [e.key_ciphertext() for e in encryptors], seed, '', dim)
        expected = np.sum(np.stack(plaintexts), axis=0, dtype=np.uint64) % np.uint64(2**20)
        assert np.array_equal(result, expected)
    check()


def test_extreme_plaintexts_at_full_budget():
    """max_clients robots all sending 2^(b-1) - 1 or 2^(b-1) (the worst case for the centred sum)."""
    params = SecAggParams(128, 2048, DEFAULT_PRIME, 20, max_clients=PARAMS.max_supported_clients(), min_clients=1)
    keys = generate_key_service_keys(params)
    clients = params.max_clients
    plaintexts = [np.full(8, 2**19 - (i % 2), dtype=np.uint64) for i in range(clients)]
    seed, encryptors, bodies = run_round(params, keys, plaintexts)
    result = KeyService(keys[0]).aggregate(sum_bodies(bodies), [e.key_ciphertext() for e in encryptors], seed, '', 8)
    assert np.array_equal(result, np.sum(plaintexts, axis=0, dtype=np.uint64) % np.uint64(2**20))


def test_parameter_set_refuses_clients_beyond_noise_budget():
    supported = PARAMS.max_supported_clients()
    assert 1000 <= supported < 5000
    with pytest.raises(ParameterError, match='noise budget'):
        SecAggParams(128, 2048, DEFAULT_PRIME, 20, max_clients=supported + 1)
    with pytest.raises(ParameterError, match='noise budget'):
        standard_params(128, plaintext_bits=24, max_clients=1000)
    small = standard_params(128, plaintext_bits=20, max_clients=3, min_clients=2)
    keys = generate_key_service_keys(small)
    encryptors = [RoundEncryptor(small, os.urandom(32), keys[1]) for _ in range(4)]
    with pytest.raises(SecAggError, match='between 2 and 3'):
        KeyService(keys[0]).decrypt_key_sum([e.key_ciphertext() for e in encryptors])


def test_noise_budget_arithmetic():
    # Body: Hoeffding over 2*21*1000 coins at failure 2^-60: sqrt(21 * 1000 * 61 ln 2) = 942.3...
    assert body_noise_bound(1000, 21, 60) == pytest.approx(math.sqrt(21_000 * 61 * math.log(2)))
    assert 942 < body_noise_bound(1000, 21, 60) < 943
    # 2^20 * (2 * 942.3 + 1000) = 3.02e9 < q = 4.29e9, so b = 20 holds 1000 robots; b = 21 does not.
    assert PARAMS.body_budget_ok(1000)
    assert not SecAggParams.body_budget_ok(
        SecAggParams(128, 2048, DEFAULT_PRIME, 21, max_clients=10), 1000)
    # Key layer: sqrt(1000 * 42 * 6145 * 61 ln 2 / 2) = 73,866 < Delta_k / 2 = (q // 2001) / 2 = 1,073,082
    assert key_noise_bound(1000, 2048, 21, 60) == pytest.approx(math.sqrt(1000 * 42 * 6145 * 61 * math.log(2) / 2))
    assert PARAMS.key_scale == DEFAULT_PRIME // 2001


@pytest.mark.parametrize('security, n', [(128, 2048), (192, 2048), (256, 4096)])
def test_standard_sets_sit_in_the_he_table(security, n):
    params = standard_params(security)
    assert params.n == n and params.q.bit_length() == 32
    assert params.coefficient_bits == 32 and params.expansion == pytest.approx(1.6)


def test_refuses_sets_outside_the_table():
    with pytest.raises(ParameterError, match='exceeds 27'):
        SecAggParams(128, 1024, DEFAULT_PRIME, 12, max_clients=10)
    with pytest.raises(ParameterError, match='exceeds 29'):
        SecAggParams(256, 2048, DEFAULT_PRIME, 12, max_clients=10)
    with pytest.raises(ParameterError, match='security level'):
        SecAggParams(100, 2048, DEFAULT_PRIME, 12, max_clients=10)
    with pytest.raises(ParameterError, match='ring degree'):
        SecAggParams(128, 512, DEFAULT_PRIME, 12, max_clients=10)
    with pytest.raises(ParameterError, match='prime'):
        SecAggParams(128, 2048, DEFAULT_PRIME - 2, 12, max_clients=10)


def test_small_ring_with_unaligned_packing_round_trips():
    q27 = 132120577  # 63 * 2^21 + 1, prime, 27 bits: the 128-bit row for n = 1024
    params = SecAggParams(128, 1024, q27, plaintext_bits=12, max_clients=5)
    keys = generate_key_service_keys(params)
    plaintexts = [np.arange(1500, dtype=np.uint64) * np.uint64(i + 1) % np.uint64(4096) for i in range(5)]
    seed, encryptors, bodies = run_round(params, keys, plaintexts)
    wire = [BodyCiphertext.from_bytes(b.to_bytes(), params, 1500) for b in bodies]
    assert len(bodies[0].to_bytes()) == 2 * 1024 * 27 // 8
    keys_wire = [KeyCiphertext.from_bytes(e.key_ciphertext().to_bytes(), params) for e in encryptors]
    result = KeyService(keys[0]).aggregate(sum_bodies(wire), keys_wire, seed, '', 1500)
    assert np.array_equal(result, np.sum(plaintexts, axis=0) % 4096)


def test_mismatched_key_set_yields_no_plaintext():
    dim = 20_000
    plaintexts = [np.full(dim, 1000 * (i + 1), dtype=np.uint64) for i in range(3)]
    seed, encryptors, bodies = run_round(PARAMS, KEYS, plaintexts)
    service = KeyService(KEYS[0])
    key_1_3 = service.decrypt_key_sum([encryptors[0].key_ciphertext(), encryptors[2].key_ciphertext()])
    garbage = service.decrypt_sum(sum_bodies(bodies[:2]), key_1_3, seed, '', dim)
    true_sum = plaintexts[0] + plaintexts[1]
    assert np.mean(garbage == true_sum) < 1e-3
    assert bit_balance_z(garbage, 20) < 6  # each of the 20 bits is a fair coin
    counts = np.bincount((garbage >> np.uint64(12)).astype(np.int64), minlength=256)
    chi_square = float(np.sum((counts - dim / 256) ** 2 / (dim / 256)))
    assert chi_square < 255 + 8 * math.sqrt(2 * 255)  # top 8 bits uniform over 256 cells
    # the matching set does decrypt
    key_1_2 = service.decrypt_key_sum([encryptors[0].key_ciphertext(), encryptors[1].key_ciphertext()])
    assert np.array_equal(service.decrypt_sum(sum_bodies(bodies[:2]), key_1_2, seed, '', dim), true_sum)


def test_key_service_secret_alone_does_not_open_a_body():
    dim = 20_000
    plaintext = np.full(dim, 12345, dtype=np.uint64)
    seed, encryptors, bodies = run_round(PARAMS, KEYS, [plaintext])
    ring = PARAMS.ring()
    as_key = SummedKey(PARAMS, 1, ring.ntt(ring.from_signed(KEYS[0].s.astype(np.int64))))
    garbage = KeyService(KEYS[0]).decrypt_sum(bodies[0], as_key, seed, '', dim)
    assert np.mean(garbage == plaintext) < 1e-3
    assert bit_balance_z(garbage, 20) < 6


def test_wrong_round_seed_or_label_yields_no_plaintext():
    plaintexts = [np.full(4096, 7, dtype=np.uint64) for _ in range(2)]
    seed, encryptors, bodies = run_round(PARAMS, KEYS, plaintexts, label='expert/0')
    service = KeyService(KEYS[0])
    key = service.decrypt_key_sum([e.key_ciphertext() for e in encryptors])
    assert np.array_equal(service.decrypt_sum(sum_bodies(bodies), key, seed, 'expert/0', 4096), plaintexts[0] * 2)
    assert np.mean(service.decrypt_sum(sum_bodies(bodies), key, os.urandom(32), 'expert/0', 4096) == 14) < 1e-2
    assert np.mean(service.decrypt_sum(sum_bodies(bodies), key, seed, 'expert/1', 4096) == 14) < 1e-2


def test_label_reuse_is_refused():
    encryptor = RoundEncryptor(PARAMS, os.urandom(32), KEYS[1])
    encryptor.encrypt(np.zeros(10, dtype=np.uint64), 'expert/0')
    encryptor.encrypt(np.zeros(10, dtype=np.uint64), 'expert/1')
    with pytest.raises(SecAggError, match='already encrypted'):
        encryptor.encrypt(np.zeros(10, dtype=np.uint64), 'expert/0')


def test_plaintext_range_and_type_are_checked():
    encryptor = RoundEncryptor(PARAMS, os.urandom(32), KEYS[1])
    with pytest.raises(SecAggError, match='lie in'):
        encryptor.encrypt(np.array([2**20]))
    with pytest.raises(SecAggError, match='lie in'):
        encryptor.encrypt(np.array([-1]))
    with pytest.raises(SecAggError, match='integer'):
        encryptor.encrypt(np.array([0.5]))
    with pytest.raises(SecAggError, match='32 bytes'):
        RoundEncryptor(PARAMS, b'short', KEYS[1])


def test_wire_sizes_and_strict_parsing():
    encryptor = RoundEncryptor(PARAMS, os.urandom(32), KEYS[1])
    body = encryptor.encrypt(np.arange(5000, dtype=np.uint64))
    data = body.to_bytes()
    assert len(data) == PARAMS.body_bytes(5000) == 3 * 2048 * 4
    assert np.array_equal(BodyCiphertext.from_bytes(data, PARAMS, 5000).values, body.values)
    with pytest.raises(SecAggError, match='bytes'):
        BodyCiphertext.from_bytes(data[:-1], PARAMS, 5000)
    with pytest.raises(SecAggError, match='bytes'):
        BodyCiphertext.from_bytes(data, PARAMS, 7000)
    with pytest.raises(SecAggError, match='>= q'):
        BodyCiphertext.from_bytes(b'\xff' * len(data), PARAMS, 5000)
    key_data = encryptor.key_ciphertext().to_bytes()
    assert len(key_data) == PARAMS.key_ciphertext_bytes == 2 * 2048 * 4
    with pytest.raises(SecAggError, match='bytes'):
        KeyCiphertext.from_bytes(key_data + b'\x00', PARAMS)
    secret, public = KEYS
    assert np.array_equal(KeyServiceSecretKey.from_bytes(secret.to_bytes(), PARAMS).s, secret.s)
    assert np.array_equal(KeyServicePublicKey.from_bytes(public.to_bytes(), PARAMS).p0, public.p0)
    with pytest.raises(SecAggError):
        KeyServiceSecretKey.from_bytes(b'\x03' * PARAMS.n, PARAMS)
    assert 'secret' in repr(secret) and str(secret.s[:4].tolist()) not in repr(secret)


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(1, 32), values=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=50))
def test_pack_unpack_roundtrip(bits, values):
    arr = np.array(values, dtype=np.uint64) & np.uint64((1 << bits) - 1)
    data = pack_residues(arr, bits)
    assert len(data) == (arr.size * bits + 7) // 8
    assert np.array_equal(unpack_residues(data, arr.size, bits), arr)


def test_two_encryptions_of_the_same_vector_differ():
    seed = os.urandom(32)
    vector = np.arange(4096, dtype=np.uint64)
    first = RoundEncryptor(PARAMS, seed, KEYS[1])
    second = RoundEncryptor(PARAMS, seed, KEYS[1])
    assert np.mean(first.encrypt(vector).values == second.encrypt(vector).values) < 1e-3
    assert np.mean(first.key_ciphertext().c0 == second.key_ciphertext().c0) < 1e-2
