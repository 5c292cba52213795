"""EpisodeAligner: demonstrations from separately stamped standard-message streams and episode markers."""
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from tensorguard_edge.alignment import EpisodeAligner
from tensorguard_edge.robot_inputs import source_sample
from tensorguard_edge.streams import FLOAT64_ARRAY, JOINT_STATE, MappingError, SourceSpec, StreamError, StreamMapping

PERIOD_NS = 20_000_000  # 50 Hz
JITTER_NS = 3_000_000  # below the tolerance; a neighbour frame is always beyond it
MAPPING = StreamMapping(
    sources=(SourceSpec('arm', 'joint_states', JOINT_STATE, joints=('b', 'a')),
             SourceSpec('command', 'forward_position_controller/commands', FLOAT64_ARRAY)),
    observation=('arm:position', 'arm:velocity', 'arm:position@prev'), action='command:data', tolerance_s=0.008)


def joint_state(i: int, stamp: int) -> JointState:
    msg = JointState(name=['a', 'b', 'c'], position=[i + 0.25, i + 0.5, 99.0], velocity=[-i, -i - 0.5, 99.0])
    msg.header.stamp = Time(sec=stamp // 10**9, nanosec=stamp % 10**9)
    return msg


def expected_frame(i: int) -> tuple[list[float], list[float]]:
    """Frame i's (arm:position, arm:velocity) after picking joints b, a."""
    return [i + 0.5, i + 0.25], [-i - 0.5, -i]


def feed(aligner: EpisodeAligner, source: str, msg, stamp: int) -> None:
    aligner.add(source, *source_sample(MAPPING, MAPPING.source(source), msg, stamp))


@st.composite
def recordings(draw):
    """Episodes of 50 Hz frames with gaps between them, jittered stamps, dropped commands and an
    arbitrary interleaving of the three streams (each stream in its own order, as DDS keeps it)."""
    lengths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=3))
    gaps = draw(st.lists(st.integers(1, 3), min_size=len(lengths) + 1, max_size=len(lengths) + 1))
    episodes, frame = [], gaps[0]
    for length, gap in zip(lengths, gaps[1:]):
        episodes.append(range(frame, frame + length))
        frame += length + gap
    total = frame + 2
    jitter = draw(st.lists(st.integers(-JITTER_NS, JITTER_NS), min_size=2 * total, max_size=2 * total))
    inside = [i for e in episodes for i in e]
    dropped = draw(st.sets(st.sampled_from(inside), max_size=len(inside)))
    success = draw(st.lists(st.booleans(), min_size=len(episodes), max_size=len(episodes)))
    return episodes, total, jitter, dropped, success, draw(st.randoms(use_true_random=False))


