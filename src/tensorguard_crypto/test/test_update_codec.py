"""The round codec end to end: robots encode and encrypt, the server sums, the key service decrypts."""
import os

import numpy as np
import pytest

from tensorguard_crypto import update_codec
from tensorguard_crypto.accountant import DPProfile
from tensorguard_crypto.hybrid import SealedBoxKey
from tensorguard_crypto.secagg import KeyService, generate_key_service_keys
from tensorguard_crypto.wire import RoundConfigPackage

DIM = 300
MAX_CLIENTS = 16
PROFILE = DPProfile(clipping_norm=1.0, noise_multiplier=0.5, min_clients=3, bits=20)


def _config(codec, **overrides):
    fields = dict(round_id=1, round_seed=codec.round_seed, model_version=1, num_coordinates=DIM,
                  total_coordinates=DIM, num_experts=4, deadline=2e9, quorum=3, round_key=b'',
                  aggregator_transport_key=bytes(32),
                  key_service_key_id='key_service', aggregator_key_id='aggregator', signer_key_id='aggregator',
                  created_at=1.8e9, **update_codec.announce(codec))
    fields.update(overrides)
    return RoundConfigPackage(**fields)


def test_three_robots_sum_decodes_within_predicted_noise():
    seed = os.urandom(32)
    codec = update_codec.build_codec(PROFILE, DIM, MAX_CLIENTS, 128, seed)
    secret, public = generate_key_service_keys(codec.secagg)
    transport = SealedBoxKey()
    vectors = [np.random.default_rng(i).normal(size=DIM) * 0.02 for i in range(3)]
    contexts = [update_codec.body_seal_context(f'robot_{i}', 1, bytes(32)) for i in range(3)]
    parts = [update_codec.encrypt_update(codec, public.to_bytes(), transport.public_key, context, v)
             for context, v in zip(contexts, vectors)]
    assert all(len(p.bodies) == codec.sealed_body_bytes and len(p.key_ciphertext) == codec.key_ciphertext_bytes
               for p in parts)
    total = update_codec.BodySum(codec)
    for context, p in zip(contexts, parts):
        total.add(total.parse(transport.open(p.bodies, context)))
    aggregate = update_codec.decrypt_aggregate(codec.secagg, codec.round_seed, KeyService(secret), total.to_bytes(),
                                               [p.key_ciphertext for p in parts])
    decoded = update_codec.decode_aggregate(codec, aggregate)
    error = decoded - np.sum(vectors, axis=0)
    predicted = codec.skellam.aggregate_stddev(3)
    assert 0.3 * predicted < np.std(error) < 3 * predicted


def test_encoded_sums_of_disjoint_groups_add_up_to_the_fleet_sum():
    codec = update_codec.build_codec(PROFILE, DIM, MAX_CLIENTS, 128, os.urandom(32))
    vectors = [np.random.default_rng(i).normal(size=DIM) * 0.02 for i in range(5)]
    halves = update_codec.encoded_sum(codec, vectors[:2]) + update_codec.encoded_sum(codec, vectors[2:])
    assert halves.max() < 2 * (1 << codec.skellam.bits)
    error = update_codec.decode_encoded_sum(codec, halves) - np.sum(vectors, axis=0)
    predicted = codec.skellam.aggregate_stddev(5)
    assert 0.7 * predicted < np.std(error) < 1.3 * predicted


def test_robot_refuses_a_round_announcing_weaker_noise():
    codec = update_codec.build_codec(PROFILE, DIM, MAX_CLIENTS, 128, os.urandom(32))
    weaker = update_codec.announce(codec)['noise_mu'] / 4
    with pytest.raises(update_codec.RoundMismatch, match='noise_mu'):
        update_codec.codec_for_round(_config(codec, noise_mu=weaker), PROFILE, DIM, MAX_CLIENTS)
    with pytest.raises(update_codec.RoundMismatch, match='min_clients'):
        update_codec.codec_for_round(_config(codec, min_clients=2), PROFILE, DIM, MAX_CLIENTS)
    assert update_codec.codec_for_round(_config(codec), PROFILE, DIM, MAX_CLIENTS) == codec


def test_removing_a_robot_from_the_running_sum_leaves_the_sum_of_the_others():
    """What the aggregator does for a robot revoked mid-round: subtract its bodies again."""
    codec = update_codec.build_codec(PROFILE, DIM, MAX_CLIENTS, 128, os.urandom(32))
    secret, public = generate_key_service_keys(codec.secagg)
    transport = SealedBoxKey()
    context = update_codec.body_seal_context('robot', 1, bytes(32))
    vectors = [np.random.default_rng(10 + i).normal(size=DIM) * 0.02 for i in range(4)]
    parts = [update_codec.encrypt_update(codec, public.to_bytes(), transport.public_key, context, v) for v in vectors]
    bodies = [update_codec.BodySum(codec).parse(transport.open(p.bodies, context)) for p in parts]
    total = update_codec.BodySum(codec)
    for body in bodies:
        total.add(body)
    total.remove(bodies[1])
    kept = [0, 2, 3]
    aggregate = update_codec.decrypt_aggregate(codec.secagg, codec.round_seed, KeyService(secret), total.to_bytes(),
                                               [parts[i].key_ciphertext for i in kept])
    error = update_codec.decode_aggregate(codec, aggregate) - np.sum([vectors[i] for i in kept], axis=0)
    assert np.max(np.abs(error)) < 6 * codec.skellam.aggregate_stddev(3) + 2 / codec.skellam.scale
    assert total.count == 3
