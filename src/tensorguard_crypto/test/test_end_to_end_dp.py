"""End to end in the library: 16 robots clip, noise, encrypt; the key service opens only the sum."""
import math
import os

import numpy as np
import pytest

from tensorguard_crypto.accountant import DPProfile, PrivacyBudget, PrivacyBudgetExceeded, PrivacyLedger
from tensorguard_crypto.params import standard_params
from tensorguard_crypto.secagg import (
    BodyCiphertext,
    KeyCiphertext,
    KeyService,
    RoundEncryptor,
    generate_key_service_keys,
    sum_bodies,
)
from tensorguard_crypto.skellam import SkellamDecoder, SkellamEncoder

ROBOTS = 16
DIM = 6000


def test_sixteen_robots_private_mean_within_predicted_noise():
    params = standard_params(128, plaintext_bits=20, max_clients=1000, min_clients=ROBOTS)
    secret, public = generate_key_service_keys(params)
    policy = DPProfile(clipping_norm=1.0, noise_multiplier=0.5, min_clients=ROBOTS)
    budget = PrivacyBudget(epsilon=12.0)
    config = policy.skellam_config(DIM, max_clients=1000)
    seed = os.urandom(32)
    data = np.random.default_rng(7)  # the robots' training updates (test data, not secrets)
    shared = data.normal(size=DIM) * 0.02
    updates = [shared + data.normal(size=DIM) * 0.01 for _ in range(ROBOTS)]
    updates[0] = updates[0] * 100  # one robot far over the clipping norm

    bodies, key_cts, ledgers = [], [], []
    for update in updates:
        ledger = PrivacyLedger(budget)
        ledger.charge('round-1', config)
        ledgers.append(ledger)
        encryptor = RoundEncryptor(params, seed, public)
        encoded = SkellamEncoder(config, seed).encode(update)
        bodies.append(encryptor.encrypt(encoded).to_bytes())
        key_cts.append(encryptor.key_ciphertext().to_bytes())

    # aggregator: parses and sums bodies; it holds no key material
    total = sum_bodies([BodyCiphertext.from_bytes(b, params, config.padded_dim) for b in bodies])
    # key service: sums the robots' key ciphertexts itself and decrypts the sum only
    aggregate = KeyService(secret).aggregate(total, [KeyCiphertext.from_bytes(k, params) for k in key_cts],
                                             seed, '', config.padded_dim)
    mean = SkellamDecoder(config, seed).decode_mean(aggregate, ROBOTS)

    clipped = [u * min(1.0, config.clipping_norm / np.linalg.norm(u)) for u in updates]
    true_mean = np.mean(clipped, axis=0)
    error = mean - true_mean
    # predicted per-coordinate std of the mean: sqrt(16 * (local Skellam variance + 1/4 rounding)) / gamma / 16,
    # which is noise_multiplier * C / 16 = 0.03125 up to the rounding term
    predicted = config.aggregate_stddev(ROBOTS) / ROBOTS
    assert predicted == pytest.approx(policy.noise_multiplier * policy.clipping_norm / ROBOTS, rel=1e-3)
    assert np.max(np.abs(error)) < 6 * predicted  # 6000 coordinates: P(any beyond 6 sigma) ~ 1e-5
    assert 0.9 * predicted < error.std() < 1.1 * predicted  # the noise is really there, at its size
    assert abs(np.mean(error)) < 5 * predicted / math.sqrt(DIM)  # and unbiased
    # the private mean still carries the signal
    assert np.corrcoef(mean, true_mean)[0, 1] > 0.3
    assert all(0 < ledger.epsilon() <= budget.epsilon for ledger in ledgers)


def test_robot_hard_stop_blocks_the_over_budget_round():
    policy = DPProfile(clipping_norm=1.0, noise_multiplier=1.0, min_clients=ROBOTS)
    config = policy.skellam_config(1000, max_clients=100)
    ledger = PrivacyLedger(PrivacyBudget(epsilon=6.0))
    ledger.charge('round-1', config)
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.charge('round-2', config)
