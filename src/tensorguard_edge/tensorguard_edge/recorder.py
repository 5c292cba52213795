"""Assemble episodes from a robot's frame streams (ROS-free, so it is tested without DDS).

Observations, actions and episode events arrive on separate topics, so their relative order is not
guaranteed: an ``end`` event may overtake the last frames. The assembler keys frames by their
index, completes an episode once every announced frame of both streams is there, and gives up on
an episode that stays incomplete for too long (counted, never silently merged into the next one).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tensorguard_learning.demonstrations import Demonstration


class StreamError(ValueError):
    """A stream message that cannot belong to any episode (malformed or out of place)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f'{reason}: {detail}')
        self.reason = reason


@dataclass
class _OpenEpisode:
    episode: int
    task: str
    started: float
    states: dict[int, np.ndarray] = field(default_factory=dict)
    actions: dict[int, np.ndarray] = field(default_factory=dict)
    expected_frames: int | None = None
    success: bool = False


class EpisodeAssembler:
    """Turns per-frame observation/action messages and begin/end events into Demonstrations."""

    def __init__(self, on_episode: Callable[[Demonstration], None], state_dim: int, action_dim: int,
                 max_frames: int = 10_000, incomplete_timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_episode = on_episode
        self.state_dim = state_dim
        self.action_dim = action_dim
        self.max_frames = max_frames
        self.incomplete_timeout_s = incomplete_timeout_s
        self.clock = clock
        self.current: _OpenEpisode | None = None
        self.failed_episodes = 0
        self.abandoned_episodes = 0

    def on_event(self, payload: str) -> None:
        """Handle one ``episode_events`` JSON message."""
        try:
            event = json.loads(payload)
            kind = event['event']
        except (ValueError, KeyError, TypeError) as exc:
            raise StreamError('malformed_event', f'not an episode event: {exc}') from exc
        if kind == 'begin':
            if self.current is not None:
                self.abandoned_episodes += 1
            task = event.get('task')
            if not isinstance(task, str) or not task:
                raise StreamError('malformed_event', 'begin event needs a non-empty task')
            self.current = _OpenEpisode(int(event.get('episode', -1)), task, self.clock())
        elif kind == 'end':
            if self.current is None:
                raise StreamError('orphan_event', 'end event without a begin')
            frames = event.get('frames')
            if not isinstance(frames, int) or not 0 <= frames <= self.max_frames:
                raise StreamError('malformed_event', f'end event frames must be 0..{self.max_frames}')
            self.current.expected_frames = frames
            self.current.success = bool(event.get('success', False))
            self._try_complete()
        else:
            raise StreamError('malformed_event', f'unknown event {kind!r}')

    def on_observation(self, frame_index: int, values: np.ndarray) -> None:
        """Handle one observation frame."""
        self._add(self._slot().states, frame_index, values, self.state_dim, 'observation')

    def on_action(self, frame_index: int, values: np.ndarray) -> None:
        """Handle one action frame."""
        self._add(self._slot().actions, frame_index, values, self.action_dim, 'action')

    def expire(self) -> None:
        """Abandon an episode that has waited too long for its frames."""
        if self.current is not None and self.clock() - self.current.started > self.incomplete_timeout_s:
            self.abandoned_episodes += 1
            self.current = None

    def _slot(self) -> _OpenEpisode:
        if self.current is None:
            raise StreamError('orphan_frame', 'frame outside an episode')
        return self.current

    def _add(self, frames: dict[int, np.ndarray], index: int, values: np.ndarray, dim: int, what: str) -> None:
        if not 0 <= index < self.max_frames:
            raise StreamError('malformed_frame', f'{what} frame index {index} outside 0..{self.max_frames - 1}')
        if values.shape != (dim,) or not np.all(np.isfinite(values)):
            raise StreamError('malformed_frame', f'{what} must be {dim} finite values, got shape {values.shape}')
        frames[index] = values.astype(np.float32)
        self._try_complete()

    def _try_complete(self) -> None:
        episode = self.current
        if episode is None or episode.expected_frames is None:
            return
        n = episode.expected_frames
        if not episode.success or n == 0:
            self.failed_episodes += 1
            self.current = None
            return
        if len(episode.states) < n or len(episode.actions) < n:
            return
        indices = range(n)
        if any(i not in episode.states or i not in episode.actions for i in indices):
            return
        self.current = None
        self.on_episode(Demonstration(
            task=episode.task,
            observation_state=np.stack([episode.states[i] for i in indices]),
            action=np.stack([episode.actions[i] for i in indices]),
            episode_index=episode.episode))
