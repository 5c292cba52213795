"""Node parameters resolved from a parameter file by ROS's own rules (rcl's parser, rclpy's matching)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tensorguard_aggregator.gate import GateSettings
from tensorguard_sim.ros_parameters import node_parameters

CONFIG = Path(__file__).resolve().parents[3] / 'config'

pytestmark = pytest.mark.ros


@dataclass
class Probe:
    quorum: int = 0
    noise_multiplier: float = 0.0
    tag: str = 'default'
    modules: list = field(default_factory=list)
    untouched: int = 7


LAYERED = """
/**:
  ros__parameters:
    quorum: 1
    noise_multiplier: 0.5
    tag: everyone
/**/aggregator:
  ros__parameters:
    quorum: 2
    modules: [experts, router]
/*/aggregator:
  ros__parameters:
    tag: one-namespace-deep
/tensorguard/aggregator:
  ros__parameters:
    noise_multiplier: 1.25
/elsewhere/aggregator:
  ros__parameters:
    quorum: 99
"""


def test_wildcards_namespaces_and_absolute_names_layer_as_ros_does(tmp_path):
    params = tmp_path / 'fleet.yaml'
    params.write_text(LAYERED)
    probe = node_parameters(params, '/tensorguard/aggregator', Probe)
    assert probe == Probe(quorum=2, noise_multiplier=1.25, tag='one-namespace-deep', modules=['experts', 'router'])
    robot = node_parameters(params, '/robot_1/edge_node', Probe)
    assert robot == Probe(quorum=1, noise_multiplier=0.5, tag='everyone')


def test_the_shipped_fleet_file_sets_the_aggregators_gate():
    settings = node_parameters(CONFIG / 'fleet.yaml', '/tensorguard/aggregator', GateSettings)
    assert settings.eval_episodes_per_task == 20 and settings.max_regression == 0.10
    assert settings.eval_seed == GateSettings().eval_seed  # not in the YAML: the dataclass default


def test_a_malformed_parameter_file_is_refused_by_rcl(tmp_path):
    params = tmp_path / 'broken.yaml'
    params.write_text('/**:\n  ros__parameters: [not, a, mapping]\n')
    with pytest.raises(RuntimeError, match="Couldn't parse params file"):
        node_parameters(params, '/tensorguard/aggregator', Probe)
    with pytest.raises(RuntimeError, match='Error opening YAML file'):
        node_parameters(tmp_path / 'missing.yaml', '/tensorguard/aggregator', Probe)
