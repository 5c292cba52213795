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

``--wan 10mbit`` puts the router in a network namespace behind a veth pair shaped with `tbf` in both
directions (wan.py, needs root); ``--cut-s 10`` then also cuts that link for 10 s while the site sends
five signed outcome reports (the queued, reliable channel updates use) and the server a new round config
(1 KiB, or ``--cut-config-mib`` MiB: a large one is still being put when the link goes down), and reports
what arrived after the link came back: lost, duplicated, in order, and how long it took.
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

from tensorguard_crypto import wire
from tensorguard_crypto.fleet import FleetPaths, provision_server
from tensorguard_crypto.identity import Identity
from tensorguard_msgs.msg import OutcomeReport, RoundConfig
from tensorguard_ros import qos, topics

from .local_network import LocalNetwork
from .wan import ShapedLink

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


def run(sizes: list[int], repeats: int, server_domain: int, site_domain: int, timeout: float,
        link: ShapedLink | None = None, cut_s: float = 0.0, cut_config_bytes: int = 1024) -> dict:
    """Time `repeats` messages of each size on both paths (module docstring), the router behind `link` if
    given, then with `cut_s` the link-cut trial (`_cut_trial`); returns the report."""
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        passphrase = secrets.token_urlsafe(24).encode()
        fleet = FleetPaths(tmp / 'fleet')
        provision_server(fleet, passphrase)
        network = LocalNetwork(tmp, {'site_a': ['robot_1']}, fleet, passphrase,
                               link.remote if link else '127.0.0.1')
        network.start_router(link.prefix if link else ())
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
            cut = (_cut_trial(server, site, publisher, bridged, sent, link, cut_s, timeout, cut_config_bytes)
                   if link and cut_s else None)
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
            'cpus': os.cpu_count(), 'load_average_1min': os.getloadavg()[0],
            'link': f'tbf {link.rate} veth into a network namespace' if link else 'loopback', 'rows': rows,
            'cut': cut}


def _cut_trial(server: Node, site: Node, config_publisher, configs: Arrivals, sent: int, link: ShapedLink,
               cut_s: float, timeout: float, config_bytes: int, reports: int = 5) -> dict:
    """Cut the link for `cut_s` seconds; meanwhile the site publishes `reports` signed outcome reports (spread
    over the cut) and the server one round config of `config_bytes`; count what arrives after the link is
    restored."""
    robot = Identity.generate('robot_1')
    received: list[int] = []
    arrived: list[float] = []
    server.create_subscription(OutcomeReport, topics.OUTCOME_REPORTS, lambda msg: (received.append(
        wire.OutcomeReport.deserialize(bytes(msg.package)).sequence), arrived.append(time.perf_counter())),
        qos.UPDATES)
    publisher = site.create_publisher(OutcomeReport, topics.OUTCOME_REPORTS, qos.UPDATES)
    time.sleep(2.0)  # the server gateway's writer and this reader match
    link.cut()
    cut_at = time.perf_counter()
    for sequence in range(1, reports + 1):
        record = wire.OutcomeReport(robot_id=robot.key_id, sequence=sequence, model_version=1, episodes=sequence,
                                    successes=0, created_at=time.time()).signed_by(robot).serialize()
        publisher.publish(OutcomeReport(robot_id=robot.key_id, package=array.array('B', record)))
        if sequence == reports // 2 + 1:
            config_publisher.publish(RoundConfig(round_id=sent + 1, package=array.array('B', os.urandom(config_bytes))))
        time.sleep(cut_s / (reports + 1))
    time.sleep(max(0.0, cut_s - (time.perf_counter() - cut_at)))
    received_during_cut = len(received)
    link.restore()
    restored = time.perf_counter()
    try:
        config_s: float | None = configs.wait(sent + 1, timeout) - restored
    except RuntimeError:  # reported as not arrived; the reports are still counted
        config_s = None
    deadline = time.monotonic() + timeout
    while len(received) < reports and time.monotonic() < deadline:
        time.sleep(0.05)
    reports_s = arrived[reports - 1] - restored if len(arrived) >= reports else None
    time.sleep(5.0)  # duplicates would arrive by now
    return {'cut_s': cut_s, 'reports_sent': reports, 'received_during_cut': received_during_cut,
            'reports_received': received, 'lost': sorted(set(range(1, reports + 1)) - set(received)),
            'duplicates': len(received) - len(set(received)), 'in_order': received == sorted(received),
            'config_after_restore_s': config_s, 'reports_after_restore_s': reports_s}


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
    parser.add_argument('--wan', metavar='RATE', help='put the router behind a tbf-shaped veth link (e.g. 10mbit; '
                        'needs root)')
    parser.add_argument('--cut-s', type=float, default=0.0, help='with --wan: cut the link this long (e.g. 10)')
    parser.add_argument('--cut-config-mib', type=float, default=1 / 1024,
                        help='size of the round config the server sends during the cut (default 1 KiB)')
    args = parser.parse_args(argv)
    if args.repeats < 1 or any(size <= 0 for size in args.sizes_mib):
        parser.error('--repeats and --sizes-mib must be positive')
    site_domain = args.server_domain + 1 if args.site_domain is None else args.site_domain
    sizes = [int(size * MIB) for size in args.sizes_mib]
    if args.wan:
        with ShapedLink(rate=args.wan) as link:
            report = run(sizes, args.repeats, args.server_domain, site_domain, args.timeout, link, args.cut_s,
                         int(args.cut_config_mib * MIB))
    else:
        report = run(sizes, args.repeats, args.server_domain, site_domain, args.timeout)
    print(f'bench_gateway {report["date"]} on {report["machine"]}, {report["cpus"]} CPUs, '
          f'load {report["load_average_1min"]:.1f}, router link: {report["link"]}; seconds from publish to '
          f'arrival, median (min-max) of {args.repeats}')
    print(f'{"size":>9}  {"direct DDS":>24}  {"through the gateway":>24}')
    for row in report['rows']:
        cells = [f'{s["median"]:.3f} ({s["min"]:.3f}-{s["max"]:.3f})' for s in (row['direct_dds_s'], row['gateway_s'])]
        print(f'{row["bytes"] / MIB:>5.1f} MiB  {cells[0]:>24}  {cells[1]:>24}')
    if report['cut']:
        print('link cut: ' + ', '.join(f'{key} {value}' for key, value in report['cut'].items()))
    if args.report:
        args.report.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
