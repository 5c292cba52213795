"""Demonstration records (LeRobot-style keys) and a crash-safe, size-capped on-disk store.

On-disk format (one append-only file ``demos.tgd`` per store):

    record := MAGIC(4 = b"TGD1") | kind(1) | length(4, little-endian) | payload(length) | SHA-256(32)

The digest covers magic, kind, length and payload. Kinds: BEGIN (episode index, task), FRAME
(one frame, msgpack), COMMIT (episode index, frame count). An episode exists once its COMMIT
record is on disk; the file is fsync'ed after every COMMIT. On open, the log is scanned from the
start and cut at the end of the last COMMIT that is preceded only by valid records: a torn or
half-written tail (killed writer, power loss) is dropped and nothing before it is touched.

Size cap (``max_bytes``, counted on the file): policy ``"drop_oldest"`` (default) rewrites the log
without the oldest committed episodes, atomically (temporary file, fsync, rename, fsync of the
directory), until the new data fits; policy ``"refuse"`` raises ``StoreFullError`` and keeps
everything. An episode larger than the whole cap is always refused.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgpack
import numpy as np

from tensorguard_learning.errors import InvalidDemonstrationError, StoreCorruptError, StoreFullError

STATE_KEY = 'observation.state'
ACTION_KEY = 'action'
IMAGE_PREFIX = 'observation.images.'

_MAGIC = b'TGD1'
_HEADER = struct.Struct('<4sBI')
_DIGEST_BYTES = 32
_KIND_BEGIN, _KIND_FRAME, _KIND_COMMIT = 1, 2, 3
_MAX_RECORD_BYTES = 1 << 30
LOG_NAME = 'demos.tgd'


@dataclass
class Demonstration:
    """One episode: per-frame arrays under LeRobot keys, plus the task name and episode index."""

    task: str
    observation_state: np.ndarray
    action: np.ndarray
    timestamp: np.ndarray | None = None
    images: dict[str, np.ndarray] = field(default_factory=dict)
    episode_index: int = -1

    def __post_init__(self) -> None:
        self.observation_state = np.asarray(self.observation_state, dtype=np.float32)
        self.action = np.asarray(self.action, dtype=np.float32)
        n = self.num_frames
        if not self.task:
            raise InvalidDemonstrationError('task must be a non-empty string')
        if self.observation_state.ndim != 2 or self.action.ndim != 2:
            raise InvalidDemonstrationError(
                f'{STATE_KEY} and {ACTION_KEY} must be 2-D [frames, dim], got '
                f'{self.observation_state.shape} and {self.action.shape}')
        if self.action.shape[0] != n or n == 0:
            raise InvalidDemonstrationError(
                f'episode needs >= 1 frame and equal frame counts, got {n} states and '
                f'{self.action.shape[0]} actions')
        if self.timestamp is None:
            self.timestamp = np.arange(n, dtype=np.float32)
        self.timestamp = np.asarray(self.timestamp, dtype=np.float32)
        if self.timestamp.shape != (n,):
            raise InvalidDemonstrationError(f'timestamp must have shape ({n},), got {self.timestamp.shape}')
        for cam, frames in self.images.items():
            if frames.shape[0] != n or frames.dtype != np.uint8:
                raise InvalidDemonstrationError(
                    f'{IMAGE_PREFIX}{cam} must be uint8 with {n} frames, got {frames.dtype} {frames.shape}')

    @property
    def num_frames(self) -> int:
        """Number of frames in the episode."""
        return int(self.observation_state.shape[0])

    def frames(self) -> Iterator[dict[str, Any]]:
        """Yield frames as dicts with LeRobot keys."""
        for i in range(self.num_frames):
            yield _frame_dict(self, i)

    @classmethod
    def from_frames(cls, frames: list[Mapping[str, Any]], episode_index: int = -1) -> Demonstration:
        """Build an episode from LeRobot-style frame dicts (all with the same task)."""
        if not frames:
            raise InvalidDemonstrationError('an episode needs at least one frame')
        for key in (STATE_KEY, ACTION_KEY, 'task'):
            if key not in frames[0]:
                raise InvalidDemonstrationError(f'frame is missing key {key!r}')
        tasks = {f['task'] for f in frames}
        if len(tasks) != 1:
            raise InvalidDemonstrationError(f'one episode must have one task, got {sorted(tasks)}')
        cams = [k[len(IMAGE_PREFIX):] for k in frames[0] if k.startswith(IMAGE_PREFIX)]
        return cls(
            task=frames[0]['task'],
            observation_state=np.stack([np.asarray(f[STATE_KEY]) for f in frames]),
            action=np.stack([np.asarray(f[ACTION_KEY]) for f in frames]),
            timestamp=np.array([f.get('timestamp', i) for i, f in enumerate(frames)], dtype=np.float32),
            images={c: np.stack([np.asarray(f[IMAGE_PREFIX + c]) for f in frames]) for c in cams},
            episode_index=episode_index,
        )


def _frame_dict(demo: Demonstration, i: int) -> dict[str, Any]:
    frame: dict[str, Any] = {
        STATE_KEY: demo.observation_state[i],
        ACTION_KEY: demo.action[i],
        'timestamp': float(demo.timestamp[i]),
        'frame_index': i,
        'episode_index': demo.episode_index,
        'task': demo.task,
    }
    for cam, frames in demo.images.items():
        frame[IMAGE_PREFIX + cam] = frames[i]
    return frame


def _pack_array(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    return {'dtype': a.dtype.str, 'shape': list(a.shape), 'data': a.tobytes()}


def _unpack_array(d: Mapping[str, Any]) -> np.ndarray:
    return np.frombuffer(d['data'], dtype=np.dtype(d['dtype'])).reshape(d['shape'])


def _encode_record(kind: int, payload: bytes) -> bytes:
    head = _HEADER.pack(_MAGIC, kind, len(payload))
    return head + payload + hashlib.sha256(head + payload).digest()


@dataclass
class _EpisodeSpan:
    episode_index: int
    task: str
    start: int
    end: int
    num_frames: int


class DemonstrationStore:
    """Append-only, crash-safe demonstration log with a size cap (see module docstring)."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int,
                 when_full: Literal['drop_oldest', 'refuse'] = 'drop_oldest') -> None:
        if max_bytes <= 0:
            raise StoreFullError(f'max_bytes must be positive, got {max_bytes}')
        if when_full not in ('drop_oldest', 'refuse'):
            raise StoreFullError(f"when_full must be 'drop_oldest' or 'refuse', got {when_full!r}")
        self.directory = Path(path)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.when_full = when_full
        self._log_path = self.directory / LOG_NAME
        self._lock_fd = os.open(self.directory / '.lock', os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._lock_fd)
            raise StoreCorruptError(f'another process holds the store at {self.directory}') from exc
        self._episodes: list[_EpisodeSpan] = []
        self.dropped_tail_bytes = self._recover()
        self._fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        self._open: _EpisodeSpan | None = None

    def close(self) -> None:
        """Release the file and the writer lock (an open episode is abandoned)."""
        if self._fd >= 0:
            os.close(self._fd)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._fd = -1

    def __enter__(self) -> DemonstrationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recover(self) -> int:
        """Scan the log, index committed episodes, cut the file after the last commit."""
        if not self._log_path.exists():
            return 0
        data = self._log_path.read_bytes()
        good_end = 0
        pos = 0
        current: _EpisodeSpan | None = None
        while pos + _HEADER.size <= len(data):
            magic, kind, length = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + length + _DIGEST_BYTES
            if magic != _MAGIC or length > _MAX_RECORD_BYTES or end > len(data):
                break
            body = data[pos:end - _DIGEST_BYTES]
            if hashlib.sha256(body).digest() != data[end - _DIGEST_BYTES:end]:
                break
            payload = msgpack.unpackb(body[_HEADER.size:], raw=False)
            if kind == _KIND_BEGIN and current is None:
                current = _EpisodeSpan(payload['episode_index'], payload['task'], pos, -1, 0)
            elif kind == _KIND_FRAME and current is not None:
                current.num_frames += 1
            elif kind == _KIND_COMMIT and current is not None and payload['episode_index'] == current.episode_index:
                current.end = end
                self._episodes.append(current)
                current = None
                good_end = end
            else:
                break
            pos = end
        dropped = len(data) - good_end
        if dropped:
            with open(self._log_path, 'r+b') as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        return dropped

    def count(self) -> int:
        """Number of committed episodes."""
        return len(self._episodes)

    def total_frames(self) -> int:
        """Number of frames over committed episodes."""
        return sum(e.num_frames for e in self._episodes)

    def size_bytes(self) -> int:
        """Current size of the log file in bytes."""
        return self._size

    def tasks(self) -> list[str]:
        """Task names of the committed episodes, oldest first."""
        return [e.task for e in self._episodes]

    def begin_episode(self, task: str) -> int:
        """Start a new episode of `task`; returns its episode index."""
        if self._open is not None:
            raise InvalidDemonstrationError('an episode is already open: commit it first')
        if not task:
            raise InvalidDemonstrationError('task must be a non-empty string')
        index = (self._episodes[-1].episode_index + 1) if self._episodes else 0
        self._write(_KIND_BEGIN, {'episode_index': index, 'task': task})
        self._open = _EpisodeSpan(index, task, self._size - self._last_record_len, -1, 0)
        return index

    def append_frame(self, frame: Mapping[str, Any]) -> None:
        """Append one frame (LeRobot keys) to the open episode."""
        if self._open is None:
            raise InvalidDemonstrationError('append_frame needs an open episode (begin_episode)')
        for key in (STATE_KEY, ACTION_KEY):
            if key not in frame:
                raise InvalidDemonstrationError(f'frame is missing key {key!r}')
        if frame.get('task', self._open.task) != self._open.task:
            raise InvalidDemonstrationError(f"frame task {frame['task']!r} != episode task {self._open.task!r}")
        record = {
            STATE_KEY: _pack_array(np.asarray(frame[STATE_KEY], dtype=np.float32)),
            ACTION_KEY: _pack_array(np.asarray(frame[ACTION_KEY], dtype=np.float32)),
            'timestamp': float(frame.get('timestamp', self._open.num_frames)),
            'frame_index': self._open.num_frames,
        }
        for key, value in frame.items():
            if key.startswith(IMAGE_PREFIX):
                image = np.asarray(value)
                if image.dtype != np.uint8:
                    raise InvalidDemonstrationError(f'{key} must be uint8, got {image.dtype}')
                record[key] = _pack_array(image)
        self._write(_KIND_FRAME, record)
        self._open.num_frames += 1

    def commit_episode(self) -> int:
        """Close the open episode durably (fsync); returns its episode index."""
        span = self._open
        if span is None:
            raise InvalidDemonstrationError('commit_episode needs an open episode')
        if span.num_frames == 0:
            raise InvalidDemonstrationError('cannot commit an episode with no frames')
        self._write(_KIND_COMMIT, {'episode_index': span.episode_index, 'num_frames': span.num_frames})
        os.fsync(self._fd)
        span.end = self._size
        self._episodes.append(span)
        self._open = None
        return span.episode_index

    def append_episode(self, demo: Demonstration) -> int:
        """Write a whole episode and commit it; returns its episode index."""
        self.begin_episode(demo.task)
        for frame in demo.frames():
            self.append_frame(frame)
        return self.commit_episode()

    def _write(self, kind: int, payload: dict[str, Any]) -> None:
        record = _encode_record(kind, msgpack.packb(payload, use_bin_type=True))
        if self._size + len(record) > self.max_bytes:
            self._make_room(len(record))
        os.write(self._fd, record)
        self._size += len(record)
        self._last_record_len = len(record)

    def _make_room(self, needed: int) -> None:
        open_bytes = (self._size - self._open.start) if self._open is not None else 0
        if self.when_full == 'refuse' or open_bytes + needed > self.max_bytes:
            raise StoreFullError(
                f'store at {self.directory} is full ({self._size} of {self.max_bytes} bytes, '
                f'policy {self.when_full!r}, {needed} more bytes needed)')
        keep = list(self._episodes)
        kept_bytes = sum(e.end - e.start for e in keep)
        while keep and kept_bytes + open_bytes + needed > self.max_bytes:
            kept_bytes -= keep[0].end - keep[0].start
            keep.pop(0)
        self._rewrite(keep)

    def _rewrite(self, keep: list[_EpisodeSpan]) -> None:
        """Atomically replace the log by the kept episodes plus the open episode's records."""
        with open(self._log_path, 'rb') as f:
            data = f.read()
        tmp = self._log_path.with_suffix('.tmp')
        new_spans: list[_EpisodeSpan] = []
        with open(tmp, 'wb') as out:
            for span in keep:
                start = out.tell()
                out.write(data[span.start:span.end])
                new_spans.append(_EpisodeSpan(span.episode_index, span.task, start, out.tell(), span.num_frames))
            open_start = out.tell()
            if self._open is not None:
                out.write(data[self._open.start:self._size])
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self._log_path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        os.close(self._fd)
        self._fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(self._fd).st_size
        self._episodes = new_spans
        if self._open is not None:
            self._open.start = open_start

    def iter_episodes(self) -> Iterator[Demonstration]:
        """Yield committed episodes, oldest first."""
        with open(self._log_path, 'rb') as f:
            for span in list(self._episodes):
                f.seek(span.start)
                yield _decode_episode(f.read(span.end - span.start), span)


def _decode_episode(blob: bytes, span: _EpisodeSpan) -> Demonstration:
    frames: list[dict[str, Any]] = []
    pos = 0
    while pos < len(blob):
        magic, kind, length = _HEADER.unpack_from(blob, pos)
        end = pos + _HEADER.size + length + _DIGEST_BYTES
        if magic != _MAGIC or hashlib.sha256(blob[pos:end - _DIGEST_BYTES]).digest() != blob[end - _DIGEST_BYTES:end]:
            raise StoreCorruptError(f'episode {span.episode_index} changed on disk after it was indexed')
        if kind == _KIND_FRAME:
            rec = msgpack.unpackb(blob[pos + _HEADER.size:end - _DIGEST_BYTES], raw=False)
            frame = {k: (_unpack_array(v) if isinstance(v, dict) else v) for k, v in rec.items()}
            frame['task'] = span.task
            frames.append(frame)
        pos = end
    return Demonstration.from_frames(frames, episode_index=span.episode_index)
