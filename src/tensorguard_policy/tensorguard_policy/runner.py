"""PolicyController: what the policy node does each control period, without ROS.

It holds the model the robot runs, verified by `tensorguard_learning.deployment.verify_deployed_model`
(the same check the edge client makes), and at every `tick` decides what to send:

- nothing, while it is not driving: disabled by the human, no autonomous episode running, no model,
  or the running model was rolled back;
- the safe action, once, when it stops driving for any of those reasons, when the newest
  observation's stamp is more than ``watchdog_periods`` control periods away from the node's clock
  (the watchdog: a stalled or delayed source, or a source on a clock the robot does not share), or
  when the model's output is refused by the `ActionGuard` (counted by reason);
- otherwise the model's action for the newest observation, clipped and rate-limited by the guard.

Models. A newly verified model replaces the running one at once while no episode runs, otherwise it
waits and takes over when the episode ends, so an episode is driven by one model from start to end.
A rollback of the running model (the gate re-issues its parent) stops the policy at once: the rest of
that episode is not driven, and the re-issued model drives from the next one. A model announced
for other robots only (a canary elsewhere) is ignored.

Episodes come from the edge node's markers: a START with ``autonomous`` set is an episode the policy
drives, with the marker's task; a demonstration (``autonomous`` false) is never driven.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tensorguard_crypto.refusal import Refusal
from tensorguard_crypto.verify import KeyResolver
from tensorguard_learning.deployment import DeployedModel, verify_deployed_model
from tensorguard_learning.envelope import OperatingEnvelope
from tensorguard_policy.guard import ActionGuard, ActionRefused


@dataclass(frozen=True)
class Episode:
    """The running episode, from its START marker."""

    index: int
    task: str
    autonomous: bool


@dataclass(frozen=True)
class ControllerStatus:
    """A snapshot for the status topic and /diagnostics."""

    mode: str
    enabled: bool
    model_version: int
    pending_version: int
    episode_index: int
    task: str
    commands: int
    watchdog_stops: int
    refusals: dict[str, int]


class PolicyController:
    """One robot's policy: verified model, envelope guard, watchdog and model switching (module docstring)."""

    def __init__(self, keys: KeyResolver, robot_id: str, envelope: OperatingEnvelope, control_period_s: float,
                 state_dim: int | None) -> None:
        self.keys = keys
        self.robot_id = robot_id
        self.envelope = envelope
        self.guard = ActionGuard(envelope)
        self.stale_after_ns = round(envelope.watchdog_periods * control_period_s * 1e9)
        self.dims = (state_dim, envelope.action_dim)
        self.model: DeployedModel | None = None
        self.pending: DeployedModel | None = None
        self.rolled_back = False
        self.enabled = False
        self.episode: Episode | None = None
        self.driving = False
        self.commands = 0
        self.watchdog_stops = 0
        self.refusals: Counter[str] = Counter()

    # Models.
    def offer_model(self, blob: bytes, targets: Sequence[str]) -> DeployedModel | None:
        """Verify a published model; run it now if no episode runs, else from the episode's end.

        Returns the accepted model, or None if it is meant for other robots; raises ModelRefused.
        """
        if targets and self.robot_id not in targets:
            return None
        newest = max((m.version for m in (self.model, self.pending) if m is not None), default=None)
        model = verify_deployed_model(blob, self.keys, newest_version=newest, dims=self.dims)
        if self.model is not None and model.rolled_back_version == self.model.version:
            self.rolled_back = True
        if self.episode is None:
            self._install(model)
        else:
            self.pending = model
        return model

    def _install(self, model: DeployedModel) -> None:
        self.model, self.pending, self.rolled_back = model, None, False
        model.policy.eval()

    # Episodes and the human switch.
    def start_episode(self, index: int, task: str, autonomous: bool) -> None:
        """An episode starts (a START marker); one still running is ended first (its END was missed)."""
        if self.episode is not None:
            self.end_episode()
        self.episode = Episode(index, task, autonomous)
        self.guard.reset()

    def end_episode(self) -> None:
        """The running episode ended (an END marker): a model waiting for the boundary takes over."""
        self.episode = None
        if self.pending is not None:
            self._install(self.pending)
        self.rolled_back = False

    def set_enabled(self, enabled: bool) -> None:
        """The human's switch: a disabled policy sends the safe action once and then nothing."""
        self.enabled = enabled

    # Control.
    def mode(self) -> str:
        """Why the policy is or is not driving, in a word or two."""
        if not self.enabled:
            return 'disabled'
        if self.model is None:
            return 'no_model'
        if self.rolled_back:
            return 'rolled_back'
        if self.episode is None or not self.episode.autonomous:
            return 'idle'
        if self.episode.task not in self.model.policy.cfg.tasks:
            return 'unknown_task'
        return 'driving'

    def tick(self, now_ns: int, observation: tuple[int, np.ndarray] | None) -> np.ndarray | None:
        """The command to publish this control period (None: publish nothing) for the newest observation
        (its stamp and values); `now_ns` is the time on the clock the observations are stamped with."""
        if self.mode() != 'driving':
            return self._stop()
        if observation is None or abs(now_ns - observation[0]) > self.stale_after_ns:
            if self.driving:
                self.watchdog_stops += 1
            return self._stop()
        raw = self.model.policy.act(observation[1][None, :], self.episode.task)[0]
        try:
            command = self.guard.apply(raw)
        except ActionRefused as exc:
            self.refuse(exc)
            return self._stop()
        self.driving = True
        self.commands += 1
        return command

    def _stop(self) -> np.ndarray | None:
        if not self.driving:
            return None
        self.driving = False
        self.guard.reset()
        return self.guard.safe.copy()

    def refuse(self, refusal: Refusal) -> None:
        """Count one refused input or output under its reason."""
        self.refusals[refusal.reason] += 1

    def status(self) -> ControllerStatus:
        """Snapshot for status messages."""
        episode, mode = self.episode, self.mode()
        return ControllerStatus(
            mode='stale_observation' if mode == 'driving' and not self.driving else mode,
            enabled=self.enabled, model_version=self.model.version if self.model else 0,
            pending_version=self.pending.version if self.pending else 0,
            episode_index=episode.index if episode else 0, task=episode.task if episode else '',
            commands=self.commands, watchdog_stops=self.watchdog_stops, refusals=dict(self.refusals))
