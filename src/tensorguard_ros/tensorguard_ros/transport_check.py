"""DDS transport check: do TensorGuard's messages cross between two processes intact?

``ros2 run tensorguard_ros transport_check selftest`` starts a publisher and, after the publisher's
latched ``RoundConfig`` is out, a listener in a second process. The listener must receive the
latched configuration (transient_local) and an ``EncryptedUpdate`` with a large payload (reliable),
and both must arrive bit for bit (SHA-256 compared across the processes). Operators run the two
halves on two machines to check a site's network before enrolling robots.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from tensorguard_msgs.msg import EncryptedUpdate, RoundConfig
from tensorguard_ros import qos, topics
from tensorguard_ros.package_transport import carry_package, package_intact

CHECK_ROUND_ID = 1
CHECK_ROBOT_ID = 'transport_check'


def emit(event: str, **fields: object) -> None:
    """Print one JSON event line (the protocol between the check's processes)."""
    print(json.dumps({'event': event, **fields}), flush=True)


def spin_until(executor: SingleThreadedExecutor, done, timeout_s: float) -> bool:
    """Spin until ``done()`` is true or the timeout passes; return whether it became true."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        executor.spin_once(timeout_sec=0.05)
    return True


def run_publisher(payload_bytes: int, timeout_s: float) -> int:
    """Publish a latched RoundConfig, then an EncryptedUpdate once a listener has matched."""
    rclpy.init()
    node = Node('transport_check_publisher')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        config_pub = node.create_publisher(RoundConfig, topics.ROUND_CONFIG, qos.LATCHED)
        update_pub = node.create_publisher(EncryptedUpdate, topics.ENCRYPTED_UPDATES, qos.UPDATES)

        config = RoundConfig(round_id=CHECK_ROUND_ID, quorum=1, aggregator_key_id='transport_check')
        config.round_seed = list(os.urandom(32))
        config.package = os.urandom(512)
        config_pub.publish(config)
        emit('published_round_config', sha256=hashlib.sha256(bytes(config.package)).hexdigest())

        if not spin_until(executor, lambda: update_pub.get_subscription_count() > 0, timeout_s):
            emit('error', detail='no listener matched the update topic')
            return 1
        payload = os.urandom(payload_bytes)
        update_pub.publish(carry_package(EncryptedUpdate(robot_id=CHECK_ROBOT_ID, round_id=CHECK_ROUND_ID), payload,
                                         node.get_clock().now().to_msg()))
        emit('published_update', bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())

        # Reliable delivery needs the writer alive until the reader has everything: wait for the
        # listener to leave (it exits once it holds both messages).
        if not spin_until(executor, lambda: update_pub.get_subscription_count() == 0, timeout_s):
            emit('error', detail='listener did not finish')
            return 1
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


@dataclass
class Received:
    """What the listener has received so far."""

    config_sha256: str | None = None
    update_sha256: str | None = None
    update_bytes: int = 0
    update_intact: bool = False


def run_listener(timeout_s: float) -> int:
    """Receive the latched RoundConfig and the EncryptedUpdate; check the update's own digest."""
    rclpy.init()
    node = Node('transport_check_listener')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    received = Received()
    started = time.monotonic()

    def on_config(msg: RoundConfig) -> None:
        received.config_sha256 = hashlib.sha256(bytes(msg.package)).hexdigest()
        emit('received_round_config', sha256=received.config_sha256,
             seconds=round(time.monotonic() - started, 3))

    def on_update(msg: EncryptedUpdate) -> None:
        payload = bytes(msg.package)
        digest = hashlib.sha256(payload).digest()
        received.update_sha256 = digest.hex()
        received.update_bytes = len(payload)
        received.update_intact = package_intact(msg)
        emit('received_update', bytes=len(payload), sha256=received.update_sha256,
             intact=received.update_intact, seconds=round(time.monotonic() - started, 3))

    node.create_subscription(RoundConfig, topics.ROUND_CONFIG, on_config, qos.LATCHED)
    node.create_subscription(EncryptedUpdate, topics.ENCRYPTED_UPDATES, on_update, qos.UPDATES)
    try:
        done = spin_until(
            executor, lambda: received.config_sha256 is not None and received.update_sha256 is not None,
            timeout_s)
        if not done:
            emit('error', detail='timed out', got_config=received.config_sha256 is not None,
                 got_update=received.update_sha256 is not None)
            return 1
        return 0 if received.update_intact else 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def read_events(stream) -> list[dict]:
    """Parse the JSON event lines a check process printed (other lines are ROS logging)."""
    events = []
    for line in stream.splitlines():
        line = line.strip()
        if line.startswith('{'):
            events.append(json.loads(line))
    return events


def run_selftest(payload_bytes: int, timeout_s: float) -> int:
    """Run publisher and listener as two processes; print what passed; exit non-zero on failure."""
    command = [sys.executable, '-m', 'tensorguard_ros.transport_check']
    publisher = subprocess.Popen(
        command + ['publisher', '--payload-bytes', str(payload_bytes), '--timeout', str(timeout_s)],
        stdout=subprocess.PIPE, text=True)
    first = publisher.stdout.readline()
    if not first:
        publisher.kill()
        print('FAIL: publisher process did not start', file=sys.stderr)
        return 1
    listener = subprocess.run(command + ['listener', '--timeout', str(timeout_s)],
                              stdout=subprocess.PIPE, text=True, timeout=timeout_s + 30)
    publisher_rest, _ = publisher.communicate(timeout=timeout_s + 30)
    sent = {e['event']: e for e in read_events(first + publisher_rest)}
    got = {e['event']: e for e in read_events(listener.stdout)}

    checks = [
        ('RoundConfig latched: listener started after the publish still received it',
         'received_round_config' in got),
        ('RoundConfig arrived intact (SHA-256 equal across processes)',
         got.get('received_round_config', {}).get('sha256')
         == sent.get('published_round_config', {}).get('sha256')),
        (f'EncryptedUpdate with {payload_bytes:,} byte payload received', 'received_update' in got),
        ('EncryptedUpdate arrived intact (SHA-256 equal across processes and to its digest field)',
         got.get('received_update', {}).get('intact', False)
         and got['received_update']['sha256'] == sent.get('published_update', {}).get('sha256')),
        ('both processes exited cleanly', publisher.returncode == 0 and listener.returncode == 0),
    ]
    for label, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {label}")
    if 'received_update' in got:
        print(f"      update latency after listener start: {got['received_update']['seconds']} s")
    return 0 if all(ok for _, ok in checks) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``transport_check {publisher,listener,selftest}``."""
    parser = argparse.ArgumentParser(prog='transport_check', description=__doc__.splitlines()[0])
    parser.add_argument('role', choices=['publisher', 'listener', 'selftest'])
    parser.add_argument('--payload-bytes', type=int, default=8 * 1024 * 1024,
                        help='size of the EncryptedUpdate payload (default: 8 MiB)')
    parser.add_argument('--timeout', type=float, default=60.0, help='seconds to wait for each step')
    args = parser.parse_args(rclpy.utilities.remove_ros_args(argv if argv is not None else sys.argv)[1:])
    if args.payload_bytes <= 0:
        parser.error('--payload-bytes must be positive')
    if args.role == 'publisher':
        return run_publisher(args.payload_bytes, args.timeout)
    if args.role == 'listener':
        return run_listener(args.timeout)
    return run_selftest(args.payload_bytes, args.timeout)


if __name__ == '__main__':
    sys.exit(main())
