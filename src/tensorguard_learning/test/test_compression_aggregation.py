"""Shared-seed random-k, error feedback, expert-driven and FedAvg aggregation."""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorguard_learning.aggregation import ExpertDrivenStrategy, FedAvgStrategy, apply_update, split_update_vector
from tensorguard_learning.compression import (
    ErrorFeedback,
    directed_coordinates,
    reconstruct,
    round_coordinates,
    select_coordinates,
)
from tensorguard_learning.errors import ConfigError, UpdateFormatError
from tensorguard_learning.training import LocalUpdate


@settings(max_examples=50, deadline=None)
@given(seed=st.binary(min_size=16, max_size=48), total=st.integers(1, 5000), frac=st.floats(0.0001, 1.0))
def test_robots_pick_the_same_valid_coordinates(seed, total, frac):
    k = max(1, int(total * frac))
    robot_a = select_coordinates(seed, total, k)
    robot_b = select_coordinates(bytes(seed), total, k)
    np.testing.assert_array_equal(robot_a, robot_b)
    assert robot_a.dtype == np.int64 and robot_a.size == k
    assert np.all(np.diff(robot_a) > 0) and robot_a[0] >= 0 and robot_a[-1] < total


def test_coordinates_depend_on_seed_and_are_roughly_uniform():
    total, k = 1000, 100
    a = select_coordinates(b'\x00' * 32, total, k)
    b = select_coordinates(b'\x01' + b'\x00' * 31, total, k)
    assert not np.array_equal(a, b)
    counts = np.zeros(total)
    for i in range(300):
        counts[select_coordinates(i.to_bytes(32, 'big'), total, k)] += 1
    assert abs(counts.mean() - 30) < 1e-9
    assert counts.std() < 2 * np.sqrt(30 * 0.9)
    assert select_coordinates(os.urandom(32), 10, 10).tolist() == list(range(10))
    with pytest.raises(ConfigError, match='round_seed'):
        select_coordinates(b'short', 10, 2)
    with pytest.raises(ConfigError, match='k <= total'):
        select_coordinates(b'\x00' * 16, 10, 11)


def test_round_coordinates_always_send_small_segments():
    sizes = [100, 100, 5, 5]
    seed = os.urandom(32)
    idx = round_coordinates(seed, sizes, 10, always_send=[2, 3])
    np.testing.assert_array_equal(idx, round_coordinates(seed, sizes, 10, always_send=[2, 3]))
    assert idx.size == 20 and set(range(200, 210)) <= set(idx.tolist())
    assert np.all(np.diff(idx) > 0) and idx.max() < 210
    with pytest.raises(ConfigError, match='always_send'):
        round_coordinates(seed, sizes, 10, always_send=[4])


def test_directed_coordinates_follow_the_public_aggregate():
    sizes = [100, 100, 5, 5]
    seed = os.urandom(32)
    delta = np.zeros(210)
    delta[[7, 150, 3, 99]] = [0.5, -2.0, 1e-3, 0.5]  # 7 and 99 tie: the lower index wins
    delta[205] = 9.0  # an always-sent segment does not take directed budget
    idx = directed_coordinates(seed, sizes, 10, delta, always_send=[2, 3], directed_share=0.3)
    np.testing.assert_array_equal(idx, directed_coordinates(bytes(seed), sizes, 10, delta.copy(), [2, 3], 0.3))
    assert idx.size == 20 and set(range(200, 210)) <= set(idx.tolist()) and {150, 7, 99} <= set(idx.tolist())
    assert np.all(np.diff(idx) > 0) and idx.max() < 210
    top = directed_coordinates(seed, sizes, 2, delta, [2, 3], 1.0)
    assert set(top.tolist()) - set(range(200, 210)) == {150, 7}
    # Where the aggregate did not move is never "directed": with one moved coordinate, the rest is random-k.
    one = np.zeros(210)
    one[42] = 1.0
    mixed = directed_coordinates(seed, sizes, 10, one, [2, 3], 1.0)
    assert 42 in mixed and mixed.size == 20
    np.testing.assert_array_equal(directed_coordinates(seed, sizes, 10, np.zeros(210), [2, 3], 0.5),
                                  round_coordinates(seed, sizes, 10, [2, 3]))
    with pytest.raises(UpdateFormatError, match='public delta'):
        directed_coordinates(seed, sizes, 10, np.zeros(209), [2, 3])
    with pytest.raises(ConfigError, match='directed_share'):
        directed_coordinates(seed, sizes, 10, delta, [2, 3], 1.5)
    with pytest.raises(ConfigError, match='free coordinates'):
        directed_coordinates(seed, sizes, 201, delta, [2, 3])


