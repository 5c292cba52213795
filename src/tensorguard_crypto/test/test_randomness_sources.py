"""Secrets (keys, lattice noise, DP noise, rounding) come only from os.urandom through csprng.SecretRandom.

Three independent checks: (1) no module of the lattice/DP stack mentions numpy's or Python's
PRNGs; (2) with every numpy.random and `random` entry point replaced by a function that raises,
a full round (key generation, key and body encryption, DP encoding) still runs; (3) with
os.urandom replaced by a constant, two full rounds are byte-identical, so os.urandom is the only
entropy that reaches any output, while with the real os.urandom every secret differs between
runs (no fixed seed anywhere).
"""
import inspect
import os
import random
import re

import numpy as np
import pytest

from tensorguard_crypto import accountant, csprng, params, ring, secagg, skellam
from tensorguard_crypto.params import standard_params
from tensorguard_crypto.secagg import RoundEncryptor, generate_key_service_keys
from tensorguard_crypto.skellam import SkellamConfig, SkellamEncoder

ROUND_SEED = bytes(range(32))
PARAMS = standard_params(128, plaintext_bits=20, max_clients=50)
DP = SkellamConfig(dim=3000, clipping_norm=1.0, noise_multiplier=1.0, min_clients=8, max_clients=50, bits=20)
UPDATE = np.linspace(-0.01, 0.01, 3000)


class ForbiddenRandomness(AssertionError):
    """Raised by the patched PRNG entry points."""


def _forbidden(*_args, **_kwargs):
    raise ForbiddenRandomness('a non-CSPRNG random source was used')


def full_round() -> dict[str, bytes]:
    """Key service keys, one robot's key ciphertext and body, a DP encoding and a rounding."""
    secret, public = generate_key_service_keys(PARAMS)
    encryptor = RoundEncryptor(PARAMS, ROUND_SEED, public)
    encoder = SkellamEncoder(DP, ROUND_SEED)
    encoded = encoder.encode(UPDATE)
    return {
        'service_secret': secret.to_bytes(),
        'service_public': public.to_bytes(),
        'robot_key': encryptor._key_ntt.tobytes(),
        'key_ciphertext': encryptor.key_ciphertext().to_bytes(),
        'body': encryptor.encrypt(encoded).to_bytes(),
        'dp_encoding': encoded.tobytes(),
        'rounding': encoder._conditional_round(np.full(DP.padded_dim, 0.5)).tobytes(),
        'skellam': encoder._rng.skellam(100.0, 1000).tobytes(),
    }


def test_sources_do_not_mention_other_generators():
    pattern = re.compile(r'np\.random|numpy\.random|^\s*(import|from)\s+random\b|default_rng|RandomState',
                         re.MULTILINE)
    for module in (accountant, csprng, params, ring, secagg, skellam):
        assert not pattern.search(inspect.getsource(module)), module.__name__


def test_full_round_runs_with_numpy_and_random_disabled(monkeypatch):
    for name in dir(np.random):
        if callable(getattr(np.random, name)) and not name.startswith('_'):
            monkeypatch.setattr(np.random, name, _forbidden)
    for name in ('random', 'randint', 'randrange', 'getrandbits', 'choice', 'choices', 'shuffle', 'sample',
                 'uniform', 'gauss', 'normalvariate', 'seed', 'randbytes'):
        monkeypatch.setattr(random, name, _forbidden)
    with pytest.raises(ForbiddenRandomness):
        np.random.default_rng()
    with pytest.raises(ForbiddenRandomness):
        np.random.poisson(3.0)
    with pytest.raises(ForbiddenRandomness):
        random.getrandbits(8)
    outputs = full_round()
    assert all(outputs.values())


def test_os_urandom_is_the_only_entropy(monkeypatch):
    calls = []

    def constant_urandom(count: int) -> bytes:
        calls.append(count)
        return bytes([0x5A]) * count

    monkeypatch.setattr(os, 'urandom', constant_urandom)
    first, second = full_round(), full_round()
    assert calls, 'os.urandom was never called'
    assert first == second


def test_every_secret_is_fresh_per_run():
    first, second = full_round(), full_round()
    for name in first:
        assert first[name] != second[name], f'{name} repeated across runs: a fixed seed?'
    same_vector = np.arange(4096, dtype=np.uint64)
    _, public = generate_key_service_keys(PARAMS)
    bodies = [RoundEncryptor(PARAMS, ROUND_SEED, public).encrypt(same_vector).values for _ in range(2)]
    assert np.mean(bodies[0] == bodies[1]) < 1e-3


def test_a_stream_never_starts_near_the_end_of_chachas_block_counter(monkeypatch):
    # cryptography's ChaCha20 reads the first 4 nonce bytes as the block counter. Drawn from os.urandom
    # (as this module once did) an all-0xff draw leaves one block before the counter overflows.
    monkeypatch.setattr(os, 'urandom', lambda count: b'\xff' * count)
    stream = csprng.SecretRandom()
    assert len(stream.random_bytes(1 << 20)) == 1 << 20
    assert stream.skellam(100.0, 10_000).shape == (10_000,)


def test_a_stream_rekeys_from_os_urandom_before_its_counter_runs_out(monkeypatch):
    monkeypatch.setattr(csprng.SecretRandom, 'KEY_STREAM_BYTES', 100)
    keys = []
    real = os.urandom
    monkeypatch.setattr(os, 'urandom', lambda count: keys.append(count) or real(count))
    stream = csprng.SecretRandom()
    drawn = stream.random_bytes(250) + stream.random_bytes(49) + stream.random_bytes(1)
    assert len(drawn) == 300
    assert keys.count(32) == 3  # the first key, then a new one at bytes 100 and 200; byte 300 needs none yet
    assert len({drawn[i:i + 100] for i in range(0, 300, 100)}) == 3
    stream.random_bytes(1)
    assert keys.count(32) == 4
