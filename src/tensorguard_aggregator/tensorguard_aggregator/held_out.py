"""The server's held-out demonstrations (ROS-free): where they live and how the gate loads them.

They are the server's own demonstrations of the evaluation tasks, recorded at provisioning; the
gate measures a candidate's KL divergence to the current policy on their states. None of this
data comes from a robot.
"""
from __future__ import annotations

from pathlib import Path

from tensorguard_crypto.fleet import FleetPaths
from tensorguard_learning.demonstrations import DemonstrationStore
from tensorguard_learning.policy import MoEPolicy
from tensorguard_learning.training import BCData

MAX_BYTES = 1 << 30


def held_out_dir(paths: FleetPaths) -> Path:
    """Where the server's held-out demonstrations live."""
    return paths.server / 'held_out'


def load_held_out(paths: FleetPaths, policy: MoEPolicy) -> BCData:
    """The held-out states, as behaviour-cloning tensors of `policy`'s task vocabulary."""
    with DemonstrationStore(held_out_dir(paths), max_bytes=MAX_BYTES) as store:
        return BCData.from_store(policy, store)
