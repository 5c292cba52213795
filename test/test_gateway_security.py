"""The fleet router as operators run it (`gateway_router` in its own process, mutual TLS, access control)
against attackers: a gateway whose certificate is not from the fleet's CA cannot connect, and a site that
publishes another site's robot key, forges a round config or listens to another site's updates is denied,
visibly in the router's log, while its own robots' keys pass."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
import zenoh
from tensorguard_gateway.network import TlsFiles, client_config

from tensorguard_crypto import gateway_certs
from tensorguard_crypto.fleet import FleetPaths, provision_server

PASSPHRASE = b'gateway-security-passphrase'
SITES = {'site_a': ['robot_1', 'robot_2'], 'site_b': ['robot_3']}


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


class Network:
    """A router process and the certificates of two sites, the fleet server and an outsider."""

    def __init__(self, tmp: Path) -> None:
        paths = FleetPaths(tmp / 'fleet')
        provision_server(paths, PASSPHRASE)
        self.certs = tmp / 'certs'
        issue = lambda paths, name, out, hosts=(): gateway_certs.issue_certificate(  # noqa: E731
            paths, PASSPHRASE, name, out, list(hosts))
        issue(paths, gateway_certs.ROUTER_NAME, self.certs, ['localhost', '127.0.0.1'])
        issue(paths, gateway_certs.SERVER_NAME, self.certs)
        for site in SITES:
            issue(paths, gateway_certs.site_common_name(site), self.certs)
        outsider = FleetPaths(tmp / 'outsider')
        provision_server(outsider, PASSPHRASE)
        issue(outsider, gateway_certs.site_common_name('site_a'), tmp / 'outsider_certs')
        self.outsider = tmp / 'outsider_certs'
        self.endpoint = f'tls/localhost:{free_port()}'
        config = tmp / 'gateway_network.yaml'
        config.write_text(yaml.safe_dump({
            'fleet': 'fleet', 'listen': [self.endpoint.replace('localhost', '127.0.0.1')], 'sites': SITES,
            'tls': {'root_ca_certificate': 'certs/ca.crt', 'certificate': 'certs/router.crt',
                    'private_key': 'certs/router.key'}}))
        self.log = tmp / 'router.log'
        env = {key: value for key, value in os.environ.items() if key != 'RUST_LOG'}
        self.router = subprocess.Popen([sys.executable, '-m', 'tensorguard_gateway.router', '--config', str(config)],
                                       stdout=open(self.log, 'w'), stderr=subprocess.STDOUT,
                                       env={**env, 'NO_COLOR': '1'}, start_new_session=True)
        wait_for(lambda: 'listening on' in self.log.read_text(), 30, 'the router to listen')

    def session(self, name: str, certs: Path | None = None) -> zenoh.Session:
        """A client session presenting `name`'s certificate from `certs` and trusting the fleet's CA."""
        certs = certs or self.certs
        return zenoh.open(client_config([self.endpoint], TlsFiles(
            str(self.certs / 'ca.crt'), str(certs / f'{name}.crt'), str(certs / f'{name}.key'))))

    def close(self) -> str:
        os.killpg(self.router.pid, signal.SIGINT)
        assert self.router.wait(timeout=20) == 0
        return self.log.read_text()


@pytest.fixture(scope='module')
def network(tmp_path_factory):
    running = Network(tmp_path_factory.mktemp('gateway_security'))
    try:
        yield running
    finally:
        if running.router.poll() is None:
            running.close()


def test_a_gateway_with_a_certificate_not_from_the_fleet_ca_cannot_connect(network):
    with pytest.raises(zenoh.ZError, match='Unable to connect'):
        network.session('site_site_a', network.outsider)
    wait_for(lambda: 'invalid peer certificate: UnknownIssuer' in network.log.read_text(), 10,
             "the router's log of the refused certificate")


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
    log = network.close()
    denial = 'CertCommonName(site:site_a)+Transport(Tls)+{zid} is unauthorized to Put (ingress) on {key}'
    for key in ('tensorguard/fleet/site_b/robot_3/encrypted_updates', 'tensorguard/fleet/fleet/round_config'):
        assert any(line.endswith(denial.format(zid=line.split('+')[-1].split(' ')[0], key=key))
                   for line in log.splitlines()), f'no denial of {key} in the router log'
    assert 'is unauthorized to Declare Subscriber (ingress) on tensorguard/fleet/site_b/*/encrypted_updates' in log
