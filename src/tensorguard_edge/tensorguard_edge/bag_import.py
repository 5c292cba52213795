"""Demonstrations from rosbag2 recordings (MCAP or sqlite3), with the robot's own stream mapping.

A bag recorded on a robot holds the topics its edge node records from and the edge node's
``episode_markers``. Import reads the raw CDR of those topics with the `rosbags` library, turns each
message into a real ROS message (`rclpy.serialization.deserialize_message`), and feeds it through
the same code as live recording: `robot_inputs.source_sample` (headerless types stamped with the
recorded log time, as live they take the DDS source time) and the `EpisodeAligner`, whose
demonstrations go into the robot's store through `EdgeClient.add_demonstration`. Episodes driven by
the policy node (``autonomous`` markers) are outcomes, not demonstrations, and are skipped, as the
edge node does. Refused samples and markers and dropped frames are counted by reason.

A bag that cannot be used is refused before anything of it is stored (its episodes are stored once
the whole bag has been read), naming what is wrong: a missing topic, a topic of another type than
the mapping says, a message that does not deserialize, or a bag that is corrupt or not a bag.
"""
from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from tqdm import tqdm

from tensorguard_crypto.refusal import Reason
from tensorguard_edge.alignment import EpisodeAligner
from tensorguard_edge.robot_inputs import message_class, source_sample, stamp_ns
from tensorguard_edge.streams import StreamError, StreamMapping
from tensorguard_learning.demonstrations import Demonstration
from tensorguard_msgs.msg import EpisodeMarker

MARKERS_TOPIC = 'episode_markers'  # relative, as the edge node publishes it
MARKER_TYPE = 'tensorguard_msgs/msg/EpisodeMarker'
# What rosbags and its storage backends raise on bytes that are not a bag: its own ReaderError, and for
# damaged files whatever the parser hits (sqlite3.DatabaseError, struct.error, OverflowError, ...).
_CORRUPT = Exception


class BagImportError(ValueError):
    """A bag cannot be imported (the message names the bag and what is wrong with it)."""


@dataclass
class ImportSummary:
    """What an import did: episodes stored, messages read, and everything dropped, by reason."""

    bags: int = 0
    messages: int = 0
    episodes: int = 0
    frames: int = 0
    autonomous_skipped: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        """The summary an operator reads."""
        dropped = ', '.join(f'{reason} x{count}' for reason, count in sorted(self.dropped.items())) or 'none'
        return [f'imported {self.episodes} episodes ({self.frames} frames) from {self.bags} bag(s), '
                f'{self.messages} messages read',
                f'policy-driven episodes skipped: {self.autonomous_skipped}',
                f'dropped: {dropped}']


def resolve_topic(topic: str, namespace: str) -> str:
    """The absolute name of a robot topic: relative names take the robot namespace, as a node's do."""
    return topic if topic.startswith('/') else f'{namespace.rstrip("/")}/{topic}'


def _open(path: Path) -> Reader:
    if not path.exists():
        raise BagImportError(f'{path}: no such bag')
    reader = Reader(path)
    try:
        reader.open()
    except _CORRUPT as exc:
        raise BagImportError(f'{path}: not a readable rosbag2 bag ({type(exc).__name__}: {exc})') from None
    return reader


def _connections(reader: Reader, path: Path, mapping: StreamMapping, namespace: str) -> dict:
    """Bag connection of each topic import needs, checked against the mapping's types."""
    wanted = {resolve_topic(mapping.source(name).topic, namespace): (name, mapping.source(name).type)
              for name in mapping.used_sources}
    wanted[resolve_topic(MARKERS_TOPIC, namespace)] = (None, MARKER_TYPE)
    found = {}
    for connection in reader.connections:
        if connection.topic in wanted:
            name, type_name = wanted[connection.topic]
            if connection.msgtype != type_name:
                raise BagImportError(f'{path}: topic {connection.topic} is {connection.msgtype} in the bag, '
                                     f'but the mapping reads it as {type_name}')
            if connection.ext.serialization_format != 'cdr':
                raise BagImportError(f'{path}: topic {connection.topic} is serialized as '
                                     f'{connection.ext.serialization_format}, not cdr')
            found[connection.id] = (connection.topic, name, type_name)
    missing = sorted(set(wanted) - {topic for topic, _, _ in found.values()})
    if missing:
        present = ', '.join(sorted({c.topic for c in reader.connections})) or 'none'
        raise BagImportError(f'{path}: the bag has no topic {", ".join(missing)} (it has: {present}); '
                             f'record every source of the mapping and {MARKERS_TOPIC} (or was it recorded under '
                             'another namespace?)')
    return found


def _messages(reader: Reader, path: Path, connections: dict,
              progress: bool) -> Iterator[tuple[str, str | None, str, int, bytes]]:
    chosen = [c for c in reader.connections if c.id in connections]
    bar = tqdm(total=sum(c.msgcount for c in chosen), desc=path.name, unit='msg', file=sys.stderr,
               disable=not progress)
    try:
        for connection, log_time, raw in reader.messages(connections=chosen):
            topic, name, type_name = connections[connection.id]
            bar.update()
            yield topic, name, type_name, log_time, raw
    except _CORRUPT as exc:
        raise BagImportError(f'{path}: the bag is corrupt ({type(exc).__name__}: {exc})') from None
    finally:
        bar.close()


def import_bag(path: str | Path, mapping: StreamMapping, namespace: str, store: Callable[[Demonstration], None],
               state_dim: int, action_dim: int, summary: ImportSummary, progress: bool = True) -> None:
    """Import one bag: once it is read to the end, every successful demonstration episode goes to
    `store` (the robot's `EdgeClient.add_demonstration`); counts go to `summary`."""
    path = Path(path)
    mapping.check_dims(state_dim, action_dim)
    reader = _open(path)
    try:
        connections = _connections(reader, path, mapping, namespace)
        classes = {type_name: EpisodeMarker if type_name == MARKER_TYPE else message_class(type_name)
                   for _, _, type_name in connections.values()}

        demos: list[Demonstration] = []
        aligner = EpisodeAligner(mapping, demos.append, state_dim=state_dim, action_dim=action_dim)
        for topic, source, type_name, log_time, raw in _messages(reader, path, connections, progress):
            summary.messages += 1
            try:
                msg = deserialize_message(raw, classes[type_name])
            except Exception as exc:  # rclpy raises bare exceptions for bytes that are not this type
                raise BagImportError(f'{path}: a message on {topic} at log time {log_time} does not '
                                     f'deserialize as {type_name} ({type(exc).__name__}: {exc})') from None
            try:
                if source is not None:
                    aligner.add(source, *source_sample(mapping, mapping.source(source), msg, log_time))
                elif msg.autonomous:
                    summary.autonomous_skipped += msg.kind == EpisodeMarker.END
                elif msg.kind == EpisodeMarker.START:
                    aligner.start(stamp_ns(msg.header.stamp), msg.task, msg.episode_index)
                else:
                    aligner.end(stamp_ns(msg.header.stamp), msg.success, msg.episode_index)
            except StreamError as exc:
                summary.dropped[str(exc.reason)] += 1
        aligner.flush()
    finally:
        reader.close()
    for reason, count in aligner.counts.items():
        summary.dropped[str(reason)] += count
    for demo in demos:
        try:
            store(demo)
        except ValueError as exc:
            summary.dropped[Reason.DEMONSTRATION_REFUSED] += 1
            print(f'{path}: episode {demo.episode_index} refused by the store: {exc}', file=sys.stderr)
            continue
        summary.episodes += 1
        summary.frames += demo.num_frames
    summary.bags += 1