@settings(max_examples=150, deadline=None)
@given(recordings())
def test_jittered_reordered_streams_become_exactly_the_expected_demonstrations(recording):
    episodes, total, jitter, dropped, success, rng = recording
    done = []
    aligner = EpisodeAligner(MAPPING, done.append, state_dim=6, action_dim=1)
    arm = [('arm', joint_state(i, i * PERIOD_NS + jitter[i]), i * PERIOD_NS + jitter[i]) for i in range(total)]
    command = [('command', Float64MultiArray(data=[10.0 * i + 1]), i * PERIOD_NS + jitter[total + i])
               for i in range(total) if i not in dropped]
    markers = []
    for k, (frames, ok) in enumerate(zip(episodes, success)):
        markers.append(('start', (frames[0] * PERIOD_NS - PERIOD_NS // 2, f'task-{k}', k)))
        markers.append(('end', ((frames[-1] + 1) * PERIOD_NS - PERIOD_NS // 2, ok, k)))
    streams = [arm, command, markers]
    while any(streams):
        stream = rng.choice([s for s in streams if s])
        kind, payload, *stamp = stream.pop(0)
        if kind == 'start':
            aligner.start(*payload)
        elif kind == 'end':
            aligner.end(*payload)
        else:
            feed(aligner, kind, payload, stamp[0])

    expected = []
    for k, (frames, ok) in enumerate(zip(episodes, success)):
        kept = [i for i in frames if i not in dropped]
        if not ok or not kept:
            continue
        states = []
        for n, i in enumerate(kept):
            position, velocity = expected_frame(i)
            states.append(position + velocity + expected_frame(kept[n - 1] if n else i)[0])
        expected.append((f'task-{k}', k, states, [[10.0 * i + 1] for i in kept]))
    assert [(d.task, d.episode_index, d.observation_state.tolist(), d.action.tolist()) for d in done] == expected
    assert all(d.observation_state.dtype == np.float32 for d in done)
    recorded_frames = [i for frames, ok in zip(episodes, success) if ok for i in frames]
    assert aligner.counts['frame_unaligned'] == len([i for i in recorded_frames if i in dropped])
    assert aligner.counts['episode_failed'] == success.count(False)


def test_a_sample_beyond_the_tolerance_is_never_paired():
    done = []
    aligner = EpisodeAligner(MAPPING, done.append)
    aligner.start(0, 'push', 0)
    for i in range(5):
        feed(aligner, 'arm', joint_state(i, i * PERIOD_NS), 0)
        feed(aligner, 'command', Float64MultiArray(data=[i]), i * PERIOD_NS + 9_000_000)  # 9 ms > 8 ms
    aligner.end(5 * PERIOD_NS, True, 0)
    aligner.flush()
    assert done == [] and aligner.counts['frame_unaligned'] == 5 and aligner.counts['episode_empty'] == 1


def test_prev_starts_from_the_frame_itself_in_every_episode():
    done = []
    aligner = EpisodeAligner(MAPPING, done.append)
    for k in range(2):
        aligner.start(k * 10 * PERIOD_NS, 'push', k)
        for i in range(k * 10, k * 10 + 3):
            feed(aligner, 'arm', joint_state(i, i * PERIOD_NS), 0)
            feed(aligner, 'command', Float64MultiArray(data=[i]), i * PERIOD_NS)
        aligner.end(k * 10 * PERIOD_NS + 3 * PERIOD_NS, True, k)
    aligner.flush()
    assert [d.observation_state[0, 4:].tolist() for d in done] == [expected_frame(0)[0], expected_frame(10)[0]]
    assert done[1].observation_state[2, 4:].tolist() == expected_frame(11)[0]
    np.testing.assert_array_equal(done[0].timestamp, np.float32([0.0, 0.02, 0.04]))


def test_an_episode_completes_when_every_stream_passed_its_end_or_after_the_settle_timeout():
    now = [0.0]
    done = []
    aligner = EpisodeAligner(MAPPING, done.append, settle_timeout_s=2.0, clock=lambda: now[0])
    aligner.start(0, 'push', 0)
    feed(aligner, 'arm', joint_state(0, 0), 0)
    feed(aligner, 'command', Float64MultiArray(data=[1.0]), 0)
    aligner.end(PERIOD_NS, True, 0)
    feed(aligner, 'arm', joint_state(5, 5 * PERIOD_NS), 0)
    assert done == []  # the command stream may still deliver a sample that aligns
    now[0] = 1.9
    aligner.expire()
    assert done == []
    now[0] = 2.0
    aligner.expire()
    assert len(done) == 1 and done[0].num_frames == 1


def test_latest_builds_the_live_observation_with_the_same_layout():
    aligner = EpisodeAligner(MAPPING, lambda _demo: None)
    assert aligner.latest() is None
    aligner.start(0, 'push', 0)
    for i in range(3):
        feed(aligner, 'arm', joint_state(i, i * PERIOD_NS), 0)
        feed(aligner, 'command', Float64MultiArray(data=[i]), i * PERIOD_NS)
    feed(aligner, 'arm', joint_state(3, 3 * PERIOD_NS), 0)
    stamp, observation = aligner.latest()
    assert stamp == 3 * PERIOD_NS
    assert observation.tolist() == sum(expected_frame(3), []) + expected_frame(2)[0]


def test_markers_out_of_place_are_refused_with_a_reason():
    aligner = EpisodeAligner(MAPPING, lambda _demo: None)
    for call, reason in [(lambda: aligner.end(0, True, 0), 'no_episode'),
                         (lambda: aligner.start(0, '', 0), 'malformed_marker')]:
        with pytest.raises(StreamError) as error:
            call()
        assert error.value.reason == reason
    aligner.start(100, 'push', 1)
    for call, reason in [(lambda: aligner.start(200, 'push', 2), 'episode_running'),
                         (lambda: aligner.end(300, True, 7), 'no_episode'),
                         (lambda: aligner.end(50, True, 1), 'malformed_marker')]:
        with pytest.raises(StreamError) as error:
            call()
        assert error.value.reason == reason
    aligner.end(300, True, 1)
    with pytest.raises(StreamError) as error:
        aligner.start(200, 'push', 2)
    assert error.value.reason == 'malformed_marker'


@pytest.mark.parametrize('msg', [
    JointState(name=['a', 'c'], position=[1.0, 2.0], velocity=[0.0, 0.0]),  # joint b missing
    JointState(name=['a', 'b'], position=[1.0, 2.0], velocity=[]),  # no velocities
    JointState(name=['a', 'b'], position=[1.0, float('nan')], velocity=[0.0, 0.0]),
])
def test_malformed_messages_are_refused_with_a_reason(msg):
    with pytest.raises(StreamError) as error:
        source_sample(MAPPING, MAPPING.source('arm'), msg, 0)
    assert error.value.reason == 'malformed_sample'


def test_a_sample_of_the_wrong_width_is_refused_once_the_width_is_known():
    aligner = EpisodeAligner(MAPPING, lambda _demo: None)
    aligner.add('command', 0, np.zeros(2))  # the first sample fixes the command's width
    with pytest.raises(StreamError) as error:
        aligner.add('command', 1, np.zeros(3))
    assert error.value.reason == 'malformed_sample'


def test_memory_stays_bounded():
    aligner = EpisodeAligner(MAPPING, lambda _demo: None, max_samples=100, retention_s=1.0)
    for i in range(1000):
        feed(aligner, 'arm', joint_state(i, i * PERIOD_NS), 0)
    assert len(aligner.stamps['arm']) <= 51
    feed(aligner, 'arm', joint_state(0, 0), 0)
    assert aligner.counts['late_sample'] == 1
    aligner.start(1000 * PERIOD_NS, 'push', 0)
    for i in range(1000, 1200):
        feed(aligner, 'arm', joint_state(i, i * PERIOD_NS), 0)
    assert aligner.counts['episode_abandoned'] == 1 and aligner.running is None
    assert len(aligner.stamps['arm']) <= 100


def test_mapping_parameters_are_validated_with_clear_errors():
    params = {'inputs.sources': ['arm'], 'inputs.arm.topic': 'joint_states', 'inputs.arm.type': JOINT_STATE,
              'inputs.arm.joints': ['a', 'b'], 'inputs.observation': ['arm:position'], 'inputs.action': 'arm:velocity'}
    mapping = StreamMapping.from_parameters(params)
    assert (mapping.state_dim, mapping.action_dim) == (2, 2)
    with pytest.raises(MappingError, match='model expects 39'):
        mapping.check_dims(39, 2)
    for change, message in [({'inputs.arm.type': 'std_msgs/msg/String'}, 'is not one of'),
                            ({'inputs.observation': ['arm:pose']}, 'has fields position, velocity, effort'),
                            ({'inputs.observation': ['hand:position']}, "no source named 'hand'"),
                            ({'inputs.observation': ['arm:position@prev']}, 'frame clock'),
                            ({'inputs.action': 'arm'}, 'must be "<source>:<field>"'),
                            ({'inputs.tolerance_s': 0.0}, 'tolerance_s'),
                            ({'inputs.sources': []}, 'no sources')]:
        with pytest.raises(MappingError, match=message):
            StreamMapping.from_parameters({**params, **change})
    with pytest.raises(MappingError, match='inputs.arm.topic is not set'):
        StreamMapping.from_parameters({k: v for k, v in params.items() if k != 'inputs.arm.topic'})
