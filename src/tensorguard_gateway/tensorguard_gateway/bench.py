"""``bench_gateway``: time large messages across the gateway against direct DDS on this machine.

    ros2 run tensorguard_gateway bench_gateway --sizes-mib 1 8 --repeats 10 [--report FILE.json]

Starts a throw-away fleet network (a fresh fleet CA, the router, a server gateway in domain S and a site
gateway in domain S+1, each its own process, mutual TLS on localhost), then publishes messages of each
size on the round-config topic in domain S, one at a time, and times from just before `publish` to the
arrival of the serialized message at a raw subscriber in domain S (direct DDS) and at one in domain S+1
(DDS -> server gateway -> router -> site gateway -> DDS). Both subscribers get the same publication, so
the two paths are timed under the same load. Updates take the same path in the other direction, plus the
site gateway's decode of the signed package (`tensorguard bench` times `UpdatePackage.deserialize`).
Prints per size the median and range of each path and writes them with the machine and date as JSON.
"""
from __future__ import annotations

import argparse
import array
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from tensorguard_crypto.fleet import FleetPaths, provision_server
from tensorguard_msgs.msg import RoundConfig
from tensorguard_ros import qos, topics

from .local_network import LocalNetwork

MIB = 1024 * 1024


class Arrivals:
    """Arrival times of raw messages at one subscriber, in order."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.event = threading.Condition()

    def record(self, _raw: bytes) -> None:
        """Subscription callback: note the arrival time."""
        with self.event:
            self.times.append(time.perf_counter())
            self.event.notify_all()

    def wait(self, count: int, timeout: float) -> float:
        """The time of arrival number `count` (1-based); `RuntimeError` after `timeout` seconds."""
        with self.event:
            if not self.event.wait_for(lambda: len(self.times) >= count, timeout):
                raise RuntimeError(f'message {count} did not arrive within {timeout:.0f} s')
            return self.times[count - 1]


def _node(domain: int, name: str) -> tuple[Node, Context, SingleThreadedExecutor]:
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    node = Node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    return node, context, executor


def run(sizes: list[int], repeats: int, server_domain: int, site_domain: int, timeout: float) -> dict:
    """Time `repeats` messages of each size on both paths (module docstring); returns the report."""
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        passphrase = secrets.token_urlsafe(24).encode()
        fleet = FleetPaths(tmp / 'fleet')
        provision_server(fleet, passphrase)
        network = LocalNetwork(tmp, {'site_a': ['robot_1']}, fleet, passphrase)
        network.start_router()
        gateways = [subprocess.Popen(network.gateway_command(mode, site), stdout=open(tmp / f'{mode}.log', 'w'),
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, 'ROS_DOMAIN_ID': str(domain)})
                    for mode, site, domain in (('server', '', server_domain), ('site', 'site_a', site_domain))]
        server, server_context, server_executor = _node(server_domain, 'bench_gateway_server')
        site, site_context, site_executor = _node(site_domain, 'bench_gateway_site')
        try:
            direct, bridged = Arrivals(), Arrivals()
            publisher = server.create_publisher(RoundConfig, topics.ROUND_CONFIG, qos.LATCHED)
            server.create_subscription(RoundConfig, topics.ROUND_CONFIG, direct.record, qos.LATCHED, raw=True)
            site.create_subscription(RoundConfig, topics.ROUND_CONFIG, bridged.record, qos.LATCHED, raw=True)
            sent = 0
            rows = []
            for size in [1024, *sizes]:  # the first, small message waits for the gateways to link up
                direct_s, bridged_s = [], []
                for _ in range(1 if size == 1024 else repeats):
                    sent += 1
                    msg = RoundConfig(round_id=sent, package=array.array('B', os.urandom(size)))
                    start = time.perf_counter()
                    publisher.publish(msg)
                    direct_s.append(direct.wait(sent, timeout) - start)
                    bridged_s.append(bridged.wait(sent, 120.0 if size == 1024 else timeout) - start)
                if size != 1024:
                    rows.append({'bytes': size, 'repeats': repeats, 'direct_dds_s': _summary(direct_s),
                                 'gateway_s': _summary(bridged_s)})
        finally:
            for node, context, executor in ((server, server_context, server_executor),
                                            (site, site_context, site_executor)):
                executor.shutdown()
                node.destroy_node()
                context.try_shutdown()
            for gateway in gateways:
                os.killpg(gateway.pid, signal.SIGINT)
            for gateway in gateways:
                gateway.wait(timeout=20)
            network.stop_router()
    return {'date': datetime.now(timezone.utc).isoformat(timespec='seconds'), 'machine': platform.platform(),
            'cpus': os.cpu_count(), 'load_average_1min': os.getloadavg()[0], 'rows': rows}


def _summary(seconds: list[float]) -> dict:
    return {'median': statistics.median(seconds), 'min': min(seconds), 'max': max(seconds)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON report if asked."""
    parser = argparse.ArgumentParser(prog='bench_gateway', description=__doc__.splitlines()[0])
    parser.add_argument('--sizes-mib', type=float, nargs='+', default=[1.0, 8.0])
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--server-domain', type=int, default=int(os.environ.get('ROS_DOMAIN_ID', '0')))
    parser.add_argument('--site-domain', type=int, help='default: the server domain + 1')
    parser.add_argument('--timeout', type=float, default=60.0, help='seconds one message may take')
    parser.add_argument('--report', type=Path, help='JSON report to write')
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(size <= 0 for size in args.sizes_mib):
        parser.error('--repeats and --sizes-mib must be positive')
    site_domain = args.server_domain + 1 if args.site_domain is None else args.site_domain
    report = run([int(size * MIB) for size in args.sizes_mib], args.repeats, args.server_domain, site_domain,
                 args.timeout)
    print(f'bench_gateway {report["date"]} on {report["machine"]}, {report["cpus"]} CPUs, '
          f'load {report["load_average_1min"]:.1f}; seconds from publish to arrival, median (min-max) of '
          f'{args.repeats}')
    print(f'{"size":>9}  {"direct DDS":>24}  {"through the gateway":>24}')
    for row in report['rows']:
        cells = [f'{s["median"]:.3f} ({s["min"]:.3f}-{s["max"]:.3f})' for s in (row['direct_dds_s'], row['gateway_s'])]
        print(f'{row["bytes"] / MIB:>5.1f} MiB  {cells[0]:>24}  {cells[1]:>24}')
    if args.report:
        args.report.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
