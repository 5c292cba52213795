"""Frames from separately stamped source streams, and demonstrations from frames (ROS-free).

Every source sample arrives with its stamp (header stamp; DDS source time or bag time for
headerless types); DDS orders messages only within one topic, so sources and episode markers
interleave arbitrarily. The aligner keeps each source's samples sorted by stamp. A frame is a
sample of the clock source (the first observation entry's); it is kept only if every other source
has a sample within ``tolerance_s`` of its stamp (the nearest one is used), else it is counted as
``frame_unaligned`` and dropped, never paired with a far sample. Frames whose clock stamp lies in
[start, end) of an episode form its demonstration, which is emitted once every source has a sample
past ``end + tolerance`` (so nothing that could still align is missing) or, live, once
``settle_timeout_s`` has passed since the end marker.

Memory is bounded: samples older than the earliest pending episode (or than ``retention_s`` before
the newest sample when none is pending) are dropped, and a source buffer past ``max_samples``
abandons the episode that holds it (counted). `latest` builds the live observation with the same
code, for the policy node.
"""
from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from tensorguard_crypto.refusal import Reason
from tensorguard_edge.streams import Entry, StreamError, StreamMapping
from tensorguard_learning.demonstrations import Demonstration

Values = dict[str, np.ndarray]  # one sample of a source: its used fields' values


@dataclass
class _Episode:
    index: int
    task: str
    start_ns: int
    end_ns: int | None = None
    ended_at: float = 0.0


