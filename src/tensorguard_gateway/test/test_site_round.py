"""A site gateway's site aggregation round by round (site_round.py): a config that names the site starts a
sum of exactly its robots, the sum is handed out once when every robot has sent or the site's deadline
margin is reached, and bad configs and updates are refused with their reason and change nothing; the server
gateway's screen of a site sum (key, header and signed record name one site)."""
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tensorguard_crypto import hybrid, update_codec
from tensorguard_crypto.identity import Identity, Role
from tensorguard_crypto.params import standard_params
from tensorguard_crypto.secagg import RoundEncryptor, generate_key_service_keys
from tensorguard_crypto.site_keys import SiteAggregatorKeys
from tensorguard_crypto.verify import PinnedKeys, decode
from tensorguard_crypto.wire import SiteAggregatorEntry, SitePartialSum
from tensorguard_gateway.screen import GatewayRefusal, screen_site_sum
from tensorguard_gateway.site_round import SiteRound, SiteSumRefusal

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'tensorguard_crypto' / 'test'))
from crypto_test_support import make_round_config, make_update  # noqa: E402

PARAMS = standard_params(128, plaintext_bits=20, max_clients=3, min_clients=2)
PUBLIC = generate_key_service_keys(PARAMS)[1]
AGGREGATOR = Identity.generate('aggregator', Role.AGGREGATOR)
ROBOTS = {name: Identity.generate(name) for name in ('robot_a', 'robot_b', 'robot_c')}


class Clock:
    """Test time, moved by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def site():
    keys = SiteAggregatorKeys(Identity.generate('site_a_aggregator', Role.SITE_AGGREGATOR), hybrid.SealedBoxKey(),
                              PinnedKeys({'aggregator': (Role.AGGREGATOR, AGGREGATOR.public_key_bytes()),
                                          **{n: (Role.ROBOT, r.public_key_bytes()) for n, r in ROBOTS.items()}}))
    clock = Clock()
    return keys, clock, SiteRound('site_a', keys, margin_s=5.0, clock=clock)


def config_for(keys: SiteAggregatorKeys, clock: Clock, round_id: int = 7, signer: Identity = AGGREGATOR,
               seal_key: bytes | None = None, named: bool = True):
    entry = SiteAggregatorEntry(site_id='site_a', signer_key_id=keys.signer.key_id,
                                seal_key=seal_key or keys.seal_key.public_key, robots=('robot_a', 'robot_b'))
    return make_round_config(signer, round_id, site_aggregators=(entry,) if named else (), min_clients=2,
                             ring_degree=PARAMS.n, modulus_bits=PARAMS.coefficient_bits, deadline=clock.now + 60,
                             created_at=clock.now)


def update(config, name: str) -> bytes:
    body = RoundEncryptor(PARAMS, config.round_seed, PUBLIC).encrypt(np.arange(10, dtype=np.uint64))
    sealed = hybrid.seal(update_codec.body_seal_key(config, name), body.to_bytes(),
                         update_codec.body_seal_context(name, config.round_id, config.config_digest()))
    return make_update(ROBOTS[name], config, body_chunks=1, bodies=sealed,
                       key_ciphertext=os.urandom(PARAMS.key_ciphertext_bytes)).serialize()


def test_the_sum_of_every_robot_of_the_site_is_due_once_and_a_later_update_is_refused(site):
    keys, clock, summing = site
    config = config_for(keys, clock)
    assert summing.on_config(config.serialize()) and summing.round_id == 7
    assert summing.takes('robot_a') and not summing.takes('robot_c')
    summing.add(update(config, 'robot_a'))
    assert summing.due() is None  # robot_b has not sent and the deadline is far
    summing.add(update(config, 'robot_b'))
    blob = summing.due()
    record = decode(SitePartialSum, blob)
    record.verify_signature(keys.signer.public_key_bytes())
    assert (record.site_id, record.round_id) == ('site_a', 7)
    assert [c.robot_id for c in record.contributions] == ['robot_a', 'robot_b']
    assert summing.due() is None
    with pytest.raises(SiteSumRefusal) as late:
        summing.add(update(config, 'robot_a'))
    assert late.value.reason == 'deadline_passed'
    # The same config again keeps the round; the next round starts a new sum.
    assert summing.on_config(config.serialize()) and summing.due() is None
    following = config_for(keys, clock, round_id=8)
    assert summing.on_config(following.serialize())
    summing.add(update(following, 'robot_b'))
    assert summing.due() is None


def test_a_partial_sum_is_due_at_the_sites_deadline_margin_when_a_robot_is_missing(site):
    keys, clock, summing = site
    config = config_for(keys, clock)
    summing.on_config(config.serialize())
    assert summing.due() is None  # no robot yet: nothing to send, even at the deadline
    summing.add(update(config, 'robot_a'))
    clock.now = config.deadline - 5.5
    assert summing.due() is None
    clock.now = config.deadline - 4.5
    record = decode(SitePartialSum, summing.due())
    assert [c.robot_id for c in record.contributions] == ['robot_a']


def test_a_config_without_this_site_lets_updates_pass_and_bad_configs_and_updates_are_refused(site):
    keys, clock, summing = site
    assert not summing.on_config(config_for(keys, clock, named=False).serialize())
    assert not summing.takes('robot_a')
    config = config_for(keys, clock, round_id=9)
    refusals = [(config_for(keys, clock, round_id=9, signer=Identity.generate('aggregator', Role.AGGREGATOR)),
                 'bad_signature'),
                (config_for(keys, clock, round_id=9, seal_key=hybrid.SealedBoxKey().public_key),
                 'round_parameters_mismatch')]
    for bad, reason in refusals:
        with pytest.raises(SiteSumRefusal) as refused:
            summing.on_config(bad.serialize())
        assert refused.value.reason == reason
        assert not summing.takes('robot_a') and summing.round_id == 7  # the state before is kept
    with pytest.raises(SiteSumRefusal) as malformed:
        summing.on_config(b'not a config')
    assert malformed.value.reason == 'malformed'
    assert summing.on_config(config.serialize())
    for data, reason in [(update(config, 'robot_c'), 'foreign_robot'), (b'garbage', 'malformed'),
                         (make_update(ROBOTS['robot_a'], config, body_chunks=1,
                                      key_ciphertext=os.urandom(PARAMS.key_ciphertext_bytes)).serialize(),
                          'unsealing_failed')]:
        with pytest.raises(SiteSumRefusal) as refused:
            summing.add(data)
        assert refused.value.reason == reason
    assert summing.due() is None
    summing.add(update(config, 'robot_a'))  # a refused update recorded nothing: robot_a may still send


def test_the_server_gateway_carries_a_site_sum_only_under_the_key_of_the_site_it_names(site):
    keys, clock, summing = site
    config = config_for(keys, clock)
    summing.on_config(config.serialize())
    summing.add(update(config, 'robot_a'))
    clock.now = config.deadline
    blob = summing.due()
    assert screen_site_sum('site_a', blob, 'site_a') == 'site_a'
    for header, package, key_site, reason in [('site_b', blob, 'site_a', 'header_mismatch'),
                                              ('site_b', blob, 'site_b', 'header_mismatch'),
                                              ('site_a', blob, 'site_b', 'header_mismatch'),
                                              ('site_a', b'not a record', 'site_a', 'malformed')]:
        with pytest.raises(GatewayRefusal) as refused:
            screen_site_sum(header, package, key_site)
        assert refused.value.reason == reason
