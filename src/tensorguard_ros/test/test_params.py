"""`declare_dataclass_parameters`: each field's range and read-only flag, enforced by rclpy on an in-process node;
`follow_parameter_changes`: accepted runtime changes reach the node, refused ones do not."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import rclpy
from rclpy.exceptions import InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter

from tensorguard_ros.config_fields import POSITIVE, RoundSettings, described
from tensorguard_ros.params import declare_dataclass_parameters, follow_parameter_changes


@dataclass
class Settings(RoundSettings):
    """A node config composed like the real ones."""

    quorum: int = described('Robots needed.', 2, minimum=2, read_only=True)
    period_s: float = described('Seconds between rounds.', 1.0, minimum=0.0)


@pytest.fixture()
def context() -> Iterator[rclpy.Context]:
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)


def _node(context: rclpy.Context, *overrides: str) -> Node:
    return Node('params_test', context=context, cli_args=['--ros-args', *(a for o in overrides for a in ('-p', o))])


def test_fields_become_parameters_with_their_descriptors(context):
    node = _node(context, 'noise_multiplier:=0.25')
    settings = declare_dataclass_parameters(node, Settings)
    assert settings == Settings(noise_multiplier=0.25)
    quorum, noise, security = node.describe_parameters(['quorum', 'noise_multiplier', 'security_level'])
    assert quorum.read_only and quorum.integer_range[0].from_value == 2 and quorum.description == 'Robots needed.'
    assert noise.read_only and noise.floating_point_range[0].from_value == POSITIVE
    assert [(r.from_value, r.to_value, r.step) for r in security.integer_range] == [(128, 256, 64)]
    node.destroy_node()


def test_a_running_node_refuses_weakening_and_out_of_range_changes(context):
    node = _node(context)
    declare_dataclass_parameters(node, Settings)
    quorum, period, negative = (node.set_parameters([parameter])[0] for parameter in (
        Parameter('quorum', value=1), Parameter('period_s', value=5.0), Parameter('period_s', value=-1.0)))
    assert not quorum.successful and quorum.reason == 'Trying to set a read-only parameter: quorum.'
    assert period.successful
    assert not negative.successful and 'out of range' in negative.reason
    node.destroy_node()


@pytest.mark.parametrize('override', ['security_level:=100', 'plaintext_bits:=33', 'min_clients:=1',
                                      'noise_multiplier:=0.0', 'quorum:=1'])
def test_an_out_of_range_value_stops_the_node_at_start_up(context, override):
    node = _node(context, override)
    with pytest.raises(InvalidParameterValueException, match=override.split(':=')[0]):
        declare_dataclass_parameters(node, Settings)
    node.destroy_node()


def test_accepted_changes_reach_the_node_and_refused_ones_do_not(context):
    node = _node(context)
    declare_dataclass_parameters(node, Settings)
    seen: list[Settings] = []
    follow_parameter_changes(node, Settings, seen.append)
    node.set_parameters([Parameter('quorum', value=1)])
    node.set_parameters([Parameter('period_s', value=-1.0)])
    assert seen == []
    node.set_parameters([Parameter('period_s', value=5.0)])
    node.declare_parameter('unrelated', 0)
    node.set_parameters([Parameter('unrelated', value=3)])
    assert seen == [Settings(period_s=5.0)]
    node.destroy_node()
