"""A cross-site fleet in real processes: a site DDS domain (2 simulated robots and their edge nodes) and the
fleet server's DDS domain (key service and aggregator), joined ONLY through a site gateway, the server
gateway and the fleet router over mutual TLS. Neither domain discovers the other's nodes; a full round
completes over the bridge, every robot's update arrives exactly once and both robots apply the new model.

Three links to the router: loopback; a WAN, the router in a network namespace behind a veth pair shaped to
10 Mbit/s with `tbf` in both directions (tensorguard_gateway.wan); and that WAN cut for 10 s as soon as the
first robot's update is published (so it is in flight), then restored. The WAN ones need root and iproute2
and are skipped, naming why, only where those are missing.

Domains: the server's is ``ROS_DOMAIN_ID``; the site's ``TENSORGUARD_SITE_DOMAIN_ID`` if set, else the next
id (the previous one at 232, Fast DDS's highest). Run alone: ``ROS_DOMAIN_ID=231 scripts/test
test/test_gateway_integration.py``.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import rclpy
import yaml
from rclpy.action import ActionClient
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node

from tensorguard_crypto import site_keys
from tensorguard_crypto.fleet import FleetPaths
from tensorguard_gateway import wan
from tensorguard_msgs.action import RunRound
from tensorguard_msgs.msg import EncryptedUpdate, FleetStatus, RobotStatus, SitePartialSum
from tensorguard_ros import qos, topics
from tensorguard_sim.plan import load_config
from tensorguard_sim.provisioning import provision
from tensorguard_sim.simulated_fleet import Processes, start_fleet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src' / 'tensorguard_gateway' / 'test'))
from gateway_test_support import GatewayNetwork, wait_for  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

DATA = Path(__file__).parent / 'data'
ROBOTS = ['robot_1', 'robot_2']
SERVER_NODES = {'key_service', 'aggregator'}
SITE_NODES = {'edge_node', 'sim_robot'}
SERVER_DOMAIN = int(os.environ.get('ROS_DOMAIN_ID', '0'))
SITE_DOMAIN = int(os.environ.get('TENSORGUARD_SITE_DOMAIN_ID') or
                  (SERVER_DOMAIN + 1 if SERVER_DOMAIN < 232 else SERVER_DOMAIN - 1))
WAN_RATE = '10mbit'
CUT_S = 10.0
LINKS = {'loopback': (None, 0.0), 'wan_10mbit': (WAN_RATE, 0.0), 'wan_10mbit_cut_10s': (WAN_RATE, CUT_S)}


class TwoDomains(Processes):
    """`Processes` that starts the server's nodes in the server domain and the robots' in the site domain."""

    def __init__(self, log_dir: Path, env: dict) -> None:
        super().__init__(log_dir, env)
        self.domains = {domain: {**env, 'ROS_DOMAIN_ID': str(domain)} for domain in (SERVER_DOMAIN, SITE_DOMAIN)}

    def start(self, name: str, module: str, params_file: Path, namespace: str = '/',
              overrides: dict | None = None) -> None:
        """Start the node in its domain."""
        self.env = self.domains[SERVER_DOMAIN if name in SERVER_NODES else SITE_DOMAIN]
        super().start(name, module, params_file, namespace, overrides)

    def start_command(self, name: str, command: list[str], domain: int) -> None:
        """Start a non-node command (a gateway) in `domain`."""
        self.children[name] = subprocess.Popen(command, stdout=open(self.log_dir / f'{name}.log', 'w'),
                                               stderr=subprocess.STDOUT, env=self.domains[domain],
                                               start_new_session=True)


class Watcher(Node):
    """The operator's node in one domain: the graph, robot and fleet status, the encrypted updates and site
    partial sums the domain carries (arrival time, robot or site, SHA-256 of the signed package) and the
    RunRound action."""

    def __init__(self, context: Context) -> None:
        super().__init__('gateway_test_watcher', context=context)
        self.fleet: FleetStatus | None = None
        self.robots: dict[str, RobotStatus] = {}
        self.updates: list[tuple[float, str, bytes]] = []
        self.site_sums: list[tuple[float, str, bytes]] = []
        self.first_update = threading.Event()
        self.create_subscription(FleetStatus, topics.FLEET_STATUS, self._on_fleet, qos.STATUS)
        self.create_subscription(EncryptedUpdate, topics.ENCRYPTED_UPDATES, self._on_update, qos.UPDATES)
        self.create_subscription(SitePartialSum, topics.SITE_PARTIAL_SUMS, lambda msg: self.site_sums.append(
            (time.monotonic(), msg.site_id, hashlib.sha256(bytes(msg.package)).digest())), qos.UPDATES)
        for robot in ROBOTS:
            self.create_subscription(RobotStatus, f'/{robot}/status', self._on_robot, qos.STATUS)
        self.run_round = ActionClient(self, RunRound, topics.RUN_ROUND)

    def _on_fleet(self, msg: FleetStatus) -> None:
        self.fleet = msg

    def _on_robot(self, msg: RobotStatus) -> None:
        self.robots[msg.robot_id] = msg

    def _on_update(self, msg: EncryptedUpdate) -> None:
        self.updates.append((time.monotonic(), msg.robot_id, hashlib.sha256(bytes(msg.package)).digest()))
        self.first_update.set()

    def node_names(self) -> set[str]:
        return {name for name, _ in self.get_node_names_and_namespaces()}


def watcher_in(domain: int, cleanup: ExitStack) -> Watcher:
    """A spinning `Watcher` in its own context in `domain`, shut down by `cleanup`."""
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    watcher = Watcher(context)
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(watcher)
    threading.Thread(target=executor.spin, daemon=True).start()
    cleanup.callback(context.try_shutdown)
    cleanup.callback(watcher.destroy_node)
    cleanup.callback(executor.shutdown)
    return watcher


@contextmanager
def cross_site_fleet(tmp: Path, rate: str | None, site_aggregation: bool = False) -> Iterator[tuple]:
    """The fleet of the module docstring in `tmp` (the WAN shaped to `rate`, if given), started and checked not to
    discover across its domains; yields the server's and the site's `Watcher` and the link. With
    `site_aggregation`, `tensorguard fleet site-aggregator-key`'s keys for site_a, the aggregator and both
    gateways with the switch on and the router granting site_a its site-sum key."""
    passphrase = secrets.token_urlsafe(24)
    plan_file = tmp / 'plan.yaml'  # the integration tests' plan, with the site's two robots
    plan_file.write_text(yaml.safe_dump({**yaml.safe_load((DATA / 'fleet_test_plan.yaml').read_text()),
                                         'robots': len(ROBOTS)}))
    shared, plan = load_config(DATA / 'fleet_test.yaml', plan_file)
    paths = FleetPaths(tmp / 'fleet')
    (tmp / 'logs').mkdir()
    provision(paths, shared, plan, passphrase.encode(), lambda _text: None)
    params_file, server_extra, site_extra = DATA / 'fleet_test.yaml', {}, {}
    if site_aggregation:
        made = site_keys.create_site_aggregator(paths, 'site_a', ROBOTS, passphrase.encode(), tmp / 'site_keys')
        switched_on = tmp / 'fleet_site_aggregation.yaml'  # the test parameters, the aggregator's switch on
        switched_on.write_text(params_file.read_text() + '\n/tensorguard/aggregator:\n  ros__parameters:\n'
                               f'    site_aggregation: true\n    site_aggregators_file: "{made.sites_file}"\n')
        params_file = switched_on
        server_extra = {'site_aggregation': 'true'}
        site_extra = {'site_aggregation': 'true', 'site_aggregator_key': str(made.identity_file),
                      'site_seal_key': str(made.seal_file), 'site_trust_file': str(made.trust_file)}
    with ExitStack() as cleanup:  # undone in reverse: watchers, nodes and gateways, router, link
        link = cleanup.enter_context(wan.ShapedLink(rate=rate)) if rate else None
        network = GatewayNetwork(tmp, {'site_a': ROBOTS}, paths, passphrase.encode(),
                                 link.remote if link else '127.0.0.1', ('site_a',) if site_aggregation else ())
        cleanup.callback(network.stop_router)
        procs = TwoDomains(tmp / 'logs', {**os.environ, 'TENSORGUARD_KEY_PASSPHRASE': passphrase,
                                          'OMP_NUM_THREADS': '1'})
        cleanup.callback(procs.stop_all)
        server, site = (watcher_in(domain, cleanup) for domain in (SERVER_DOMAIN, SITE_DOMAIN))
        start_fleet(procs, params_file, paths, plan)
        wait_for(lambda: SERVER_NODES <= server.node_names() and SITE_NODES <= site.node_names(), 120,
                 'every node to join its domain')
        time.sleep(3.0)  # more than DDS discovery needs on localhost
        assert not (SITE_NODES & server.node_names()) and not (SERVER_NODES & site.node_names()), \
            'the domains discovered each other without the gateway'
        assert server.robots == {} and site.fleet is None
        network.start_router(link.prefix if link else ())
        procs.start_command('gateway_server', network.gateway_command('server', extra=server_extra), SERVER_DOMAIN)
        procs.start_command('gateway_site_a', network.gateway_command('site', 'site_a', extra=site_extra),
                            SITE_DOMAIN)
        yield server, site, link


@pytest.fixture(scope='module', params=list(LINKS))
def sites(request, tmp_path_factory):
    rate, cut_s = LINKS[request.param]
    if rate and (reason := wan.unavailable()):
        pytest.skip(f'{request.param}: {reason}')
    with cross_site_fleet(tmp_path_factory.mktemp(f'gateway_{request.param}'), rate) as (server, site, link):
        yield server, site, link, cut_s


def start_round(server: Watcher, site: Watcher):
    """Wait until both robots report (demonstrations, initial model) across the gateway and the fleet status
    reaches the site, then send a RunRound goal; returns the result's future."""
    wait_for(lambda: sorted(server.robots) == ROBOTS and all(s.episodes_buffered >= 2 and s.model_version >= 1
                                                             for s in server.robots.values()),
             150, "both robots' status, with demonstrations and the initial model, through the gateway")
    wait_for(lambda: site.fleet is not None, 30, 'the fleet status in the site domain')
    assert not (SITE_NODES & server.node_names()) and not (SERVER_NODES & site.node_names())
    assert server.run_round.wait_for_server(timeout_sec=60)
    goal = server.run_round.send_goal_async(RunRound.Goal())
    wait_for(goal.done, 30, 'the round goal to be accepted')
    return goal.result().get_result_async()


