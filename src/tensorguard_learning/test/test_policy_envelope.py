"""Policy layout, serialisation, routing; OperatingEnvelope enforcement."""
import io
import os
import pickle

import numpy as np
import pytest
import torch

from tensorguard_learning.envelope import OperatingEnvelope
from tensorguard_learning.errors import ConfigError, EnvelopeViolation, UpdateFormatError
from tensorguard_learning.policy import MoEConfig, MoEPolicy, TaskGroup, build_policy, merge_segments, task_groups
from tensorguard_learning.training import TrainingBudget, train_local


def test_segments_roundtrip(tiny_policy):
    segs = tiny_policy.flatten_segments()
    assert [s.size for s in segs] == tiny_policy.segment_sizes()
    assert all(s.dtype == np.float32 for s in segs)
    shifted = [s + 1.0 for s in segs]
    tiny_policy.load_segments(shifted)
    for a, b in zip(tiny_policy.flatten_segments(), shifted):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UpdateFormatError, match='segments'):
        tiny_policy.load_segments(segs[:-1])


def test_state_bytes_roundtrip_and_tamper(tiny_policy):
    obs = torch.randn(5, 39)
    blob = tiny_policy.state_bytes()
    other = MoEPolicy.from_bytes(blob)
    ids = tiny_policy.task_ids(['push-v3'] * 5)
    torch.testing.assert_close(other(obs, ids)[0], tiny_policy(obs, ids)[0])
    assert other.base_version == tiny_policy.base_version
    with pytest.raises(UpdateFormatError, match='magic'):
        MoEPolicy.from_bytes(b'junk' + blob)
    with pytest.raises(UpdateFormatError):
        MoEPolicy.from_bytes(blob[:200])