def test_error_feedback_carries_the_residual(tiny_policy):
    total = sum(tiny_policy.segment_sizes())
    feedback = ErrorFeedback(total)
    delta = np.arange(total, dtype=np.float32) / total
    idx = select_coordinates(b'r' * 16, total, total // 10)
    sent = feedback.compress(delta, idx)
    np.testing.assert_array_equal(sent, delta[idx])
    expected = delta.copy()
    expected[idx] = 0
    np.testing.assert_array_equal(feedback.residual, expected)
    np.testing.assert_array_equal(reconstruct(sent, idx, total) + feedback.residual, delta)
    global_segments = tiny_policy.flatten_segments()
    returned = feedback.start_from(tiny_policy)
    for g, r in zip(global_segments, returned):
        np.testing.assert_array_equal(g, r)
    np.testing.assert_allclose(np.concatenate(tiny_policy.flatten_segments()),
                               np.concatenate(global_segments) + expected, rtol=1e-6)


def _update(deltas, expert_usage, task_usage):
    e = len(expert_usage)
    return LocalUpdate({i: np.asarray(deltas[i], np.float32) for i in range(e)}, np.asarray(expert_usage, np.float32),
                       {i: np.asarray(deltas[e + i], np.float32) for i in range(len(task_usage))},
                       np.asarray(task_usage, np.float32), 'v', 10, 1, 1.0, 0.5)


SIZES = [2, 2, 1]


def test_expert_driven_weights_by_usage_and_fedavg_does_not():
    a = _update([[1, 1], [4, 4], [2]], [1.0, 0.0], [1.0])
    b = _update([[3, 3], [0, 0], [6]], [0.5, 0.5], [1.0])
    moe = ExpertDrivenStrategy(quorum_threshold=2)
    got = moe.aggregate([moe.flatten_update(a), moe.flatten_update(b)], SIZES)
    np.testing.assert_allclose(got, [(1 + 1.5) / 1.5] * 2 + [0, 0] + [4])
    avg = FedAvgStrategy()
    got = avg.aggregate([avg.flatten_update(a), avg.flatten_update(b)], SIZES)
    np.testing.assert_allclose(got, [2, 2, 2, 2, 4])


def test_sum_then_finalize_matches_compressed_weighted_mean():
    a = _update([[1, 2], [3, 4], [5]], [0.25, 0.75], [1.0])
    b = _update([[6, 7], [8, 9], [10]], [1.0, 0.0], [1.0])
    idx = np.array([1, 2, 4])
    moe = ExpertDrivenStrategy()
    vecs = [moe.flatten_update(u, u.dense_delta()[idx], idx) for u in (a, b)]
    assert vecs[0].dtype == np.float32 and vecs[0].shape == (idx.size + 3,)
    got = moe.finalize(np.sum(vecs, axis=0), SIZES, idx)
    np.testing.assert_allclose(got, [0, (0.25 * 2 + 7) / 1.25, 3.0, 0, 7.5], rtol=1e-6)
    dense, weights = split_update_vector(vecs[0], SIZES, idx)
    np.testing.assert_allclose(dense, [0, 0.5, 0.75 * 3, 0, 5])
    np.testing.assert_allclose(weights, [0.25, 0.75, 1.0])


def test_quorum_and_shapes_are_enforced():
    moe = ExpertDrivenStrategy(quorum_threshold=2)
    a = moe.flatten_update(_update([[1, 1], [1, 1], [1]], [1, 0], [1]))
    with pytest.raises(UpdateFormatError, match='quorum'):
        moe.aggregate([a], SIZES)
    with pytest.raises(UpdateFormatError, match='different shapes'):
        moe.aggregate([a, a[:-1]], SIZES)
    with pytest.raises(UpdateFormatError, match='summed vector'):
        moe.finalize(a[:-1], SIZES)


def test_apply_update(tiny_policy):
    total = sum(tiny_policy.segment_sizes())
    before = np.concatenate(tiny_policy.flatten_segments())
    apply_update(tiny_policy, np.full(total, 0.25, np.float32))
    np.testing.assert_allclose(np.concatenate(tiny_policy.flatten_segments()), before + 0.25, rtol=1e-6)
    with pytest.raises(UpdateFormatError, match='shape'):
        apply_update(tiny_policy, np.zeros(total + 1))
    bad = np.zeros(total)
    bad[3] = np.nan
    with pytest.raises(UpdateFormatError, match='NaN'):
        apply_update(tiny_policy, bad)
