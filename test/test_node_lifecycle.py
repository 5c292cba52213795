"""Each TensorGuard node in its own process, walked through the standard lifecycle over real ROS.

Every node starts with ``autostart:=false`` and is driven through ``<node>/change_state`` and
``<node>/get_state`` (lifecycle_msgs): configure, activate, deactivate, cleanup, configure again,
activate, shutdown. While active its work interfaces (subscriptions, services) exist; while
inactive they do not. A running aggregator refuses a privacy-weakening parameter change.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import rclpy
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from tensorguard_crypto.fleet import FleetPaths
from tensorguard_ros import topics
from tensorguard_sim.plan import load_config
from tensorguard_sim.provisioning import provision

pytestmark = [pytest.mark.ros, pytest.mark.slow]

DATA = Path(__file__).parent / 'data'
PARAMS = DATA / 'fleet_test.yaml'
WALK = [(Transition.TRANSITION_CONFIGURE, State.PRIMARY_STATE_INACTIVE),
        (Transition.TRANSITION_ACTIVATE, State.PRIMARY_STATE_ACTIVE),
        (Transition.TRANSITION_DEACTIVATE, State.PRIMARY_STATE_INACTIVE),
        (Transition.TRANSITION_CLEANUP, State.PRIMARY_STATE_UNCONFIGURED),
        (Transition.TRANSITION_CONFIGURE, State.PRIMARY_STATE_INACTIVE),
        (Transition.TRANSITION_ACTIVATE, State.PRIMARY_STATE_ACTIVE),
        (Transition.TRANSITION_ACTIVE_SHUTDOWN, State.PRIMARY_STATE_FINALIZED)]


class LifecycleDriver:
    """The test's own node: calls one node's lifecycle and parameter services and reads the graph."""

    def __init__(self, fully_qualified_name: str) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node('lifecycle_driver', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.name = fully_qualified_name
        self.change_state = self.node.create_client(ChangeState, f'{fully_qualified_name}/change_state')
        self.get_state = self.node.create_client(GetState, f'{fully_qualified_name}/get_state')
        self.set_parameters = self.node.create_client(SetParameters, f'{fully_qualified_name}/set_parameters')

    def call(self, client, request, timeout: float = 60.0):
        """Call a service and wait for its answer."""
        deadline = time.monotonic() + timeout
        while not client.service_is_ready():
            assert time.monotonic() < deadline, f'{client.srv_name} is not available'
            self.executor.spin_once(timeout_sec=0.2)
        future = client.call_async(request)
        self.executor.spin_until_future_complete(future, timeout_sec=max(0.1, deadline - time.monotonic()))
        assert future.done(), f'no answer from {client.srv_name} within {timeout:.0f} s'
        return future.result()

    def transition(self, transition: int) -> int:
        """Trigger `transition`; return the primary state the node reports afterwards (unchanged if refused)."""
        self.call(self.change_state, ChangeState.Request(transition=Transition(id=transition)))
        return self.call(self.get_state, GetState.Request()).current_state.id

    def interfaces(self) -> set[str]:
        """Names of the node's services and subscriptions, as the ROS graph sees them."""
        namespace, _, name = self.name.rpartition('/')
        deadline = time.monotonic() + 5.0
        while True:
            try:
                services = self.node.get_service_names_and_types_by_node(name, namespace or '/')
                subscriptions = self.node.get_subscriber_names_and_types_by_node(name, namespace or '/')
                return {topic for topic, _types in services + subscriptions}
            except Exception:  # noqa: BLE001 - the node may not be discovered yet
                if time.monotonic() > deadline:
                    raise
                self.executor.spin_once(timeout_sec=0.2)

    def wait_for_interfaces(self, expected: set[str], present: bool, timeout: float = 10.0) -> None:
        """Wait until every name in `expected` is (or none is) among the node's interfaces."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.interfaces()
            if expected <= current if present else not expected & current:
                return
            assert time.monotonic() < deadline, f'{self.name} has {current}, {present=} for {expected}'
            self.executor.spin_once(timeout_sec=0.2)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture(scope='module')
def fleet(tmp_path_factory) -> tuple[FleetPaths, dict]:
    """A provisioned one-robot fleet and the environment its nodes run with."""
    run_dir = tmp_path_factory.mktemp('lifecycle')
    passphrase = secrets.token_urlsafe(24)
    shared, plan = load_config(PARAMS, DATA / 'fleet_test_plan.yaml')
    paths = FleetPaths(run_dir / 'fleet')
    provision(paths, shared, replace(plan, robots=1), passphrase.encode(), lambda _text: None)
    return paths, {**os.environ, 'TENSORGUARD_KEY_PASSPHRASE': passphrase, 'OMP_NUM_THREADS': '1'}


def start(module: str, namespace: str, env: dict, log: Path, **parameters) -> subprocess.Popen:
    """Start `python -m module` with the test fleet's YAML, autostart off and `parameters`."""
    args = [sys.executable, '-m', module, '--ros-args', '-r', f'__ns:={namespace}', '--params-file', str(PARAMS),
            '-p', 'autostart:=false', *(a for key, value in parameters.items() for a in ('-p', f'{key}:={value}'))]
    return subprocess.Popen(args, stdout=log.open('w'), stderr=subprocess.STDOUT, env=env)


