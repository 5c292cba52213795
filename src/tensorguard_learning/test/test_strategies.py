"""The `Strategy` base: FedAvg's one-count-slot layout, the floor, and `strategy_from_name`."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorguard_learning.aggregation import (
    STRATEGIES,
    ExpertDrivenStrategy,
    FedAvgStrategy,
    Strategy,
    strategy_from_name,
)
from tensorguard_learning.errors import ConfigError, UpdateFormatError
from tensorguard_learning.training import LocalUpdate


def _random_update(rng: np.random.Generator, sizes: list[int], num_experts: int) -> LocalUpdate:
    deltas = [rng.normal(0, 1, size).astype(np.float32) for size in sizes]
    expert_usage = rng.dirichlet(np.ones(num_experts)).astype(np.float32)
    task_usage = rng.dirichlet(np.ones(len(sizes) - num_experts)).astype(np.float32)
    return LocalUpdate(dict(enumerate(deltas[:num_experts])), expert_usage,
                       dict(enumerate(deltas[num_experts:])), task_usage, 'v', 10, 1, 1.0, 0.5)


@st.composite
def rounds(draw):
    """(segment sizes, number of experts, robots K, round coordinates or None, rng seed)."""
    num_experts = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(1, 20), min_size=num_experts + 1, max_size=num_experts + 3))
    total = sum(sizes)
    chosen = draw(st.none() | st.sets(st.integers(0, total - 1), min_size=1))
    indices = None if chosen is None else np.array(sorted(chosen), dtype=np.int64)
    return sizes, num_experts, draw(st.integers(1, 6)), indices, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=60, deadline=None)
@given(rounds())
def test_fedavg_sum_of_k_vectors_finalizes_to_the_plain_mean(round_):
    sizes, num_experts, k, indices, seed = round_
    rng = np.random.default_rng(seed)
    updates = [_random_update(rng, sizes, num_experts) for _ in range(k)]
    fedavg = FedAvgStrategy(quorum_threshold=1)
    idx = np.arange(sum(sizes)) if indices is None else indices
    vectors = [fedavg.flatten_update(u) if indices is None else fedavg.flatten_update(u, u.dense_delta()[idx], idx)
               for u in updates]
    got = fedavg.aggregate(vectors, sizes, indices)
    expected = np.zeros(sum(sizes))
    expected[idx] = np.mean([u.dense_delta()[idx] for u in updates], axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    summed = np.sum(np.stack(vectors).astype(np.float64), axis=0)
    np.testing.assert_array_equal(fedavg.weight_sums(summed, sizes), np.full(len(sizes), float(k)))


@settings(max_examples=60, deadline=None)
@given(rounds())
def test_fedavg_layout_is_the_values_then_one_count_slot(round_):
    sizes, num_experts, _k, indices, seed = round_
    update = _random_update(np.random.default_rng(seed), sizes, num_experts)
    fedavg = FedAvgStrategy()
    idx = np.arange(sum(sizes)) if indices is None else indices
    vector = fedavg.flatten_update(update, update.dense_delta()[idx], idx)
    assert vector.dtype == np.float32 and vector.shape == (fedavg.vector_length(sizes, indices),)
    assert fedavg.vector_length(sizes, indices) == idx.size + 1
    np.testing.assert_array_equal(vector[:-1], update.dense_delta()[idx])
    assert vector[-1] == 1.0
    np.testing.assert_array_equal(fedavg.flatten_update(update), fedavg.flatten_update(update, update.dense_delta()))
    # One robot's vector finalizes back to its own delta at the round's coordinates.
    expected = np.zeros(sum(sizes), np.float32)
    expected[idx] = update.dense_delta()[idx]
    np.testing.assert_array_equal(fedavg.finalize(vector, sizes, indices), expected)


@settings(max_examples=60, deadline=None)
@given(rounds(), st.floats(0.0, 3.0))
def test_floor_freezes_exactly_the_segments_whose_summed_weight_is_under_it(round_, floor):
    """`finalize(..., floor)` equals the aggregator's former rule: zero those weights, then finalize."""
    sizes, num_experts, k, indices, seed = round_
    rng = np.random.default_rng(seed)
    updates = [_random_update(rng, sizes, num_experts) for _ in range(k)]
    idx = np.arange(sum(sizes)) if indices is None else indices
    for strategy in (ExpertDrivenStrategy(), FedAvgStrategy()):
        summed = np.sum([strategy.flatten_update(u, u.dense_delta()[idx], idx) for u in updates], axis=0,
                        dtype=np.float64)
        weights = strategy.weight_sums(summed, sizes)
        assert weights.shape == (len(sizes),)
        floored = summed.copy()
        if isinstance(strategy, ExpertDrivenStrategy):
            tail = floored[len(floored) - len(sizes):]
            tail[tail < floor] = 0.0
        elif floored[-1] < floor:
            floored[-1] = 0.0
        np.testing.assert_array_equal(strategy.finalize(summed, sizes, indices, floor),
                                      strategy.finalize(floored, sizes, indices))
        frozen = np.flatnonzero(weights < floor)
        owner = np.searchsorted(np.cumsum(sizes), idx, side='right')
        assert not np.any(strategy.finalize(summed, sizes, indices, floor)[idx[np.isin(owner, frozen)]])


