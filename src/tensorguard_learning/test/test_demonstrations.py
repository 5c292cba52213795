"""Demonstration records and the crash-safe store."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorguard_learning.demonstrations import LOG_NAME, Demonstration, DemonstrationStore
from tensorguard_learning.errors import InvalidDemonstrationError, StoreCorruptError, StoreFullError


def make_demo(index: int, frames: int = 5, task: str = 'push-v3') -> Demonstration:
    rng = np.random.default_rng(index)
    return Demonstration(task=task, observation_state=rng.normal(size=(frames, 39)),
                         action=rng.uniform(-1, 1, size=(frames, 4)))


def test_roundtrip_with_lerobot_keys(tmp_path):
    demo = make_demo(0)
    demo.images['wrist'] = np.zeros((5, 8, 8, 3), dtype=np.uint8) + 7
    with DemonstrationStore(tmp_path, max_bytes=1 << 20) as store:
        assert store.append_episode(demo) == 0
        assert store.append_episode(make_demo(1, task='door-open-v3')) == 1
    with DemonstrationStore(tmp_path, max_bytes=1 << 20) as store:
        assert store.count() == 2 and store.total_frames() == 10
        got = list(store.iter_episodes())
    np.testing.assert_array_equal(got[0].observation_state, demo.observation_state)
    np.testing.assert_array_equal(got[0].action, demo.action)
    np.testing.assert_array_equal(got[0].images['wrist'], demo.images['wrist'])
    assert [g.task for g in got] == ['push-v3', 'door-open-v3']
    frame = next(got[1].frames())
    assert set(frame) >= {'observation.state', 'action', 'timestamp', 'frame_index', 'episode_index', 'task'}
    assert frame['episode_index'] == 1 and frame['frame_index'] == 0


def test_bad_input_is_named():
    with pytest.raises(InvalidDemonstrationError, match='frame counts'):
        Demonstration('push-v3', np.zeros((3, 39)), np.zeros((2, 4)))
    with pytest.raises(InvalidDemonstrationError, match='missing key'):
        Demonstration.from_frames([{'action': np.zeros(4), 'task': 't'}])


def test_uncommitted_episode_and_torn_tail_are_dropped(tmp_path):
    with DemonstrationStore(tmp_path, max_bytes=1 << 20) as store:
        store.append_episode(make_demo(0))
        store.begin_episode('push-v3')
        store.append_frame(next(make_demo(1).frames()))
    with open(tmp_path / LOG_NAME, 'ab') as f:
        f.write(b'TGD1\x02\xff\xff')
    with DemonstrationStore(tmp_path, max_bytes=1 << 20) as store:
        assert store.count() == 1 and store.dropped_tail_bytes > 0
        assert store.append_episode(make_demo(2)) == 1
        assert [d.num_frames for d in store.iter_episodes()] == [5, 5]


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_any_cut_keeps_exactly_the_episodes_before_it(tmp_path_factory, cut):
    path = tmp_path_factory.mktemp('cut')
    ends = []
    with DemonstrationStore(path, max_bytes=1 << 20) as store:
        for i in range(4):
            store.append_episode(make_demo(i, frames=3))
            ends.append(store.size_bytes())
    log = path / LOG_NAME
    cut = cut % (ends[-1] + 1)
    os.truncate(log, cut)
    with DemonstrationStore(path, max_bytes=1 << 20) as store:
        assert store.count() == sum(e <= cut for e in ends)
        for i, demo in enumerate(store.iter_episodes()):
            np.testing.assert_array_equal(demo.action, make_demo(i, frames=3).action)


def test_flipped_byte_is_detected(tmp_path):
    with DemonstrationStore(tmp_path, max_bytes=1 << 20) as store:
        store.append_episode(make_demo(0))
        first_end = store.size_bytes()
        store.append_episode(make_demo(1))
    data = bytearray((tmp_path / LOG_NAME).read_bytes())
    data[first_end + 40] ^= 0xFF
    (tmp_path / LOG_NAME).write_bytes(bytes(data))
    with DemonstrationStore(tmp_path, max_bytes=1 << 20) as store:
        assert store.count() == 1


def test_size_cap_drop_oldest(tmp_path):
    with DemonstrationStore(tmp_path, max_bytes=1 << 20) as probe:
        probe.append_episode(make_demo(0))
        one = probe.size_bytes()
    (tmp_path / LOG_NAME).unlink()
    with DemonstrationStore(tmp_path, max_bytes=3 * one + 10) as store:
        for i in range(5):
            store.append_episode(make_demo(i))
        assert store.count() == 3 and store.size_bytes() <= 3 * one + 10
        kept = list(store.iter_episodes())
    assert [d.episode_index for d in kept] == [2, 3, 4]
    np.testing.assert_array_equal(kept[0].action, make_demo(2).action)
    with DemonstrationStore(tmp_path, max_bytes=3 * one + 10) as store:
        assert store.count() == 3 and store.append_episode(make_demo(5)) == 5


def test_size_cap_refuse_and_oversized_episode(tmp_path):
    with DemonstrationStore(tmp_path / 'a', max_bytes=4000, when_full='refuse') as store:
        store.append_episode(make_demo(0))
        with pytest.raises(StoreFullError, match='refuse'):
            for i in range(1, 10):
                store.append_episode(make_demo(i))
    with DemonstrationStore(tmp_path / 'b', max_bytes=2000) as store:
        with pytest.raises(StoreFullError, match='full'):
            store.append_episode(make_demo(0, frames=50))


def test_second_writer_is_refused(tmp_path):
    with DemonstrationStore(tmp_path, max_bytes=1 << 20):
        with pytest.raises(StoreCorruptError, match='another process'):
            DemonstrationStore(tmp_path, max_bytes=1 << 20)


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from tensorguard_learning.demonstrations import Demonstration, DemonstrationStore
    store = DemonstrationStore(sys.argv[1], max_bytes=1 << 30)
    i = 0
    while True:
        rng = np.random.default_rng(i)
        demo = Demonstration('push-v3', rng.normal(size=(40, 39)), rng.uniform(-1, 1, size=(40, 4)))
        store.begin_episode('push-v3')
        for n, frame in enumerate(demo.frames()):
            store.append_frame(frame)
            if i == 3 and n == 20:
                print('mid-episode', flush=True)
                while True:
                    store.append_frame(frame)
                    time.sleep(0.001)
        store.commit_episode()
        print(f'committed {i}', flush=True)
        i += 1
""")


