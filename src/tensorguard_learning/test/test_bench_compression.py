"""The equal-rounds compression comparison and its public coordinate sets."""
import json

import numpy as np
import pytest
import torch

from tensorguard_learning.bench_compression import main, parse_method
from tensorguard_learning.compression import expert_head_coordinates
from tensorguard_learning.errors import ConfigError
from tensorguard_learning.policy import MoEConfig, MoEPolicy


def test_expert_head_coordinates_are_the_biases_output_layers_and_task_segments():
    policy = MoEPolicy(MoEConfig(tasks=('a', 'b', 'c'), num_experts=3, expert_hidden=8))
    with torch.no_grad():
        for expert in policy.adapter.experts:
            for p in expert.parameters():
                p.fill_(1.0 if p.dim() == 1 else 0.0)
            expert[-1].weight.fill_(1.0)
        policy.adapter.task_embedding.fill_(1.0)
        policy.adapter.router_logits.fill_(1.0)
    marked = np.flatnonzero(np.concatenate(policy.flatten_segments()))
    coords = expert_head_coordinates(policy)
    np.testing.assert_array_equal(coords, marked)
    per_expert = 8 + 8 + (8 * 4 + 4)
    assert coords.size == 3 * per_expert + 3 * (16 + 3)


def test_method_specs():
    assert parse_method('held:all', 200).coordinate_period == 200
    held = parse_method('held:20', 200)
    assert held.coordinate_period == 20 and not held.error_feedback and held.compressed
    assert parse_method('randomk_ef', 200).error_feedback
    assert parse_method('head', 200).expert_head
    assert parse_method('randomk_ef@10', 200).ratio == 10 and parse_method('held:all@8', 200).coordinate_period == 200
    assert parse_method('randomk_ef', 200).ratio is None
    directed = parse_method('directed_ef@10', 200)
    assert directed.directed_share == 0.5 and directed.ratio == 10 and directed.error_feedback
    for bad in ('held:0', 'held:x', 'topk', 'dense@4', 'randomk_ef@1', 'head@8'):
        with pytest.raises(ConfigError, match='unknown method'):
            parse_method(bad, 200)


def test_quick_comparison_writes_table_and_json(tmp_path, capsys):
    report = tmp_path / 'r.json'
    table = tmp_path / 'r.md'
    assert main(['--quick', '--cache-dir', str(tmp_path), '--methods', 'dense', 'randomk_ef', 'held:2', 'head',
                 '--json', str(report), '--markdown', str(table)]) == 0
    out = capsys.readouterr().out
    assert '| dense | 178,936 |' in out and table.read_text().strip() in out
    data = json.loads(report.read_text())
    results = {r['method']: r for r in data['results']}
    assert set(results) == {'dense', 'randomk_ef', 'held:2', 'head'}
    assert results['randomk_ef']['bytes_per_round'] == results['held:2']['bytes_per_round'] < 178_936 // 50
    for r in results.values():
        assert [c['round'] for c in r['checkpoints']] == [3]
        c = r['checkpoints'][0]
        assert c['episodes'] == 4 and c['cumulative_bytes_per_robot'] == 3 * r['bytes_per_round']
        assert 0.0 <= c['lower_bound_95'] <= c['success_rate'] or c['successes'] == 0


def test_a_low_rank_expert_input_federates_fewer_values(tmp_path, capsys):
    report = tmp_path / 'r.json'
    assert main(['--quick', '--cache-dir', str(tmp_path), '--methods', 'dense', '--expert-input-rank', '2',
                 '--json', str(report)]) == 0
    layout = MoEPolicy(MoEConfig(tasks=tuple(json.loads(report.read_text())['tasks']), num_experts=4,
                                 expert_hidden=32, expert_input_rank=2)).segment_sizes()
    assert layout[:4] == [32 * 2 + (32 * 32 + 32) + (32 * 4 + 4)] * 4
    dense = json.loads(report.read_text())['results'][0]
    assert dense['bytes_per_round'] == 4 * (sum(layout) + len(layout)) < 178_936 // 8
    assert f'# adapter: {sum(layout)} federated parameters' in capsys.readouterr().out
