"""`ros2 param set` on the aggregator node: writable round and gate parameters reach the running
settings at once, privacy parameters are refused (in-process node, never configured)."""
from __future__ import annotations

import math

import pytest
import rclpy
from rclpy.parameter import Parameter

from tensorguard_aggregator.aggregator_node import AggregatorNode

pytestmark = pytest.mark.ros


@pytest.fixture()
def node():
    rclpy.init(args=['--ros-args', '-p', 'autostart:=false'])
    aggregator = AggregatorNode()
    yield aggregator
    aggregator.destroy_node()
    rclpy.try_shutdown()


def test_writable_parameters_take_effect_and_privacy_ones_are_refused(node):
    before = node.round_settings
    results = node.set_parameters([Parameter('round_deadline_s', value=42.0), Parameter('eval_seed', value=7),
                                   Parameter('quorum', value=1), Parameter('noise_multiplier', value=1e-9)])
    assert [r.successful for r in results] == [True, True, False, False]
    assert node.round_settings.round_deadline_s == 42.0
    after = node.round_settings
    assert (after.quorum, after.noise_multiplier) == (before.quorum, before.noise_multiplier)
    assert node.gate.settings.eval_seed == 7 and node.gate_settings is node.gate.settings


def test_a_round_period_set_while_inactive_starts_no_clock(node):
    node.set_parameters([Parameter('round_period_s', value=30.0)])
    assert node.gate_settings.round_period_s == 30.0 and node.next_round_at == math.inf
