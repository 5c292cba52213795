"""PolicySettings: the policy node's parameters (ROS-free, declared as ROS parameters with descriptors)."""
from __future__ import annotations

from dataclasses import dataclass

from tensorguard_learning.envelope import OperatingEnvelope
from tensorguard_ros.config_fields import POSITIVE, described


@dataclass
class PolicySettings:
    """Who the robot is, whom it trusts, how fast it commands and the envelope it commands within.

    The envelope's defaults are the simulated Meta-World arm's (actions in [-1, 1]^4, zero = no
    motion, at most 0.5 change per period: the full range in 4 periods); a real robot sets its own.
    """

    robot_id: str = described('Enrolled robot identity: models announced for other robots only are ignored.',
                              'robot_1', read_only=True)
    trust_path: str = described('JSON file pinning the server keys this robot trusts (written at enrolment).', '',
                                read_only=True)
    control_rate_hz: float = described('Commands per second while the policy drives.', 20.0, minimum=POSITIVE,
                                       read_only=True)
    watchdog_periods: int = described('Stop commanding (safe action once) when the newest observation is older '
                                      'than this many control periods.', 2, minimum=1, read_only=True)
    action_low: list[float] = described('OperatingEnvelope: lowest command per action dimension.',
                                        default_factory=lambda: [-1.0] * 4, read_only=True)
    action_high: list[float] = described('OperatingEnvelope: highest command per action dimension.',
                                         default_factory=lambda: [1.0] * 4, read_only=True)
    max_action_step: list[float] = described('OperatingEnvelope: largest change of each action dimension in one '
                                             'control period (rate limit).', default_factory=lambda: [0.5] * 4,
                                             read_only=True)
    safe_action: list[float] = described('OperatingEnvelope: the command sent once when the policy stops '
                                         '(disabled, stale observation, refused output, rolled-back model).',
                                         default_factory=lambda: [0.0] * 4, read_only=True)
    status_period_s: float = described('Seconds between status and /diagnostics messages.', 1.0, minimum=POSITIVE,
                                       read_only=True)

    def envelope(self) -> OperatingEnvelope:
        """The commanding part of the OperatingEnvelope; ConfigError names an inconsistent limit."""
        return OperatingEnvelope(action_low=self.action_low, action_high=self.action_high,
                                 max_action_step=self.max_action_step, safe_action=self.safe_action,
                                 watchdog_periods=self.watchdog_periods)
