"""Which standard topics make a robot's observation and action (ROS-free, so it is tested without DDS).

A `StreamMapping` names the robot's source topics (`SourceSpec`: a topic, one of the standard
message types below, and for joint messages the joints to pick) and lays the observation out as
``"<source>:<field>"`` entries concatenated in order (``@prev``: the value of the previous aligned
frame of the episode, its own value on the first frame, as Meta-World's reset does). The first
entry's source is the frame clock; every other source must have a sample within ``tolerance_s`` of
each clock sample, or the frame is dropped and counted (`alignment.EpisodeAligner`).

The edge node builds it from its ``inputs.*`` parameters (docs/robot-inputs.md); the policy node
and bag import build the same mapping from the same parameters.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tensorguard_crypto.refusal import Refusal

JOINT_STATE = 'sensor_msgs/msg/JointState'
POSE_STAMPED = 'geometry_msgs/msg/PoseStamped'
POINT_STAMPED = 'geometry_msgs/msg/PointStamped'
FLOAT64_ARRAY = 'std_msgs/msg/Float64MultiArray'
JOINT_TRAJECTORY = 'trajectory_msgs/msg/JointTrajectory'

# Field selectors per type and their widths (None: the number of joints, or of values, in a message).
FIELDS: dict[str, dict[str, int | None]] = {
    JOINT_STATE: {'position': None, 'velocity': None, 'effort': None},
    POSE_STAMPED: {'position': 3, 'orientation': 4, 'pose': 7},
    POINT_STAMPED: {'point': 3},
    FLOAT64_ARRAY: {'data': None},
    JOINT_TRAJECTORY: {'positions': None},
}
JOINT_TYPES = frozenset({JOINT_STATE, JOINT_TRAJECTORY})
HEADERLESS_TYPES = frozenset({FLOAT64_ARRAY})
PREV_SUFFIX = '@prev'
_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')


class StreamError(Refusal):
    """A sample, marker or mapping that cannot be used: malformed or out of place (raised with its reason)."""


class MappingError(ValueError):
    """An invalid stream mapping (a configuration error, reported when the node configures)."""


@dataclass(frozen=True)
class SourceSpec:
    """One source topic: its name in the layout, topic (relative: the robot namespace applies), message
    type, and for JointState/JointTrajectory the joints to pick by name, in this order (empty: all)."""

    name: str
    topic: str
    type: str
    joints: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise MappingError(f'source name {self.name!r} must be a letter then letters, digits or _')
        if not self.topic:
            raise MappingError(f'source {self.name!r}: topic is empty')
        if self.type not in FIELDS:
            raise MappingError(f'source {self.name!r}: type {self.type!r} is not one of {", ".join(FIELDS)}')
        if self.joints and self.type not in JOINT_TYPES:
            raise MappingError(f'source {self.name!r}: joints apply only to JointState and JointTrajectory')
        if len(set(self.joints)) != len(self.joints):
            raise MappingError(f'source {self.name!r}: joints {list(self.joints)} name a joint twice')

    def width(self, selector: str) -> int | None:
        """Values of `selector` per message (None: as many as the message carries)."""
        width = FIELDS[self.type][selector]
        if width is None and self.type in JOINT_TYPES and self.joints:
            return len(self.joints)
        return width


@dataclass(frozen=True)
class Entry:
    """One parsed layout entry ``<source>:<field>[@prev]``."""

    source: str
    field: str
    prev: bool = False

    @classmethod
    def parse(cls, text: str) -> Entry:
        """Parse one layout entry; MappingError names what is wrong with it."""
        body, prev = (text[:-len(PREV_SUFFIX)], True) if text.endswith(PREV_SUFFIX) else (text, False)
        source, sep, selector = body.partition(':')
        if not sep or not source or not selector:
            raise MappingError(f'layout entry {text!r} must be "<source>:<field>" or "<source>:<field>@prev"')
        return cls(source, selector, prev)


@dataclass(frozen=True)
class StreamMapping:
    """Sources, the observation layout, the action entry and the alignment tolerance of one robot."""

    sources: tuple[SourceSpec, ...]
    observation: tuple[str, ...]
    action: str
    tolerance_s: float = 0.02
    entries: tuple[Entry, ...] = field(init=False, repr=False, compare=False)
    action_entry: Entry = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.sources:
            raise MappingError('no sources: name the robot topics in inputs.sources')
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise MappingError(f'sources {names} name a source twice')
        if not self.observation:
            raise MappingError('observation layout is empty')
        if not 0.0 < self.tolerance_s <= 1.0:
            raise MappingError(f'tolerance_s must be in (0, 1] seconds, got {self.tolerance_s}')
        entries = tuple(Entry.parse(text) for text in self.observation)
        action = Entry.parse(self.action)
        if action.prev:
            raise MappingError(f'action {self.action!r} cannot be @prev')
        for entry in (*entries, action):
            spec = self.source(entry.source)
            if entry.field not in FIELDS[spec.type]:
                raise MappingError(f'{entry.source}:{entry.field}: {spec.type} has fields '
                                   f'{", ".join(FIELDS[spec.type])}')
        if entries[0].prev:
            raise MappingError('the first observation entry is the frame clock and cannot be @prev')
        object.__setattr__(self, 'entries', entries)
        object.__setattr__(self, 'action_entry', action)

    def source(self, name: str) -> SourceSpec:
        """The source called `name`; MappingError if there is none."""
        for spec in self.sources:
            if spec.name == name:
                return spec
        raise MappingError(f'no source named {name!r} (sources: {", ".join(s.name for s in self.sources)})')

    @property
    def clock(self) -> str:
        """The source whose samples define the frames (the first observation entry's)."""
        return self.entries[0].source

    @property
    def used_sources(self) -> tuple[str, ...]:
        """Sources the observation or action reads, in declaration order."""
        used = {e.source for e in (*self.entries, self.action_entry)}
        return tuple(s.name for s in self.sources if s.name in used)

    def fields_of(self, source: str) -> tuple[str, ...]:
        """The fields of `source` the mapping reads, in first-use order: a sample of `source` is
        these fields' values concatenated."""
        fields: list[str] = []
        for entry in (*self.entries, self.action_entry):
            if entry.source == source and entry.field not in fields:
                fields.append(entry.field)
        return tuple(fields)

    def _dim(self, entries: tuple[Entry, ...]) -> int | None:
        widths = [self.source(e.source).width(e.field) for e in entries]
        return None if None in widths else sum(widths)

    @property
    def state_dim(self) -> int | None:
        """Length of the observation (None while it depends on how many values messages carry)."""
        return self._dim(self.entries)

    @property
    def action_dim(self) -> int | None:
        """Length of the action (None while it depends on how many values messages carry)."""
        return self._dim((self.action_entry,))

    def check_dims(self, state_dim: int, action_dim: int) -> None:
        """MappingError if the mapping's known dimensions differ from the model's."""
        for what, mine, theirs in (('observation', self.state_dim, state_dim), ('action', self.action_dim, action_dim)):
            if mine is not None and mine != theirs:
                raise MappingError(f'the {what} layout has {mine} values but the model expects {theirs}')

    @classmethod
    def from_parameters(cls, params: Mapping[str, Any], prefix: str = 'inputs.') -> StreamMapping:
        """Build from flat parameter values (``inputs.sources``, ``inputs.<name>.topic|type|joints``,
        ``inputs.observation``, ``inputs.action``, ``inputs.tolerance_s``); MappingError names what is
        missing or wrong."""
        def get(name: str) -> Any:
            if name not in params:
                raise MappingError(f'parameter {prefix}{name} is not set')
            return params[name]

        params = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
        sources = tuple(SourceSpec(name=name, topic=get(f'{name}.topic'), type=get(f'{name}.type'),
                                   joints=tuple(params.get(f'{name}.joints') or ()))
                        for name in get('sources'))
        return cls(sources=sources, observation=tuple(get('observation')), action=get('action'),
                   tolerance_s=float(params.get('tolerance_s', 0.02)))