class _RunsCode:
    """Pickles to a call of os.mkdir: loading it with a plain unpickler would create the marker directory."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize('writer', ['torch.save', 'pickle.dumps'])
def test_from_bytes_refuses_a_pickle_that_would_run_code_without_running_it(tmp_path, writer, tiny_policy):
    marker = tmp_path / 'code-ran'
    payload = {'config': _RunsCode(marker), 'state': tiny_policy.state_dict(), 'base_version': ''}
    if writer == 'torch.save':
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        blob = buffer.getvalue()
    else:
        blob = pickle.dumps(payload)
    with pytest.raises(UpdateFormatError, match='UnpicklingError'):
        MoEPolicy.from_bytes(b'TGPOL1' + blob)
    assert not marker.exists()


def test_routing_is_task_aware_top_k(tiny_policy):
    weights = tiny_policy.routing_weights(['push-v3', 'door-open-v3'])
    assert weights.shape == (2, 4)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)
    assert ((weights > 0).sum(1) == 2).all()
    with pytest.raises(ConfigError, match='not in the policy config'):
        tiny_policy.routing_weights(['reach-v3'])


def test_round_robin_router_gives_tasks_their_own_experts_until_they_run_out():
    tasks = tuple(f't{i}' for i in range(5))
    own = build_policy(MoEConfig(tasks=tasks, num_experts=5, top_k=1, router_init='round_robin'))
    assert np.array_equal(own.routing_weights(tasks), np.eye(5, dtype=np.float32))
    shared = build_policy(MoEConfig(tasks=tasks, num_experts=4, top_k=2, router_init='round_robin'))
    chosen = [set(np.flatnonzero(row)) for row in shared.routing_weights(tasks)]
    assert chosen == [{0, 1}, {2, 3}, {0, 1}, {2, 3}, {0, 1}]
    restored = MoEPolicy.from_bytes(own.state_bytes())
    assert restored.cfg.router_init == 'round_robin'
    assert np.array_equal(restored.routing_weights(tasks), own.routing_weights(tasks))
    with pytest.raises(ConfigError, match='router_init'):
        MoEConfig(tasks=tasks, router_init='learned')


def test_task_groups_follow_the_routing_of_every_policy_given():
    tasks = tuple(f't{i}' for i in range(5))
    own = build_policy(MoEConfig(tasks=tasks, num_experts=5, top_k=1, expert_hidden=8, router_init='round_robin'))
    assert task_groups([own], ['t0', 't3']) == [TaskGroup(('t0',), (0, 5)), TaskGroup(('t3',), (3, 8))]
    rerouted = own.clone()
    with torch.no_grad():
        rerouted.adapter.router_logits[3, 0] = 10.0  # t3 now routed to t0's expert
    assert task_groups([rerouted], ['t0', 't3']) == [TaskGroup(('t0', 't3'), (0, 5, 8))]
    assert task_groups([own, rerouted], ['t0', 't3']) == [TaskGroup(('t0', 't3'), (0, 3, 5, 8))]
    shared = build_policy(MoEConfig(tasks=tasks, num_experts=4, top_k=2, expert_hidden=8, router_init='round_robin'))
    assert [group.tasks for group in task_groups([shared], tasks)] == [('t0', 't2', 't4'), ('t1', 't3')]
    with pytest.raises(ConfigError, match='one config'):
        task_groups([own, shared], tasks)


def test_merged_model_acts_like_the_donor_on_donated_groups_and_like_the_base_elsewhere():
    tasks = ('a', 'b', 'c')
    base = build_policy(MoEConfig(tasks=tasks, num_experts=3, top_k=1, expert_hidden=8, router_init='round_robin'))
    donor = base.clone()
    with torch.no_grad():
        for parameter in donor.adapter.parameters():
            parameter.add_(torch.randn_like(parameter))
    groups = {group.tasks[0]: group for group in task_groups([base, donor], tasks)}
    assert len(groups) == 3
    merged = merge_segments(base, donor, groups['b'].segments)
    states = np.random.default_rng(0).normal(size=(16, 39)).astype(np.float32)  # public test inputs
    for task, source in (('a', base), ('b', donor), ('c', base)):
        np.testing.assert_array_equal(merged.act(states, task), source.act(states, task))
    assert not np.array_equal(base.act(states, 'b'), donor.act(states, 'b'))
    assert merged.base_version == base.base_version


@pytest.mark.parametrize('rank', [0, 3])
def test_a_low_rank_expert_input_trains_only_its_correction_and_travels_in_the_model_blob(demos, rank):
    shape = dict(tasks=('push-v3', 'door-open-v3'), expert_hidden=16, base_hidden=32, feature_dim=32,
                 num_experts=4, top_k=2)
    trained, low_rank = build_policy(MoEConfig(**shape)), build_policy(MoEConfig(**shape, expert_input_rank=rank))
    input_values, correction_values = (32 + 39 + 16) * 16 + 16, 16 * rank
    assert low_rank.segment_sizes()[:4] == [size - input_values + correction_values
                                            for size in trained.segment_sizes()[:4]] == [340 + correction_values] * 4
    assert low_rank.segment_sizes()[4:] == trained.segment_sizes()[4:]
    states = torch.as_tensor(np.random.default_rng(1).normal(size=(8, 39)), dtype=torch.float32)  # public test inputs
    ids = torch.arange(8) % 2
    torch.testing.assert_close(low_rank(states, ids)[0], trained(states, ids)[0])  # the same initial function
    fixed = [{name: buffer.clone() for name, buffer in expert[0].named_buffers()}
             for expert in low_rank.adapter.experts]
    update = train_local(low_rank, demos, TrainingBudget(max_steps=5), OperatingEnvelope())
    assert [delta.size for delta in update.segment_deltas()] == low_rank.segment_sizes()
    used = [e for e, w in enumerate(low_rank.routing_weights(['push-v3', 'door-open-v3']).sum(0)) if w > 0]
    for e in used:  # the correction (its first values) moved when there is one; the upper layers always
        delta = update.segment_deltas()[e]
        assert np.any(delta[correction_values:] != 0) and (rank == 0 or np.any(delta[:correction_values] != 0))
    for expert, before in zip(low_rank.adapter.experts, fixed):
        for name, buffer in expert[0].named_buffers():
            torch.testing.assert_close(buffer, before[name], rtol=0, atol=0)
    rebuilt = MoEPolicy.from_bytes(low_rank.state_bytes())
    torch.testing.assert_close(rebuilt(states, ids)[0], low_rank(states, ids)[0], rtol=0, atol=0)
    for bad in ('yes', -1, True, 2.0):
        with pytest.raises(ConfigError, match='expert_input_rank'):
            build_policy({**shape, 'expert_input_rank': bad})


def test_build_policy_from_dict_and_bad_config():
    policy = build_policy({'tasks': ['push-v3'], 'expert_hidden': 8, 'num_experts': 2, 'top_k': 1})
    assert policy.cfg.tasks == ('push-v3',)
    with pytest.raises(ConfigError, match='top_k'):
        MoEConfig(tasks=('a',), num_experts=2, top_k=3)


def test_envelope_refuses_forbidden_module_and_too_many_params(tiny_policy, demos):
    budget = TrainingBudget(max_steps=1)
    with pytest.raises(EnvelopeViolation, match="'base'"):
        train_local(tiny_policy, demos, budget, OperatingEnvelope(), modules=('experts', 'base'))
    with pytest.raises(EnvelopeViolation, match='max_trainable_params'):
        train_local(tiny_policy, demos, budget, OperatingEnvelope(max_trainable_params=100))
    with pytest.raises(EnvelopeViolation, match="'router'"):
        train_local(tiny_policy, demos, budget, OperatingEnvelope(trainable_modules=('experts',)))
    with pytest.raises(ConfigError, match='unknown trainable_modules'):
        OperatingEnvelope(trainable_modules=('vision_adapter',))


def test_envelope_refuses_oversized_update():
    envelope = OperatingEnvelope(target_update_size_kb=1)
    envelope.check_update_size(1024)
    with pytest.raises(EnvelopeViolation, match='target_update_size_kb'):
        envelope.check_update_size(1025)


def test_experts_only_training_leaves_router_untouched(tiny_policy, demos):
    before = tiny_policy.flatten_segments()
    update = train_local(tiny_policy, demos, TrainingBudget(max_steps=3),
                         OperatingEnvelope(trainable_modules=('experts',)), modules=('experts',))
    assert all(np.all(d == 0) for d in update.task_deltas.values())
    after = tiny_policy.flatten_segments()
    np.testing.assert_array_equal(after[-1], before[-1])
