"""Behaviour cloning on real Meta-World demonstrations."""
import numpy as np
import pytest

from tensorguard_learning.demonstrations import DemonstrationStore
from tensorguard_learning.envelope import OperatingEnvelope
from tensorguard_learning.errors import ConfigError
from tensorguard_learning.training import BCData, TrainingBudget, bc_loss, pretrain, train_local


def test_pretrain_freezes_base_and_reduces_loss(tiny_policy, demos):
    data = BCData.from_demonstrations(tiny_policy, demos)
    tiny_policy.set_normaliser(data.states.numpy())
    start = bc_loss(tiny_policy, data)
    end = pretrain(tiny_policy, data, TrainingBudget(max_steps=100, batch_size=64))
    assert end < 0.5 * start
    assert not any(p.requires_grad for p in tiny_policy.base.parameters())


def test_train_local_from_store_reduces_loss_and_reports_usage(tiny_policy, demos, tmp_path):
    pretrain(tiny_policy, [d for d in demos if d.task == 'push-v3'], TrainingBudget(max_steps=20, batch_size=64))
    base_before = [p.detach().clone() for p in tiny_policy.base.parameters()]
    with DemonstrationStore(tmp_path, max_bytes=1 << 24) as store:
        for d in demos:
            store.append_episode(d)
        update = train_local(tiny_policy, store, TrainingBudget(max_steps=150, batch_size=64),
                             OperatingEnvelope())
    assert update.loss_after < 0.5 * update.loss_before
    assert update.steps == 150 and update.num_samples == sum(d.num_frames for d in demos)
    np.testing.assert_allclose(update.expert_usage.sum(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(update.task_usage.sum(), 1.0, rtol=1e-5)
    routed = tiny_policy.routing_weights(list(tiny_policy.cfg.tasks)).sum(0) > 0
    for e, delta in update.expert_deltas.items():
        assert np.any(delta != 0) == bool(update.expert_usage[e] > 0)
    assert update.expert_usage[~routed].sum() == 0
    assert all(np.array_equal(a, b) for a, b in zip(base_before, tiny_policy.base.parameters()))


def test_deltas_are_measured_from_reference(tiny_policy, demos):
    reference = [s - 0.5 for s in tiny_policy.flatten_segments()]
    update = train_local(tiny_policy, demos, TrainingBudget(max_steps=1), OperatingEnvelope(), reference=reference)
    unused = [e for e in range(4) if update.expert_usage[e] == 0]
    for e in unused:
        np.testing.assert_allclose(update.expert_deltas[e], 0.5)


def test_time_budget_stops_training(tiny_policy, demos):
    update = train_local(tiny_policy, demos, TrainingBudget(max_steps=10**6, max_seconds=0.3), OperatingEnvelope())
    assert 0 < update.steps < 10**6


def test_bad_budget_and_empty_data(tiny_policy):
    with pytest.raises(ConfigError):
        TrainingBudget(max_steps=0)
    with pytest.raises(ConfigError, match='no demonstrations'):
        train_local(tiny_policy, [], TrainingBudget(max_steps=1), OperatingEnvelope())


def test_proximal_term_keeps_adapter_near_reference(tiny_policy, demos):
    data = BCData.from_demonstrations(tiny_policy, demos)
    norms = {}
    for mu in (0.0, 100.0):
        policy = tiny_policy.clone()
        update = train_local(policy, data, TrainingBudget(max_steps=60, batch_size=64, proximal_mu=mu),
                             OperatingEnvelope())
        norms[mu] = np.linalg.norm(update.dense_delta())
    assert norms[100.0] < 0.5 * norms[0.0]
    with pytest.raises(ConfigError, match='proximal_mu'):
        TrainingBudget(proximal_mu=-1.0)
