"""Entry-point plumbing shared by every TensorGuard node: spinning, lifecycle autostart, and
destroying what a lifecycle transition created."""
from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.client import Client
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecyclePublisher, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.service import Service
from rclpy.subscription import Subscription
from rclpy.timer import Timer


def spin_node(make_node: Callable[[], Node], args: list[str] | None = None, threads: int = 1) -> int:
    """Init rclpy, spin one node until Ctrl-C, SIGTERM or shutdown, clean up; the console-script body."""
    # SIGTERM stops the node the way Ctrl-C does. rclpy's own SIGTERM path (shut the contexts down
    # from its signal thread) left a node that had been through its lifecycle spinning on about one
    # SIGTERM in three here (Kilted rclpy 9.1.2); rclpy chains to a Python handler installed before
    # init and wakes the executor, as it does for SIGINT, which never failed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rclpy.init(args=args)
    node = make_node()
    executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def enable_autostart(node: LifecycleNode) -> None:
    """Declare ``autostart`` (default true); if set, configure and activate as soon as spinning starts,
    as nav2's lifecycle manager would. With it false the node waits for ``ros2 lifecycle set``."""
    autostart = node.declare_parameter(
        'autostart', True, ParameterDescriptor(description='Configure and activate on start-up.')).value
    if not autostart:
        return

    def walk_to_active() -> None:
        timer.cancel()
        node.destroy_timer(timer)
        if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()

    timer = node.create_timer(0.0, walk_to_active)


def destroy_entities(node: LifecycleNode, entities: list[Any]) -> None:
    """Destroy `node`'s subscriptions, services, clients, timers, publishers and action servers in
    `entities` (what one lifecycle transition created, for the opposite one) and empty the list."""
    for entity in entities:
        if isinstance(entity, Subscription):
            node.destroy_subscription(entity)
        elif isinstance(entity, Service):
            node.destroy_service(entity)
        elif isinstance(entity, Client):
            node.destroy_client(entity)
        elif isinstance(entity, Timer):
            node.destroy_timer(entity)
        elif isinstance(entity, LifecyclePublisher):
            node.destroy_lifecycle_publisher(entity)
        elif isinstance(entity, Publisher):
            node.destroy_publisher(entity)
        else:  # an action server
            entity.destroy()
    entities.clear()
