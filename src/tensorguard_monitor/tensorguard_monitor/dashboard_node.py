"""``tensorguard dashboard`` / ``ros2 run tensorguard_monitor dashboard``: the fleet's web dashboard.

One process: an rclpy node (``/tensorguard/dashboard``) whose `FleetStateFeed` folds the fleet's
status topics into a `FleetState`, spun in a background thread, and the aiohttp app of
`tensorguard_monitor.web` serving that model (page, server-sent events, ``/metrics``) on
``--host``/``--port`` (default 127.0.0.1:8000, localhost only). Read-only unless ``--token-file``
names a mode-0600 file holding the operator token (``--new-token-file F`` creates one); only then
are the ``RunRound`` and ``RevokeRobot`` clients created.

It imports neither torch nor the learning library, so it stays small on a fleet server.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import rclpy
from aiohttp import web
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.utilities import remove_ros_args

from tensorguard_monitor.fleet_actions import FleetActions
from tensorguard_monitor.fleet_state import FleetState
from tensorguard_monitor.ros_feed import FleetStateFeed
from tensorguard_monitor.web import TokenFileError, WebSettings, create_app, read_token_file, write_token_file

EXIT_USAGE = 2


def build_parser(prog: str = 'dashboard') -> argparse.ArgumentParser:
    """The command line of the dashboard."""
    parser = argparse.ArgumentParser(prog=prog, description='Serve the fleet web dashboard (live status, plots, '
                                     'operator actions) and Prometheus /metrics; read-only unless --token-file.')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to bind (default 127.0.0.1; anything else exposes the fleet status)')
    parser.add_argument('--port', type=int, default=8000, help='TCP port (default 8000)')
    parser.add_argument('--token-file', type=Path, default=None,
                        help='mode-0600 file holding the token that enables run-round and revoke (default: read-only)')
    parser.add_argument('--new-token-file', type=Path, default=None, metavar='FILE',
                        help='create FILE (mode 0600) with a new random token, then exit')
    parser.add_argument('--allow-host', action='append', default=[], metavar='NAME',
                        help='another host name clients may use in the Host header (repeatable)')
    parser.add_argument('--silent-after', type=float, default=5.0,
                        help='seconds without a status after which a robot is shown as silent (default 5)')
    return parser


def run(args: argparse.Namespace, ros_args: list[str] | None = None) -> int:
    """Serve the dashboard until SIGINT or SIGTERM."""
    token = read_token_file(args.token_file) if args.token_file else None
    if not _is_loopback(args.host):
        print(f'warning: serving on {args.host}: anyone who can reach port {args.port} sees the fleet status',
              file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format='[dashboard] %(message)s')
    state = FleetState(silent_after_s=args.silent_after)
    rclpy.init(args=ros_args)
    node = Node('dashboard', namespace='/tensorguard')
    feed = FleetStateFeed(node, state)
    actions = FleetActions(node, state) if token else None
    executor = SingleThreadedExecutor()
    executor.add_node(node)

    def spin() -> None:
        try:
            executor.spin()
        except ExternalShutdownException:
            pass

    spinner = threading.Thread(target=spin, name='rclpy', daemon=True)
    spinner.start()
    settings = WebSettings(host=args.host, token=token, allowed_hosts=tuple(args.allow_host))
    try:
        web.run_app(create_app(state, actions, settings), host=args.host, port=args.port, access_log=None,
                    shutdown_timeout=5.0,
                    print=lambda text: print(f'[dashboard] {text} ({"actions enabled" if token else "read-only"})',
                                             flush=True))
    finally:
        executor.shutdown()
        spinner.join(timeout=5.0)
        feed.destroy()
        if actions:
            actions.destroy()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == 'localhost'


def command(argv: Sequence[str], prog: str = 'tensorguard dashboard') -> int:
    """Serve the fleet's web dashboard (read-only unless --token-file); the ``tensorguard dashboard`` command."""
    args = build_parser(prog).parse_args(remove_ros_args([prog, *argv])[1:])
    if args.new_token_file:
        try:
            write_token_file(args.new_token_file)
        except OSError as exc:
            print(f'error: cannot create {args.new_token_file}: {exc.strerror}', file=sys.stderr)
            return EXIT_USAGE
        print(f'token written to {args.new_token_file} (mode 0600); start with --token-file {args.new_token_file}')
        return 0
    try:
        return run(args, [prog, *argv])
    except TokenFileError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``ros2 run tensorguard_monitor dashboard [--host H] [--port P] [--token-file F]``."""
    return command(sys.argv[1:] if argv is None else argv, prog='dashboard')


if __name__ == '__main__':
    sys.exit(main())