def walk(process: subprocess.Popen, driver: LifecycleDriver, active_interfaces: set[str], log: Path) -> None:
    """Drive the node through `WALK`, checking its state and that its work interfaces exist only while active."""
    try:
        assert driver.call(driver.get_state, GetState.Request()).current_state.id == State.PRIMARY_STATE_UNCONFIGURED
        for transition, expected in WALK:
            assert driver.transition(transition) == expected, log.read_text()
            if expected == State.PRIMARY_STATE_ACTIVE:
                driver.wait_for_interfaces(active_interfaces, present=True)
            elif expected != State.PRIMARY_STATE_FINALIZED:
                driver.wait_for_interfaces(active_interfaces, present=False)
        assert process.poll() is None, log.read_text()
    finally:
        driver.close()
        process.terminate()
        process.wait(timeout=60)  # a loaded machine can take long to unload torch


def test_key_service_lifecycle(fleet, tmp_path):
    paths, env = fleet
    log = tmp_path / 'key_service.log'
    process = start('tensorguard_aggregator.key_service_node', '/tensorguard', env, log, fleet_dir=paths.root)
    walk(process, LifecycleDriver('/tensorguard/key_service'), {topics.DECRYPT_AGGREGATE, topics.ISSUE_ROUND_KEY},
         log)


def test_aggregator_lifecycle_and_read_only_privacy_parameters(fleet, tmp_path):
    paths, env = fleet
    log = tmp_path / 'aggregator.log'
    process = start('tensorguard_aggregator.aggregator_node', '/tensorguard', env, log, fleet_dir=paths.root,
                    eval_tasks='[push-v3]')
    driver = LifecycleDriver('/tensorguard/aggregator')
    weaker = Parameter(name='quorum', value=ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=1))
    result = driver.call(driver.set_parameters, SetParameters.Request(parameters=[weaker])).results[0]
    assert not result.successful and 'read-only' in result.reason
    walk(process, driver, {topics.ENCRYPTED_UPDATES, topics.TRIGGER_ROUND, topics.REVOKE_ROBOT}, log)


def test_edge_node_lifecycle(fleet, tmp_path):
    paths, env = fleet
    robot_dir = paths.robot_dir('robot_1')
    log = tmp_path / 'edge_node.log'
    process = start('tensorguard_edge.edge_node', '/robot_1', env, log, robot_id='robot_1',
                    state_dir=robot_dir / 'state', key_path=robot_dir / 'identity.key',
                    trust_path=robot_dir / 'trust.json')
    walk(process, LifecycleDriver('/robot_1/edge_node'),
         {topics.ROUND_CONFIG, topics.MODEL_UPDATES, f'/robot_1/{topics.START_EPISODE}',
          f'/robot_1/{topics.END_EPISODE}', '/robot_1/joint_states'}, log)