def _expected(i):
    rng = np.random.default_rng(i)
    return rng.normal(size=(40, 39)).astype(np.float32), rng.uniform(-1, 1, size=(40, 4)).astype(np.float32)


def test_sigkill_mid_episode_keeps_every_committed_episode(tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, '-c', WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    while not lines or lines[-1] != 'mid-episode':
        line = proc.stdout.readline().strip()
        assert line, 'writer died before reaching the middle of episode 3'
        lines.append(line)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert lines[:3] == ['committed 0', 'committed 1', 'committed 2']
    with DemonstrationStore(tmp_path, max_bytes=1 << 30) as store:
        assert store.count() == 3 and store.dropped_tail_bytes > 0
        for i, demo in enumerate(store.iter_episodes()):
            states, actions = _expected(i)
            np.testing.assert_array_equal(demo.observation_state, states)
            np.testing.assert_array_equal(demo.action, actions)


def test_sigkill_at_random_time_loses_no_reported_episode(tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, '-c', WRITER.replace('i == 3', 'i == -1'), str(tmp_path)],
                            stdout=subprocess.PIPE, text=True, env=env)
    reported = 0
    while reported < 5:
        if proc.stdout.readline().startswith('committed'):
            reported += 1
    time.sleep(0.001 * (os.urandom(1)[0] % 20))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with DemonstrationStore(tmp_path, max_bytes=1 << 30) as store:
        assert store.count() >= reported
        for i, demo in enumerate(store.iter_episodes()):
            np.testing.assert_array_equal(demo.action, _expected(i)[1])
