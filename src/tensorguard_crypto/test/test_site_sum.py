"""Site partial sums (site_sum.py): grouping robots' bodies into per-site sums and adding those decrypts
to exactly the robots' plaintext sum; the wire records and the site list are strict."""
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorguard_crypto import hybrid, update_codec
from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.params import standard_params
from tensorguard_crypto.secagg import BodyCiphertext, KeyService, RoundEncryptor, generate_key_service_keys, sum_bodies
from tensorguard_crypto.site_sum import SiteCollector, SiteSumError, site_aggregators_from_mapping
from tensorguard_crypto.verify import PinnedKeys, UnknownSite, VerificationError, decode
from tensorguard_crypto.wire import FieldValueError, SiteAggregatorEntry, SitePartialSum

sys.path.insert(0, str(Path(__file__).parent))
from crypto_test_support import make_round_config, make_update  # noqa: E402

PARAMS = standard_params(128, plaintext_bits=20, max_clients=64, min_clients=1)
KEYS = generate_key_service_keys(PARAMS)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 3), min_size=2, max_size=9), st.binary(min_size=8, max_size=8))
def test_summing_per_site_then_across_sites_decrypts_to_the_robots_sum(sites, entropy):
    """Robot i belongs to site sites[i]; the aggregator adds one partial sum per site (a site of one
    robot is its body). The key service, summing every robot's key ciphertext, decrypts the plaintext sum."""
    generator = np.random.default_rng(list(entropy))  # test data only, never a secret
    dim, seed = 1500, os.urandom(32)
    plaintexts = [generator.integers(0, 2 ** 20, dim, dtype=np.uint64) for _ in sites]
    encryptors = [RoundEncryptor(PARAMS, seed, KEYS[1]) for _ in sites]
    bodies = [enc.encrypt(m, update_codec.BODY_LABEL) for enc, m in zip(encryptors, plaintexts)]
    partial = [sum_bodies([b for b, s in zip(bodies, sites) if s == site]) for site in sorted(set(sites))]
    packed = [BodyCiphertext.from_bytes(p.to_bytes(), PARAMS, dim) for p in partial]  # as they cross the WAN
    result = KeyService(KEYS[0]).aggregate(sum_bodies(packed), [e.key_ciphertext() for e in encryptors], seed,
                                           update_codec.BODY_LABEL, dim)
    assert np.array_equal(result, np.sum(plaintexts, axis=0, dtype=np.uint64) % np.uint64(2 ** 20))
    assert np.array_equal(sum_bodies(packed).values, sum_bodies(bodies).values)


def site_entry(seal_key: hybrid.SealedBoxKey, robots=('robot_a', 'robot_b')) -> SiteAggregatorEntry:
    return SiteAggregatorEntry(site_id='site_a', signer_key_id='site_a_aggregator', seal_key=seal_key.public_key,
                               robots=robots)


def test_a_round_config_names_each_site_and_robot_once_and_round_trips():
    server = Identity.generate('aggregator', Role.AGGREGATOR)
    entry = site_entry(hybrid.SealedBoxKey())
    config = make_round_config(server, site_aggregators=(entry,))
    again = type(config).deserialize(config.serialize())
    assert again.site_aggregators == (entry,) and again.config_digest() == config.config_digest()
    assert config.site_of('robot_b') == entry and config.site_of('robot_c') is None
    for sites in [(entry, entry), (entry, SiteAggregatorEntry('site_b', 'x', entry.seal_key, ('robot_a',)))]:
        with pytest.raises(FieldValueError):
            make_round_config(server, site_aggregators=sites)


def test_the_site_list_is_checked_and_names_what_is_wrong():
    key = os.urandom(32).hex()
    good = {'signer_key_id': 'gw_a', 'seal_key': key, 'robots': ['robot_1']}
    assert site_aggregators_from_mapping({'site_a': good})[0].robots == ('robot_1',)
    for sites, words in [({'site_a': {**good, 'seal_key': key[:-2]}}, 'length'),
                         ({'site_a': {**good, 'robots': []}}, 'no robots'),
                         ({'site_a': {'robots': ['robot_1']}}, 'exactly'),
                         ({'site/a': good}, 'site id'),
                         ({'site_a': good, 'site_b': {**good, 'seal_key': key}}, 'two site')]:
        with pytest.raises(ValueError, match=words):
            site_aggregators_from_mapping(sites)


def test_the_collector_signs_a_strict_partial_sum_of_its_robots():
    server = Identity.generate('aggregator', Role.AGGREGATOR)
    gateway = Identity.generate('site_a_aggregator', Role.SITE_AGGREGATOR)
    robots = {name: Identity.generate(name) for name in ('robot_a', 'robot_b', 'robot_c')}
    seal_key, transport = hybrid.SealedBoxKey(), hybrid.SealedBoxKey()
    config = make_round_config(server, site_aggregators=(site_entry(seal_key),), ring_degree=PARAMS.n,
                               modulus_bits=PARAMS.coefficient_bits, aggregator_transport_key=transport.public_key)
    keys = PinnedKeys({name: (Role.ROBOT, robot.public_key_bytes()) for name, robot in robots.items()})
    collector = SiteCollector(config, 'site_a', seal_key, keys, gateway, PARAMS, clock=None)

    def update(name: str) -> bytes:
        body = RoundEncryptor(PARAMS, config.round_seed, KEYS[1]).encrypt(np.arange(10, dtype=np.uint64))
        sealed = hybrid.seal(update_codec.body_seal_key(config, name), body.to_bytes(),
                             update_codec.body_seal_context(name, config.round_id, config.config_digest()))
        return make_update(robots[name], config, body_chunks=1, bodies=sealed,
                           key_ciphertext=os.urandom(PARAMS.key_ciphertext_bytes)).serialize()

    collector.add(update('robot_a'))
    assert not collector.complete
    with pytest.raises(VerificationError) as foreign:
        collector.add(update('robot_c'))
    assert foreign.value.reason == 'foreign_robot'
    collector.add(update('robot_b'))
    assert collector.complete and collector.robots == ['robot_a', 'robot_b']
    record = decode(SitePartialSum, collector.partial_sum(created_at=time.time()))
    record.verify_signature(gateway.public_key_bytes())
    for contribution, name in zip(record.contributions, ('robot_a', 'robot_b')):
        contribution.verify_signature(robots[name].public_key_bytes())
    assert len(record.summed_bodies) == PARAMS.body_bytes(PARAMS.n) + hybrid.SEAL_OVERHEAD_BYTES
    with pytest.raises(UnknownSite):
        SiteCollector(config, 'site_b', seal_key, keys, gateway, PARAMS)
    with pytest.raises(SiteSumError):
        SiteCollector(config, 'site_a', seal_key, keys, Identity.generate('site_a_aggregator'), PARAMS)
