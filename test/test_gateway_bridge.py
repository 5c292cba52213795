"""A site gateway and the fleet server's gateway in real processes, joined by the router over mutual TLS,
both in ONE DDS domain (a site next to the fleet server): a robot's update crosses once and comes back
into the domain exactly once (the loop guard stops the site gateway from sending the server gateway's
copy out again, and the server gateway from re-sending the site gateway's copy of a round config), the
message is unchanged (the gateways carry the CDR bytes DDS delivered them; a copy may differ from the original
only in trailing alignment padding), and an update signed by a robot that is not the site's is dropped and counted."""
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.serialization import deserialize_message

from tensorguard_crypto.identity import Identity, Role
from tensorguard_msgs.msg import EncryptedUpdate, RoundConfig
from tensorguard_ros import qos, topics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src' / 'tensorguard_gateway' / 'test'))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src' / 'tensorguard_crypto' / 'test'))
from crypto_test_support import make_round_config, make_update  # noqa: E402
from gateway_test_support import GatewayNetwork, wait_for  # noqa: E402

pytestmark = [pytest.mark.ros]
SITES = {'site_a': ['robot_1', 'robot_2']}


class Probe(Node):
    """Publishes like a robot and the aggregator, and records every copy the domain carries."""

    def __init__(self) -> None:
        super().__init__('gateway_probe')
        self.updates: list[bytes] = []
        self.configs: list[bytes] = []
        self.diagnostics: dict[str, dict[str, str]] = {}
        self.update_pub = self.create_publisher(EncryptedUpdate, topics.ENCRYPTED_UPDATES, qos.UPDATES)
        self.config_pub = self.create_publisher(RoundConfig, topics.ROUND_CONFIG, qos.LATCHED)
        self.create_subscription(EncryptedUpdate, topics.ENCRYPTED_UPDATES, self.updates.append, qos.UPDATES,
                                 raw=True)
        self.create_subscription(RoundConfig, topics.ROUND_CONFIG, self.configs.append, qos.LATCHED, raw=True)
        self.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diagnostics, qos.STATUS)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            self.diagnostics[status.hardware_id] = {kv.key: kv.value for kv in status.values}

    def value(self, gateway: str, key: str) -> str:
        return self.diagnostics.get(gateway, {}).get(key, '')


def update_message(robot: str) -> EncryptedUpdate:
    package = make_update(Identity.generate(robot), make_round_config(Identity.generate('aggregator', Role.AGGREGATOR)),
                          bodies_bytes=256 * 1024).serialize()
    return EncryptedUpdate(robot_id=robot, round_id=7, package_size=len(package),
                           package_sha256=list(hashlib.sha256(package).digest()), package=package)


@pytest.fixture(scope='module')
def network(tmp_path_factory):
    return GatewayNetwork(tmp_path_factory.mktemp('gateway_bridge'), SITES)


@pytest.fixture(scope='module')
def bridged(network):
    tmp = network.config.parent
    network.start_router()
    children = [subprocess.Popen(network.gateway_command(mode, site, f'/{name}'), stdout=open(tmp / f'{name}.log', 'w'),
                                 stderr=subprocess.STDOUT, start_new_session=True)
                for name, mode, site in (('server', 'server', ''), ('site_a', 'site', 'site_a'))]
    rclpy.init()
    probe = Probe()
    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        wait_for(lambda: all(probe.value(g, 'router') == 'linked' for g in ('fleet/server', 'fleet/site_a')), 60,
                 'both gateways to link to the router')
        yield probe
    finally:
        executor.shutdown()
        probe.destroy_node()
        rclpy.try_shutdown()
        for child in children:
            os.killpg(child.pid, signal.SIGINT)
        for child in children:
            assert child.wait(timeout=20) == 0
        network.stop_router()


def test_an_update_crosses_once_unchanged_and_is_not_bridged_back(bridged):
    msg = update_message('robot_1')
    wait_for(lambda: bridged.count_publishers(topics.ENCRYPTED_UPDATES) >= 2, 20, 'the server gateway publisher')
    bridged.update_pub.publish(msg)
    wait_for(lambda: len(bridged.updates) == 2, 60, "the robot's update and the server gateway's copy")
    expected = {('fleet/site_a', 'looped'): '1', ('fleet/site_a', 'out encrypted_updates'): '1',
                ('fleet/site_a', 'unacknowledged'): '0',
                ('fleet/server', 'in encrypted_updates'): '1'}
    wait_for(lambda: all(bridged.value(*key) == value for key, value in expected.items()), 30,
             f"the gateways' counts {expected}")
    time.sleep(1.0)  # a loop would have brought more copies by now
    assert [deserialize_message(raw, EncryptedUpdate) for raw in bridged.updates] == [msg, msg]
    assert bridged.value('fleet/server', 'in encrypted_updates') == '1'


def test_an_update_signed_by_another_sites_robot_is_dropped_and_counted(bridged):
    before = len(bridged.updates)
    bridged.update_pub.publish(update_message('robot_3'))
    wait_for(lambda: bridged.value('fleet/site_a', 'refused: foreign_robot') == '1', 30, 'the foreign_robot refusal')
    time.sleep(1.0)
    assert len(bridged.updates) == before + 1  # only the robot's own publication; nothing crossed
    assert bridged.value('fleet/server', 'in encrypted_updates') == '1'


def test_a_round_config_crosses_latched_and_is_not_bridged_back(bridged):
    config = RoundConfig(round_id=7, package=list(b'signed round config bytes'))
    bridged.config_pub.publish(config)
    wait_for(lambda: len(bridged.configs) == 2, 60, "the aggregator's config and the site gateway's copy")
    expected = {('fleet/server', 'looped'): '1', ('fleet/server', 'out round_config'): '1',
                ('fleet/site_a', 'in round_config'): '1'}
    wait_for(lambda: all(bridged.value(*key) == value for key, value in expected.items()), 30,
             f"the gateways' counts {expected}")
    time.sleep(1.0)
    assert [deserialize_message(raw, RoundConfig) for raw in bridged.configs] == [config, config]


@pytest.mark.parametrize('override, message', [
    ('mode:=relay', "mode must be one of ('site', 'server'), not 'relay'"),
    ('robots:=["robot/1"]', 'robots entry'),
    ('certificate:=/nonexistent.crt', "tls.certificate: '/nonexistent.crt' is not a file"),
])
def test_a_gateway_with_an_unusable_parameter_stops_naming_it(network, override, message):
    result = subprocess.run([*network.gateway_command('site', 'site_a'), '-p', override], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
