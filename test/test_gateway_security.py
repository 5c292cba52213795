"""The fleet router as operators run it (`gateway_router` in its own process, mutual TLS, access control)
against attackers: a gateway whose certificate is not from the fleet's CA cannot connect, and a site that
publishes another site's robot key, forges a round config or listens to another site's updates is denied,
visibly in the router's log, while its own robots' keys pass; and a site aggregating its robots' updates may
put its own site sum, not another site's, while a site not listed for site aggregation may put none."""
import sys
import time
from pathlib import Path

import pytest
import zenoh

from tensorguard_crypto import gateway_certs
from tensorguard_crypto.fleet import FleetPaths, provision_server
from tensorguard_gateway.network import TlsFiles, client_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src' / 'tensorguard_gateway' / 'test'))
from gateway_test_support import PASSPHRASE, GatewayNetwork, wait_for  # noqa: E402

SITES = {'site_a': ['robot_1', 'robot_2'], 'site_b': ['robot_3']}


class Network(GatewayNetwork):
    """The router running, and the certificate of an outsider (another fleet's CA) claiming site_a."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, SITES, site_aggregation=('site_a',))
        outsider = FleetPaths(tmp / 'outsider')
        provision_server(outsider, PASSPHRASE)
        self.outsider = tmp / 'outsider_certs'
        gateway_certs.issue_certificate(outsider, PASSPHRASE, gateway_certs.site_common_name('site_a'), self.outsider)
        self.start_router()

    def session(self, name: str, certs: Path | None = None) -> zenoh.Session:
        """A client session presenting `name`'s certificate from `certs` and trusting the fleet's CA."""
        certs = certs or self.certs
        return zenoh.open(client_config([self.endpoint], TlsFiles(
            str(self.certs / 'ca.crt'), str(certs / f'{name}.crt'), str(certs / f'{name}.key'))))


@pytest.fixture(scope='module')
def network(tmp_path_factory):
    running = Network(tmp_path_factory.mktemp('gateway_security'))
    try:
        yield running
    finally:
        running.stop_router()


def test_a_gateway_with_a_certificate_not_from_the_fleet_ca_cannot_connect(network):
    with pytest.raises(zenoh.ZError, match='Unable to connect'):
        network.session('site_site_a', network.outsider)
    wait_for(lambda: 'invalid peer certificate: UnknownIssuer' in network.log.read_text(), 10,
             "the router's log of the refused certificate")


def test_a_site_may_put_only_its_own_site_sum_and_only_if_it_aggregates(network):
    server, site_a, site_b = (network.session(name) for name in ('fleet-server', 'site_site_a', 'site_site_b'))
    try:
        at_server = []
        server.declare_subscriber('tensorguard/fleet/*/site_sum', lambda sample: at_server.append(
            (str(sample.key_expr), sample.payload.to_bytes())))
        own = site_a.declare_publisher('tensorguard/fleet/site_a/site_sum',
                                       congestion_control=zenoh.CongestionControl.BLOCK)
        wait_for(lambda: own.matching_status.matching, 10, "the server's site-sum subscription to reach site_a")
        site_a.put('tensorguard/fleet/site_b/site_sum', b'a sum in site_b name, put by site_a')
        site_b.put('tensorguard/fleet/site_b/site_sum', b'a sum of site_b, which does not aggregate')
        own.put(b'the sum of site_a')
        wait_for(lambda: at_server, 10, "site_a's own sum at the server")
        time.sleep(1.0)  # anything denied would have arrived by now
        assert at_server == [('tensorguard/fleet/site_a/site_sum', b'the sum of site_a')]
    finally:
        for session in (site_a, site_b, server):
            session.close()
    def denied(site: str) -> bool:
        return any(f'CertCommonName(site:{site})' in line and line.endswith(
            'is unauthorized to Put (ingress) on tensorguard/fleet/site_b/site_sum')
            for line in network.log.read_text().splitlines())

    wait_for(lambda: denied('site_a') and denied('site_b'), 10, "the router's log of both denied site sums")


def test_a_site_is_denied_other_sites_keys_and_the_fleet_keys_visibly_while_its_own_pass(network):
    server, site_a, site_b, listener_a = (network.session(name) for name in (
        'fleet-server', 'site_site_a', 'site_site_b', 'site_site_a'))
    try:
        at_server, at_site_a, at_site_b = [], [], []
        server.declare_subscriber('tensorguard/fleet/*/*/encrypted_updates',
                                  lambda sample: at_server.append(str(sample.key_expr)))
        # Another session of site_a listens: a session's own puts reach its own subscribers without the router.
        listener_a.declare_subscriber('tensorguard/fleet/site_b/*/encrypted_updates',
                                  lambda sample: at_site_a.append(str(sample.key_expr)))
        site_b.declare_subscriber('tensorguard/fleet/fleet/round_config',
                                  lambda sample: at_site_b.append(sample.payload.to_bytes()))
        own = site_a.declare_publisher('tensorguard/fleet/site_a/robot_1/encrypted_updates',
                                       congestion_control=zenoh.CongestionControl.BLOCK)
        wait_for(lambda: own.matching_status.matching, 10, "the server's subscription to reach site_a")
        site_a.put('tensorguard/fleet/site_b/robot_3/encrypted_updates', b'update in site_b robot_3 name')
        site_a.put('tensorguard/fleet/fleet/round_config', b'a round config forged by site_a')
        site_b.put('tensorguard/fleet/site_b/robot_3/encrypted_updates', b'robot_3 update')
        own.put(b'robot_1 update')
        wait_for(lambda: len(at_server) == 2, 10, 'the two permitted updates at the server')
        time.sleep(1.0)  # anything denied would have arrived by now
        assert sorted(at_server) == ['tensorguard/fleet/site_a/robot_1/encrypted_updates',
                                     'tensorguard/fleet/site_b/robot_3/encrypted_updates']
        assert at_site_a == [] and at_site_b == []
    finally:
        for session in (site_a, site_b, listener_a, server):
            session.close()
    log = network.stop_router()
    denial = 'CertCommonName(site:site_a)+Transport(Tls)+{zid} is unauthorized to Put (ingress) on {key}'
    for key in ('tensorguard/fleet/site_b/robot_3/encrypted_updates', 'tensorguard/fleet/fleet/round_config'):
        assert any(line.endswith(denial.format(zid=line.split('+')[-1].split(' ')[0], key=key))
                   for line in log.splitlines()), f'no denial of {key} in the router log'
    assert 'is unauthorized to Declare Subscriber (ingress) on tensorguard/fleet/site_b/*/encrypted_updates' in log
