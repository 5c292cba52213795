"""Shared helpers of the gateway tests: a fleet network with its own fresh fleet, and polling."""
from __future__ import annotations

import time
from pathlib import Path

from tensorguard_crypto.fleet import FleetPaths, provision_server
from tensorguard_gateway.local_network import LocalNetwork

PASSPHRASE = b'gateway-test-passphrase'


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
        time.sleep(0.1)


class GatewayNetwork(LocalNetwork):
    """A `LocalNetwork` of a fleet provisioned for the test (or of `fleet`, if given)."""

    def __init__(self, tmp: Path, sites: dict[str, list[str]], fleet: FleetPaths | None = None,
                 passphrase: bytes = PASSPHRASE, host: str = '127.0.0.1',
                 site_aggregation: tuple[str, ...] = ()) -> None:
        if fleet is None:
            fleet = FleetPaths(tmp / 'fleet')
            provision_server(fleet, passphrase)
        super().__init__(tmp, sites, fleet, passphrase, host, site_aggregation)

    def stop_router(self) -> str:
        """Stop the router, check it exited cleanly, and return its log."""
        log = super().stop_router()
        assert self.router is None or self.router.returncode == 0
        return log
