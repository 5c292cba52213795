"""The key-expression scheme: every key round-trips, names cannot widen a key, a site is granted only its own."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tensorguard_gateway.keyexpr import (
    CHANNELS,
    ENCRYPTED_UPDATES,
    ROUND_CONFIG,
    SITE_SUMS,
    Direction,
    KeySchemeError,
    KeySpace,
    Route,
)

NAMES = st.from_regex(r'[a-z0-9][a-z0-9_-]{0,20}', fullmatch=True)
SITES = NAMES.filter(lambda name: name != 'fleet')
TO_SERVER = [c for c in CHANNELS if c.direction is Direction.TO_SERVER]
TO_SITES = [c for c in CHANNELS if c.direction is Direction.TO_SITES]


@given(NAMES, SITES, NAMES, st.sampled_from(TO_SERVER))
def test_robot_keys_round_trip(fleet, site, robot, channel):
    keys = KeySpace(fleet)
    key = keys.robot_key(site, robot, channel)
    assert key == f'tensorguard/{fleet}/{site}/{robot}/{channel.name}'
    assert keys.parse(key) == Route(channel, site, robot)


@given(NAMES, SITES)
def test_site_sum_keys_round_trip_and_name_only_the_site(fleet, site):
    keys = KeySpace(fleet)
    key = keys.site_sum_key(site)
    assert key == f'tensorguard/{fleet}/{site}/site_sum'
    assert keys.parse(key) == Route(SITE_SUMS, site)


@given(NAMES, st.sampled_from(TO_SITES))
def test_fleet_keys_round_trip(fleet, channel):
    keys = KeySpace(fleet)
    assert keys.parse(keys.fleet_key(channel)) == Route(channel)


@given(st.text(min_size=1, max_size=12).filter(lambda s: any(c in s for c in '/*$#?.A ')))
def test_a_name_with_key_syntax_is_refused(bad):
    keys = KeySpace('fleet')
    for make in (lambda: KeySpace(bad), lambda: keys.robot_key(bad, 'robot_1', ENCRYPTED_UPDATES),
                 lambda: keys.robot_key('site_a', bad, ENCRYPTED_UPDATES)):
        with pytest.raises(KeySchemeError):
            make()


def test_the_reserved_site_and_wrong_directions_are_refused():
    keys = KeySpace('fleet')
    with pytest.raises(KeySchemeError, match='reserved'):
        keys.robot_key('fleet', 'robot_1', ENCRYPTED_UPDATES)
    with pytest.raises(KeySchemeError):
        keys.fleet_key(ENCRYPTED_UPDATES)
    with pytest.raises(KeySchemeError):
        keys.robot_key('site_a', 'robot_1', ROUND_CONFIG)


@pytest.mark.parametrize('key', [
    'tensorguard/other/site_a/robot_1/encrypted_updates',   # another fleet
    'tensorguard/fleet/site_a/robot_1/round_config',        # a fleet channel under a robot
    'tensorguard/fleet/fleet/encrypted_updates',            # a robot channel without a robot
    'tensorguard/fleet/fleet/robot_1/encrypted_updates',    # the reserved site
    'tensorguard/fleet/site_a/robot_1/secrets',             # no such channel
    'tensorguard/fleet/site_a/*/encrypted_updates',         # a wildcard is no concrete key
    'tensorguard/fleet/site_a/robot_1/encrypted_updates/x',
    'tensorguard/fleet/fleet/site_sum',                     # a site sum of the reserved site
    'tensorguard/fleet/*/site_sum',                         # a wildcard is no concrete key
    'tensorguard/fleet/site_a/robot_1/site_sum',            # a site sum under a robot
])
def test_parse_refuses_keys_outside_the_scheme(key):
    with pytest.raises(KeySchemeError):
        KeySpace('fleet').parse(key)


def test_a_site_is_granted_exactly_its_robots_keys_and_the_fleet_keys():
    keys = KeySpace('fleet')
    publications = keys.site_publications('site_a', ['robot_1', 'robot_2'])
    assert sorted(publications) == sorted(f'tensorguard/fleet/site_a/{robot}/{channel.name}'
                                          for robot in ('robot_1', 'robot_2') for channel in TO_SERVER)
    assert keys.site_subscriptions('site_a') == [
        'tensorguard/fleet/fleet/round_config', 'tensorguard/fleet/fleet/model_updates',
        'tensorguard/fleet/fleet/fleet_status', 'tensorguard/fleet/site_a/*/status',
        'tensorguard/fleet/site_a/delivered']
    assert keys.site_publications('site_a', ['robot_1'], aggregating=True)[-1] == 'tensorguard/fleet/site_a/site_sum'
    assert 'tensorguard/fleet/site_a/site_sum' not in publications  # granted only to an aggregating site
