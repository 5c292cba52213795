"""A fleet network on this machine: gateway certificates from a fleet's CA, the router in its own process,
and the command lines of gateway nodes (ROS-free). The gateway tests, the integration test and
`bench_gateway` use it; an operator can use it to try the gateway before deploying one.
"""
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
from tensorguard_crypto.fleet import FleetPaths


def free_port() -> int:
    """A TCP port free on localhost now."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


class LocalNetwork:
    """Certificates of the router, the fleet server's gateway and each site's (issued from `fleet`'s gateway
    CA into ``<directory>/gateway_certs``), a network file for a router on a free port of `host` (granting the
    sites in `site_aggregation` their site-sum key), and the router."""

    def __init__(self, directory: Path, sites: dict[str, list[str]], fleet: FleetPaths, passphrase: bytes,
                 host: str = '127.0.0.1', site_aggregation: tuple[str, ...] = ()) -> None:
        self.certs = directory / 'gateway_certs'
        self.sites = sites
        gateway_certs.issue_certificate(fleet, passphrase, gateway_certs.ROUTER_NAME, self.certs,
                                        sorted({'localhost', '127.0.0.1', host}))
        gateway_certs.issue_certificate(fleet, passphrase, gateway_certs.SERVER_NAME, self.certs)
        for site in sites:
            gateway_certs.issue_certificate(fleet, passphrase, gateway_certs.site_common_name(site), self.certs)
        port = free_port()
        self.endpoint = f'tls/{"localhost" if host == "127.0.0.1" else host}:{port}'
        self.config = directory / 'gateway_network.yaml'
        self.config.write_text(yaml.safe_dump({
            'fleet': 'fleet', 'listen': [f'tls/{host}:{port}'], 'sites': sites,
            **({'site_aggregation': list(site_aggregation)} if site_aggregation else {}),
            'tls': {'root_ca_certificate': f'{self.certs.name}/ca.crt',
                    'certificate': f'{self.certs.name}/router.crt', 'private_key': f'{self.certs.name}/router.key'}}))
        self.log = directory / 'router.log'
        self.router: subprocess.Popen | None = None

    def start_router(self, prefix: tuple[str, ...] = (), timeout: float = 30.0) -> None:
        """Start `gateway_router` with the network file (access decisions logged, no colour codes), after
        `prefix` (e.g. ``ip netns exec NAME``), and wait until it listens."""
        env = {key: value for key, value in os.environ.items() if key != 'RUST_LOG'}
        self.router = subprocess.Popen(
            [*prefix, sys.executable, '-m', 'tensorguard_gateway.router', '--config', str(self.config)],
            stdout=open(self.log, 'w'), stderr=subprocess.STDOUT, env={**env, 'NO_COLOR': '1'},
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while 'listening on' not in self.log.read_text():
            if self.router.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'the router did not start (log: {self.log})')
            time.sleep(0.1)

    def stop_router(self) -> str:
        """SIGINT the router, wait for it to exit, and return its log (empty if it never started)."""
        if self.router is not None and self.router.poll() is None:
            os.killpg(self.router.pid, signal.SIGINT)
            self.router.wait(timeout=20)
        return self.log.read_text() if self.router is not None else ''

    def tls(self, name: str) -> dict[str, str]:
        """The TLS parameters of the gateway holding certificate `name` (e.g. ``site_site_a``)."""
        return {'root_ca_certificate': str(self.certs / 'ca.crt'), 'certificate': str(self.certs / f'{name}.crt'),
                'private_key': str(self.certs / f'{name}.key')}

    def gateway_command(self, mode: str, site: str = '', namespace: str = '/',
                        extra: dict[str, str] | None = None) -> list[str]:
        """The command line of a gateway node of this network (site mode: `site` with its robots), with the
        `extra` parameters (e.g. site aggregation's)."""
        parameters = {'mode': mode, 'connect': json.dumps([self.endpoint]),
                      **self.tls(f'site_{site}' if site else gateway_certs.SERVER_NAME)}
        if site:
            parameters.update(site_id=site, robots=json.dumps(self.sites[site]))
        parameters.update(extra or {})
        return [sys.executable, '-m', 'tensorguard_gateway.gateway_node', '--ros-args', '-r', f'__ns:={namespace}',
                *(arg for key, value in parameters.items() for arg in ('-p', f'{key}:={value}'))]
