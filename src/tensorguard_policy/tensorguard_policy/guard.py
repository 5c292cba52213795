"""ActionGuard: every command the policy sends stays inside the operating envelope.

Each model output is refused if it is not `action_dim` finite numbers (NaN or infinity from a
broken model never reaches a motor), else clipped per dimension to ``[action_low, action_high]`` and
then to at most ``max_action_step`` away from the previous command (the rate limit). Both are convex
constraints around a previous command that is itself inside the bounds, so the result is inside
both. After `reset` (episode start, after a stop) the previous command is the safe action, which is
what the robot was last sent.
"""
from __future__ import annotations

import numpy as np

from tensorguard_crypto.refusal import Reason, Refusal
from tensorguard_learning.envelope import OperatingEnvelope


class ActionRefused(Refusal):
    """A model output that must not be sent (raised with its reason)."""


class ActionGuard:
    """Clips and rate-limits model outputs to the envelope's commanding limits (see module docstring)."""

    def __init__(self, envelope: OperatingEnvelope) -> None:
        self.low = np.asarray(envelope.action_low, dtype=np.float64)
        self.high = np.asarray(envelope.action_high, dtype=np.float64)
        self.step = np.asarray(envelope.max_action_step, dtype=np.float64)
        self.safe = np.asarray(envelope.safe_action, dtype=np.float64)
        self.previous = self.safe.copy()

    def reset(self) -> None:
        """Rate-limit the next command from the safe action (the robot's last command after a stop)."""
        self.previous = self.safe.copy()

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """The command to send for model output `raw`; ActionRefused if `raw` is not finite or the wrong size."""
        values = np.asarray(raw, dtype=np.float64).ravel()
        if values.shape != self.safe.shape:
            raise ActionRefused(f'model output has {values.size} values, the robot takes {self.safe.size}',
                                reason=Reason.SHAPE_MISMATCH)
        if not np.all(np.isfinite(values)):
            raise ActionRefused(f'model output {values.tolist()} is not finite', reason=Reason.MALFORMED_MODEL)
        bounded = np.clip(values, self.low, self.high)
        command = np.clip(bounded, self.previous - self.step, self.previous + self.step)
        self.previous = command
        return command.copy()
