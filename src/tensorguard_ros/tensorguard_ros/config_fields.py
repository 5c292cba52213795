"""`described()`: a dataclass field whose description and constraints become its ROS parameter descriptor,
and the round settings every node of a fleet declares from one place.

Pure Python (no rclpy), so ROS-free cores such as `EdgeClient` declare their configs with it and
`tensorguard_ros.params.declare_dataclass_parameters` turns them into parameters.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Lower bound of a range that must exclude zero (``> 0``): the smallest positive double.
POSITIVE = sys.float_info.min


def described(description: str, default: Any = dataclasses.MISSING,
              default_factory: Callable[[], Any] | None = None, *, minimum: float | None = None,
              maximum: float | None = None, step: float = 0, read_only: bool = False) -> Any:
    """A dataclass field with a default (or factory) and a description for ``ros2 param describe``.

    `minimum` / `maximum` / `step` become the parameter's integer or floating-point range (a value
    outside it is refused at start-up and at runtime); `read_only` makes rclpy refuse any runtime
    change (``ros2 param set``), for fields a running node must never change.
    """
    metadata = {'description': description, 'read_only': read_only}
    if minimum is not None or maximum is not None:
        metadata['range'] = (minimum, maximum, step)
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass
class LatticeSettings:
    """The lattice parameter set and sum bounds that robots, aggregator and key service must agree on."""

    security_level: int = described('Lattice security level in bits: 128, 192 or 256.', 128,
                                    minimum=128, maximum=256, step=64, read_only=True)
    plaintext_bits: int = described('Bits b of the summed integers (updates are summed mod 2^b).', 20,
                                    minimum=1, maximum=32, read_only=True)
    max_clients: int = described('Largest number of robots one round may sum (sets the modular headroom).', 16,
                                 minimum=2, read_only=True)
    min_clients: int = described('DP: the noise is sized for a sum over at least this many robots; rounds '
                                 'announcing fewer are refused.', 2, minimum=2, read_only=True)


@dataclass
class RoundSettings(LatticeSettings):
    """`LatticeSettings` plus the differential privacy and aggregation settings that robots and
    aggregator must agree on (a robot refuses a round announcing anything else)."""

    clipping_norm: float = described('DP: L2 norm every robot clips its update to.', 1.0,
                                     minimum=POSITIVE, read_only=True)
    noise_multiplier: float = described('DP: Skellam noise std of the sum over min_clients robots, in units of '
                                        'clipping_norm. The default 1.11 is the least noise that keeps three rounds '
                                        'within the default epsilon_budget of 8 (7.96, delta 1e-5); a fleet learns '
                                        'with it from about 1,000 robots (docs/flower.md, the privacy-utility '
                                        'frontier).',
                                        1.11, minimum=POSITIVE, read_only=True)
    strategy: str = described('Aggregation strategy: expert_driven (usage-weighted per-expert means) or fedavg '
                              '(plain mean); announced in every round config, robots configured otherwise '
                              'refuse the round.', 'expert_driven', read_only=True)