class EpisodeAligner:
    """Turns stamped source samples and start/end markers into `Demonstration`s (see the module doc)."""

    def __init__(self, mapping: StreamMapping, on_episode: Callable[[Demonstration], None],
                 state_dim: int | None = None, action_dim: int | None = None, max_samples: int = 20_000,
                 retention_s: float = 10.0, settle_timeout_s: float = 2.0, max_pending: int = 8,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.mapping = mapping
        self.on_episode = on_episode
        self.state_dim = state_dim
        self.action_dim = action_dim
        self.max_samples = max_samples
        self.retention_ns = int(retention_s * 1e9)
        self.settle_timeout_s = settle_timeout_s
        self.max_pending = max_pending
        self.clock = clock
        self.tolerance_ns = int(round(mapping.tolerance_s * 1e9))
        self.sources = mapping.used_sources
        self.stamps: dict[str, list[int]] = {s: [] for s in self.sources}
        self.samples: dict[str, list[Values]] = {s: [] for s in self.sources}
        self.widths: dict[str, dict[str, int | None]] = {
            s: {f: mapping.source(s).width(f) for f in mapping.fields_of(s)} for s in self.sources}
        self.running: _Episode | None = None
        self.ended: deque[_Episode] = deque()
        self.newest_ns: int | None = None
        self.counts: Counter[str] = Counter()

    # Input.
    def add(self, source: str, stamp_ns: int, values: np.ndarray) -> None:
        """One sample of `source` (its used fields' values concatenated, `StreamMapping.fields_of`)."""
        if source not in self.stamps:
            raise StreamError(f'{source!r} is not a source this mapping reads ({", ".join(self.sources)})',
                              reason=Reason.MALFORMED_SAMPLE)
        split = self._split(source, np.asarray(values, dtype=np.float64).ravel())
        if stamp_ns < self._floor():
            self.counts[Reason.LATE_SAMPLE] += 1
            return
        stamps = self.stamps[source]
        at = bisect.bisect_right(stamps, stamp_ns)
        stamps.insert(at, stamp_ns)
        self.samples[source].insert(at, split)
        self.newest_ns = stamp_ns if self.newest_ns is None else max(self.newest_ns, stamp_ns)
        self._complete()
        self._trim()

    def start(self, stamp_ns: int, task: str, episode_index: int) -> None:
        """Open episode `episode_index` of `task` at `stamp_ns`; refused while one runs."""
        if self.running is not None:
            raise StreamError(f'episode {self.running.index} is still running: end it first',
                              reason=Reason.EPISODE_RUNNING)
        if not task:
            raise StreamError('a start marker needs a task', reason=Reason.MALFORMED_MARKER)
        if self.ended and stamp_ns < self.ended[-1].end_ns:
            raise StreamError(f'episode {episode_index} starts before episode {self.ended[-1].index} ended',
                              reason=Reason.MALFORMED_MARKER)
        self.running = _Episode(index=episode_index, task=task, start_ns=stamp_ns)

    def end(self, stamp_ns: int, success: bool, episode_index: int) -> None:
        """Close the running episode at `stamp_ns`; a failed one is counted and dropped."""
        episode = self.running
        if episode is None or episode.index != episode_index:
            running = 'none' if episode is None else f'episode {episode.index}'
            raise StreamError(f'end of episode {episode_index}, but {running} is running', reason=Reason.NO_EPISODE)
        if stamp_ns < episode.start_ns:
            raise StreamError(f'episode {episode_index} ends before it starts', reason=Reason.MALFORMED_MARKER)
        self.running = None
        if not success:
            self.counts[Reason.EPISODE_FAILED] += 1
        else:
            episode.end_ns, episode.ended_at = stamp_ns, self.clock()
            self.ended.append(episode)
            while len(self.ended) > self.max_pending:
                self.ended.popleft()
                self.counts[Reason.EPISODE_ABANDONED] += 1
            self._complete()
        self._trim()

    def expire(self) -> None:
        """Emit ended episodes whose settle timeout has passed (call periodically when live)."""
        now = self.clock()
        while self.ended and now - self.ended[0].ended_at >= self.settle_timeout_s:
            self._emit(self.ended.popleft())
        self._trim()

    def flush(self) -> None:
        """No more input (end of a bag): emit every ended episode; a still running one is abandoned."""
        while self.ended:
            self._emit(self.ended.popleft())
        if self.running is not None:
            self.running = None
            self.counts[Reason.EPISODE_ABANDONED] += 1

    # Live observation.
    def latest(self, lookback: int = 10) -> tuple[int, np.ndarray] | None:
        """The newest aligned observation and its clock stamp (None if there is none yet); @prev
        entries take the previous aligned frame of the running episode, its own values on the first."""
        stamps = self.stamps[self.mapping.clock]
        found: list[tuple[int, dict[str, Values]]] = []
        for at in range(len(stamps) - 1, max(-1, len(stamps) - 1 - lookback), -1):
            frame = self._frame(at, self._observed)
            if frame is not None:
                found.append((stamps[at], frame))
                if len(found) == 2:
                    break
        if not found:
            return None
        stamp, current = found[0]
        episode_start = self.running.start_ns if self.running is not None else None
        previous = current
        if len(found) == 2 and (episode_start is None or found[1][0] >= episode_start):
            previous = found[1][1]
        return stamp, self._compose(self.mapping.entries, current, previous)

    # Internals.
    @property
    def _observed(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.source for e in self.mapping.entries))

    def _split(self, source: str, values: np.ndarray) -> Values:
        """`values` cut into the source's fields; the first sample fixes widths messages decide."""
        widths = self.widths[source]
        known = sum(w for w in widths.values() if w is not None)
        unknown = [f for f, w in widths.items() if w is None]
        rest = values.size - known
        if not np.all(np.isfinite(values)):
            raise StreamError(f'{source}: sample has non-finite values', reason=Reason.MALFORMED_SAMPLE)
        if rest < 0 or (unknown and (rest <= 0 or rest % len(unknown))) or (not unknown and rest):
            raise StreamError(f'{source}: {values.size} values do not fit fields {dict(widths)}',
                              reason=Reason.MALFORMED_SAMPLE)
        for name in unknown:
            widths[name] = rest // len(unknown)
        split, offset = {}, 0
        for name, width in widths.items():
            split[name] = values[offset:offset + width]
            offset += width
        return split

    def _floor(self) -> int:
        """Oldest stamp still needed: the earliest pending episode's start (minus the tolerance),
        or `retention_s` before the newest sample."""
        pending = [*self.ended] + ([self.running] if self.running is not None else [])
        if pending:
            return min(e.start_ns for e in pending) - self.tolerance_ns
        return -2 ** 63 if self.newest_ns is None else self.newest_ns - self.retention_ns

    def _trim(self) -> None:
        while True:
            floor = self._floor()
            for source in self.sources:
                cut = bisect.bisect_left(self.stamps[source], floor)
                del self.stamps[source][:cut], self.samples[source][:cut]
            if all(len(s) <= self.max_samples for s in self.stamps.values()):
                return
            if not self.ended and self.running is None:
                for source in self.sources:
                    excess = max(0, len(self.stamps[source]) - self.max_samples)
                    del self.stamps[source][:excess], self.samples[source][:excess]
                return
            # An episode longer than the buffers hold: abandon the oldest pending one.
            self.counts[Reason.EPISODE_ABANDONED] += 1
            if self.ended:
                self.ended.popleft()
            else:
                self.running = None

    def _complete(self) -> None:
        """Emit ended episodes, oldest first, once every source has a sample past end + tolerance."""
        while self.ended:
            horizon = self.ended[0].end_ns + self.tolerance_ns
            if not all(stamps and stamps[-1] > horizon for stamps in self.stamps.values()):
                return
            self._emit(self.ended.popleft())

    def _frame(self, at: int, sources: tuple[str, ...]) -> dict[str, Values] | None:
        """The samples of `sources` aligned with clock sample `at`, or None if one has none within tolerance."""
        clock = self.mapping.clock
        stamp = self.stamps[clock][at]
        frame = {clock: self.samples[clock][at]}
        for source in sources:
            if source == clock:
                continue
            stamps = self.stamps[source]
            right = bisect.bisect_left(stamps, stamp)
            best = min((i for i in (right - 1, right) if 0 <= i < len(stamps)),
                       key=lambda i: abs(stamps[i] - stamp), default=None)
            if best is None or abs(stamps[best] - stamp) > self.tolerance_ns:
                return None
            frame[source] = self.samples[source][best]
        return frame

    @staticmethod
    def _compose(entries: tuple[Entry, ...], current: dict[str, Values], previous: dict[str, Values]) -> np.ndarray:
        return np.concatenate([(previous if e.prev else current)[e.source][e.field] for e in entries])

    def _frames(self, start_ns: int, end_ns: int) -> Iterator[tuple[int, dict[str, Values] | None]]:
        """(clock stamp, aligned samples of every source or None) of each clock sample in [start, end)."""
        clock = self.stamps[self.mapping.clock]
        for at in range(bisect.bisect_left(clock, start_ns), bisect.bisect_left(clock, end_ns)):
            yield clock[at], self._frame(at, self.sources)

    def aligned_frames(self, start_ns: int, end_ns: int) -> int:
        """How many frames with clock stamps in [start, end) align so far."""
        return sum(frame is not None for _, frame in self._frames(start_ns, end_ns))

    def _emit(self, episode: _Episode) -> None:
        stamps, states, actions = [], [], []
        previous = None
        for stamp, frame in self._frames(episode.start_ns, episode.end_ns):
            if frame is None:
                self.counts[Reason.FRAME_UNALIGNED] += 1
                continue
            states.append(self._compose(self.mapping.entries, frame, previous or frame))
            actions.append(self._compose((self.mapping.action_entry,), frame, frame))
            stamps.append(stamp)
            previous = frame
        if not states:
            self.counts[Reason.EPISODE_EMPTY] += 1
            return
        state, action = np.stack(states).astype(np.float32), np.stack(actions).astype(np.float32)
        if (self.state_dim is not None and state.shape[1] != self.state_dim) or (
                self.action_dim is not None and action.shape[1] != self.action_dim):
            self.counts[Reason.SHAPE_MISMATCH] += 1
            return
        seconds = (np.asarray(stamps, dtype=np.int64) - stamps[0]) / 1e9
        self.on_episode(Demonstration(task=episode.task, observation_state=state, action=action,
                                      timestamp=seconds.astype(np.float32), episode_index=episode.index))
