"""Assemble episodes from a robot's frame streams (ROS-free, so it is tested without DDS).

Observations, actions and episode events arrive on separate topics, and DDS orders messages only
within one topic: a frame may overtake its episode's ``begin`` and an ``end`` may overtake the
last frames. Every frame therefore names its episode; the assembler keeps each episode's pieces
until it has the begin (task), the end (frame count, success) and every frame of both streams,
then emits it. Episodes that stay incomplete past a timeout are dropped and counted, never merged
into another one.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tensorguard_crypto.refusal import Refusal
from tensorguard_learning.demonstrations import Demonstration


class StreamError(Refusal):
    """A stream message that cannot belong to any episode: malformed or out of place (raised with its reason)."""


@dataclass
class _Pending:
    first_seen: float
    task: str | None = None
    states: dict[int, np.ndarray] = field(default_factory=dict)
    actions: dict[int, np.ndarray] = field(default_factory=dict)
    expected_frames: int | None = None
    success: bool = False


class EpisodeAssembler:
    """Turns per-frame observation/action messages and begin/end events into Demonstrations."""

    def __init__(self, on_episode: Callable[[Demonstration], None], state_dim: int, action_dim: int,
                 max_frames: int = 10_000, max_pending: int = 8, incomplete_timeout_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_episode = on_episode
        self.state_dim = state_dim
        self.action_dim = action_dim
        self.max_frames = max_frames
        self.max_pending = max_pending
        self.incomplete_timeout_s = incomplete_timeout_s
        self.clock = clock
        self.pending: dict[int, _Pending] = {}
        self.failed_episodes = 0
        self.abandoned_episodes = 0

    def on_event(self, payload: str) -> None:
        """Handle one ``episode_events`` JSON message."""
        try:
            event = json.loads(payload)
            kind, episode = event['event'], event['episode']
        except (ValueError, KeyError, TypeError) as exc:
            raise StreamError(f'not an episode event: {exc}', reason='malformed_event') from None
        if not isinstance(episode, int) or episode < 0:
            raise StreamError('episode must be a non-negative integer', reason='malformed_event')
        if kind == 'begin':
            task = event.get('task')
            if not isinstance(task, str) or not task:
                raise StreamError('begin event needs a non-empty task', reason='malformed_event')
            self._slot(episode).task = task
        elif kind == 'end':
            frames = event.get('frames')
            if not isinstance(frames, int) or not 0 <= frames <= self.max_frames:
                raise StreamError(f'end event frames must be 0..{self.max_frames}', reason='malformed_event')
            slot = self._slot(episode)
            slot.expected_frames = frames
            slot.success = bool(event.get('success', False))
        else:
            raise StreamError(f'unknown event {kind!r}', reason='malformed_event')
        self._try_complete(episode)

    def on_observation(self, episode: int, frame_index: int, values: np.ndarray) -> None:
        """Handle one observation frame."""
        self._add(episode, frame_index, values, self.state_dim, 'observation')

    def on_action(self, episode: int, frame_index: int, values: np.ndarray) -> None:
        """Handle one action frame."""
        self._add(episode, frame_index, values, self.action_dim, 'action')

    def expire(self) -> None:
        """Drop episodes that have waited too long for their pieces."""
        now = self.clock()
        for episode in [e for e, p in self.pending.items() if now - p.first_seen > self.incomplete_timeout_s]:
            del self.pending[episode]
            self.abandoned_episodes += 1

    def _slot(self, episode: int) -> _Pending:
        if episode not in self.pending:
            if len(self.pending) >= self.max_pending:
                oldest = min(self.pending, key=lambda e: self.pending[e].first_seen)
                del self.pending[oldest]
                self.abandoned_episodes += 1
            self.pending[episode] = _Pending(self.clock())
        return self.pending[episode]

    def _add(self, episode: int, index: int, values: np.ndarray, dim: int, what: str) -> None:
        if episode < 0:
            raise StreamError(f'{what} frame names episode {episode}', reason='malformed_frame')
        if not 0 <= index < self.max_frames:
            raise StreamError(f'{what} frame index {index} outside 0..{self.max_frames - 1}', reason='malformed_frame')
        if values.shape != (dim,) or not np.all(np.isfinite(values)):
            raise StreamError(f'{what} must be {dim} finite values, got shape {values.shape}', reason='malformed_frame')
        slot = self._slot(episode)
        (slot.states if what == 'observation' else slot.actions)[index] = values.astype(np.float32)
        self._try_complete(episode)

    def _try_complete(self, episode: int) -> None:
        slot = self.pending[episode]
        n = slot.expected_frames
        if n is None or slot.task is None:
            return
        if not slot.success or n == 0:
            del self.pending[episode]
            self.failed_episodes += 1
            return
        indices = range(n)
        if any(i not in slot.states or i not in slot.actions for i in indices):
            return
        del self.pending[episode]
        self.on_episode(Demonstration(
            task=slot.task, observation_state=np.stack([slot.states[i] for i in indices]),
            action=np.stack([slot.actions[i] for i in indices]), episode_index=episode))
