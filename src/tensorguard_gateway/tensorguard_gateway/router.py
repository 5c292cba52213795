"""``gateway_router``: the fleet's Zenoh router, a Python Zenoh session in router mode (no zenohd needed).

    ros2 run tensorguard_gateway gateway_router --config config/gateway_network.yaml

It listens only on the configured TLS endpoints, requires a client certificate of the fleet's gateway
CA and enforces the access control network.py derives from the sites listed in the file. Access
decisions are logged to stderr (``RUST_LOG`` defaults to `network.ACL_LOG_FILTER`; a denial reads
``... is unauthorized to Put (ingress) on <key>``). SIGINT or SIGTERM closes the session and exits.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from pathlib import Path

from .network import ACL_LOG_FILTER, NetworkConfigError, load_router_config

DEFAULT_CONFIG = Path(os.environ.get('TENSORGUARD_ROOT', '.')) / 'config' / 'gateway_network.yaml'


def main(argv: list[str] | None = None) -> int:
    """Run the router until SIGINT or SIGTERM; exit code 2 for an unusable configuration."""
    parser = argparse.ArgumentParser(prog='gateway_router', description=__doc__.splitlines()[0])
    parser.add_argument('--config', type=Path, default=DEFAULT_CONFIG, help='gateway_network.yaml')
    parser.add_argument('--listen', action='append', help="listen endpoint (tls/HOST:PORT), replaces the file's")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_router_config(args.config)
        if args.listen:
            config = dataclasses.replace(config, listen=args.listen)
        settings = config.zenoh_config()
    except NetworkConfigError as error:
        print(f'gateway_router: error: {error}', file=sys.stderr)
        return 2
    os.environ.setdefault('RUST_LOG', ACL_LOG_FILTER)
    import zenoh

    zenoh.init_log_from_env_or('warn')
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    session = zenoh.open(settings)
    try:
        print(f'gateway_router: fleet {config.fleet}, listening on {", ".join(config.listen)} (mutual TLS), '
              f'sites {", ".join(f"{s} {r}" for s, r in sorted(config.sites.items())) or "none"}', flush=True)
        stop.wait()
    finally:
        session.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