def test_fedavg_weighs_robots_equally_where_expert_driven_follows_usage():
    sizes = [2, 2, 1]
    a = LocalUpdate({0: np.array([1, 1], np.float32), 1: np.array([4, 4], np.float32)},
                    np.array([1.0, 0.0], np.float32), {0: np.array([2], np.float32)}, np.array([1.0], np.float32),
                    'v', 10, 1, 1.0, 0.5)
    b = LocalUpdate({0: np.array([3, 3], np.float32), 1: np.array([0, 0], np.float32)},
                    np.array([0.5, 0.5], np.float32), {0: np.array([6], np.float32)}, np.array([1.0], np.float32),
                    'v', 10, 1, 1.0, 0.5)
    fedavg, moe = FedAvgStrategy(), ExpertDrivenStrategy()
    assert fedavg.vector_length(sizes) == 6 and moe.vector_length(sizes) == 8
    np.testing.assert_allclose(fedavg.aggregate([fedavg.flatten_update(a), fedavg.flatten_update(b)], sizes),
                               [2, 2, 2, 2, 4])
    np.testing.assert_allclose(moe.aggregate([moe.flatten_update(a), moe.flatten_update(b)], sizes),
                               [(1 + 1.5) / 1.5] * 2 + [0, 0] + [4])
    with pytest.raises(UpdateFormatError, match='summed vector'):
        fedavg.finalize(moe.flatten_update(a), sizes)
    with pytest.raises(UpdateFormatError, match='values for'):
        fedavg.flatten_update(a, np.zeros(3, np.float32), np.array([0, 1]))


def test_strategy_from_name_builds_each_registered_strategy():
    assert sorted(STRATEGIES) == ['expert_driven', 'fedavg']
    for name, cls in (('expert_driven', ExpertDrivenStrategy), ('fedavg', FedAvgStrategy)):
        strategy = strategy_from_name(name, quorum_threshold=3)
        assert type(strategy) is cls and strategy.name == name and strategy.quorum_threshold == 3
        assert isinstance(strategy, Strategy)
    assert strategy_from_name('fedavg').quorum_threshold == 2
    with pytest.raises(ConfigError, match=r"'fed_avg'.*expert_driven, fedavg"):
        strategy_from_name('fed_avg')
    with pytest.raises(TypeError):
        strategy_from_name('fedavg', clipping_norm=1.0)
    with pytest.raises(UpdateFormatError, match='quorum_threshold'):
        strategy_from_name('expert_driven', quorum_threshold=0)
    with pytest.raises(TypeError):
        Strategy()
