"""Shared helpers of the gateway tests: certificates from a fleet's gateway CA, the router in its own
process, and the command line of a gateway node."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tensorguard_crypto import gateway_certs
from tensorguard_crypto.fleet import FleetPaths, provision_server

PASSPHRASE = b'gateway-test-passphrase'


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
        time.sleep(0.1)


def free_port() -> int:
    """A TCP port free on localhost now."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


class GatewayNetwork:
    """Certificates of the router, the fleet server's gateway and each site's, and the router process."""

    def __init__(self, tmp: Path, sites: dict[str, list[str]], fleet: FleetPaths | None = None,
                 passphrase: bytes = PASSPHRASE) -> None:
        if fleet is None:
            fleet = FleetPaths(tmp / 'fleet')
            provision_server(fleet, passphrase)
        self.certs = tmp / 'gateway_certs'
        self.sites = sites
        gateway_certs.issue_certificate(fleet, passphrase, gateway_certs.ROUTER_NAME, self.certs,
                                        ['localhost', '127.0.0.1'])
        gateway_certs.issue_certificate(fleet, passphrase, gateway_certs.SERVER_NAME, self.certs)
        for site in sites:
            gateway_certs.issue_certificate(fleet, passphrase, gateway_certs.site_common_name(site), self.certs)
        self.endpoint = f'tls/localhost:{free_port()}'
        self.config = tmp / 'gateway_network.yaml'
        self.config.write_text(yaml.safe_dump({
            'fleet': 'fleet', 'listen': [self.endpoint.replace('localhost', '127.0.0.1')], 'sites': sites,
            'tls': {'root_ca_certificate': f'{self.certs.name}/ca.crt',
                    'certificate': f'{self.certs.name}/router.crt', 'private_key': f'{self.certs.name}/router.key'}}))
        self.log = tmp / 'router.log'
        self.router: subprocess.Popen | None = None

    def start_router(self) -> None:
        """Start `gateway_router` with the network file (access decisions logged, no colour codes)."""
        env = {key: value for key, value in os.environ.items() if key != 'RUST_LOG'}
        self.router = subprocess.Popen(
            [sys.executable, '-m', 'tensorguard_gateway.router', '--config', str(self.config)],
            stdout=open(self.log, 'w'), stderr=subprocess.STDOUT, env={**env, 'NO_COLOR': '1'},
            start_new_session=True)
        wait_for(lambda: 'listening on' in self.log.read_text(), 30, 'the router to listen')

    def stop_router(self) -> str:
        """SIGINT the router, wait for a clean exit, and return its log."""
        if self.router is not None and self.router.poll() is None:
            os.killpg(self.router.pid, signal.SIGINT)
            assert self.router.wait(timeout=20) == 0
        return self.log.read_text()

    def tls(self, name: str) -> dict[str, str]:
        """The TLS parameters of the gateway holding certificate `name` (e.g. ``site_site_a``)."""
        return {'root_ca_certificate': str(self.certs / 'ca.crt'), 'certificate': str(self.certs / f'{name}.crt'),
                'private_key': str(self.certs / f'{name}.key')}

    def gateway_command(self, mode: str, site: str = '', namespace: str = '/') -> list[str]:
        """The command line of a gateway node of this network (site mode: `site` with its robots)."""
        parameters = {'mode': mode, 'connect': json.dumps([self.endpoint]),
                      **self.tls(f'site_{site}' if site else gateway_certs.SERVER_NAME)}
        if site:
            parameters.update(site_id=site, robots=json.dumps(self.sites[site]))
        return [sys.executable, '-m', 'tensorguard_gateway.gateway_node', '--ros-args', '-r', f'__ns:={namespace}',
                *(arg for key, value in parameters.items() for arg in ('-p', f'{key}:={value}'))]
