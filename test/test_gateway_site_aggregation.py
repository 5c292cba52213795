"""Site aggregation across the Zenoh gateway, in real processes (docs/site-aggregation.md): the cross-site
fleet of test_gateway_integration.py (a site domain with 2 robots, the server domain, joined only by the
gateways and the router over mutual TLS) with the switch on in the aggregator and both gateways, and
site_a's keys from `tensorguard fleet site-aggregator-key`. The site gateway sums both robots' updates
and sends one signed SitePartialSum: the round completes with both robots, the server domain receives
exactly that one sum and no robot's update, and both robots apply the new model.

Domains as in test_gateway_integration.py: run alone with ``ROS_DOMAIN_ID=<id>
TENSORGUARD_SITE_DOMAIN_ID=<other id> scripts/test test/test_gateway_site_aggregation.py``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_gateway_integration import ROBOTS, cross_site_fleet, finish_round, start_round  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]


@pytest.fixture(scope='module')
def aggregating_site(tmp_path_factory):
    with cross_site_fleet(tmp_path_factory.mktemp('gateway_site_aggregation'), None, site_aggregation=True) as (
            server, site, _link):
        yield server, site


def test_the_server_domain_gets_one_site_sum_and_no_update_and_the_round_completes_with_both_robots(
        aggregating_site):
    server, site = aggregating_site
    result = start_round(server, site)
    started = time.monotonic()
    outcome = finish_round(server, site, result)
    assert sorted(robot for _, robot, _ in site.updates) == ROBOTS, 'each robot published its update in its site'
    assert [site_id for _, site_id, _ in server.site_sums] == ['site_a'], 'exactly one site sum reached the server'
    assert server.updates == [], "a robot's own update reached the server domain"
    print(f'round {outcome.round_id} with {len(outcome.participants)} robots from one site sum, delivered '
          f'{server.site_sums[0][0] - started:.1f} s after the goal')