def finish_round(server: Watcher, site: Watcher, result) -> RunRound.Result:
    """Wait for the round's result, check it succeeded with both robots, each counted once, and that both
    robots apply its model and report it across the gateway."""
    wait_for(result.done, 180, 'the round to finish')
    outcome = result.result().result
    assert outcome.success, outcome.message
    assert sorted(outcome.participants) == ROBOTS  # each robot counted once
    version = outcome.model_version
    wait_for(lambda: all(s.model_version == version for s in site.robots.values()) and len(site.robots) == 2, 90,
             f'both robots to apply model {version}')
    wait_for(lambda: all(s.model_version == version for s in server.robots.values()), 30,
             'their status to report it across the gateway')
    return outcome


def test_a_round_completes_across_the_gateway_each_update_once_and_both_robots_apply_the_model(sites):
    server, site, link, cut_s = sites
    result = start_round(server, site)
    started = restored = time.monotonic()
    if cut_s:
        assert site.first_update.wait(120), 'no robot published an update in the site domain'
        link.cut()
        time.sleep(cut_s)
        link.restore()
        restored = time.monotonic()
        assert site.updates[0][0] < restored and not server.updates, \
            'the test meant to cut the link while an update was in flight, and did not'
    outcome = finish_round(server, site, result)
    sent = {digest: robot for _, robot, digest in site.updates}
    delivered = Counter((robot, digest) for _, robot, digest in server.updates)
    assert sorted(sent.values()) == ROBOTS, 'each robot published one update'
    assert delivered == Counter((robot, digest) for digest, robot in sent.items()), \
        'every update reached the server domain exactly once'
    last = server.updates[-1][0]
    during_cut = sum(restored - cut_s <= t < restored for t, _, _ in site.updates)
    print(f'round {outcome.round_id} with {len(outcome.participants)} robots; last update delivered '
          f'{last - started:.1f} s after the goal'
          + (f', {last - restored:.1f} s after the link came back ({during_cut} published during the cut)'
             if cut_s else ''))
