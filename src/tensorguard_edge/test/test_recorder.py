"""EpisodeAssembler: episodes from streams that DDS does not order against each other."""
import json

import numpy as np
import pytest

from tensorguard_edge.recorder import EpisodeAssembler, StreamError

STATE, ACTION = 3, 2


def _assembler(clock=lambda: 0.0):
    done = []
    return EpisodeAssembler(done.append, STATE, ACTION, clock=clock), done


def _event(kind, episode, **fields):
    return json.dumps({'event': kind, 'episode': episode, **fields})


def _frames(assembler, episode, n, order):
    for i in order(range(n)):
        assembler.on_observation(episode, i, np.full(STATE, i, np.float32))
        assembler.on_action(episode, i, np.full(ACTION, -i, np.float32))


def test_frames_and_end_before_begin_still_make_one_episode():
    assembler, done = _assembler()
    _frames(assembler, 7, 4, reversed)
    assembler.on_event(_event('end', 7, frames=4, success=True))
    assert done == []
    assembler.on_event(_event('begin', 7, task='push-v3'))
    assert len(done) == 1
    demo = done[0]
    assert demo.task == 'push-v3' and demo.episode_index == 7
    np.testing.assert_array_equal(demo.observation_state[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(demo.action[:, 0], [0, -1, -2, -3])


def test_interleaved_episodes_do_not_mix():
    assembler, done = _assembler()
    assembler.on_event(_event('begin', 1, task='a'))
    assembler.on_event(_event('begin', 2, task='b'))
    _frames(assembler, 2, 3, list)
    _frames(assembler, 1, 2, list)
    assembler.on_event(_event('end', 2, frames=3, success=True))
    assembler.on_event(_event('end', 1, frames=2, success=True))
    assert [(d.task, d.num_frames) for d in done] == [('b', 3), ('a', 2)]


def test_failed_episode_is_counted_not_stored():
    assembler, done = _assembler()
    assembler.on_event(_event('begin', 1, task='a'))
    assembler.on_event(_event('end', 1, frames=0, success=False))
    assert done == [] and assembler.failed_episodes == 1


def test_incomplete_episode_expires():
    now = [0.0]
    assembler, done = _assembler(clock=lambda: now[0])
    assembler.on_event(_event('begin', 1, task='a'))
    _frames(assembler, 1, 2, list)
    assembler.on_event(_event('end', 1, frames=3, success=True))
    now[0] = 1000.0
    assembler.expire()
    assert done == [] and assembler.abandoned_episodes == 1 and assembler.pending == {}


@pytest.mark.parametrize('payload', ['not json', '{"event": "begin"}', _event('begin', 1),
                                     _event('end', 1, frames=-1), _event('warp', 1), _event('begin', -3, task='a')])
def test_malformed_events_are_refused_with_a_reason(payload):
    assembler, _ = _assembler()
    with pytest.raises(StreamError) as error:
        assembler.on_event(payload)
    assert error.value.reason == 'malformed_event'


def test_malformed_frames_are_refused_with_a_reason():
    assembler, _ = _assembler()
    for call in (lambda: assembler.on_observation(1, 0, np.zeros(STATE + 1)),
                 lambda: assembler.on_observation(1, 0, np.array([np.nan, 0, 0])),
                 lambda: assembler.on_action(1, -1, np.zeros(ACTION)),
                 lambda: assembler.on_action(-1, 0, np.zeros(ACTION))):
        with pytest.raises(StreamError) as error:
            call()
        assert error.value.reason == 'malformed_frame'
