"""`tensorguard flower-scale` end to end at a small K, and its demonstration cache."""
import json

import numpy as np
import pytest

from tensorguard_crypto.accountant import PrivacyBudget, PrivacyLedger
from tensorguard_flower import frontier, plaintext, scale, split


@pytest.mark.slow
def test_a_small_fleet_runs_through_the_command_and_reports_every_round(tmp_path, monkeypatch):
    monkeypatch.setenv('TENSORGUARD_KEY_PASSPHRASE', '')  # the command sets its own; restored after the test
    out = tmp_path / 'run'
    code = scale.main(['--robots', '3', '--rounds', '2', '--episodes', '1', '--train-steps', '5',
                       '--eval-episodes', '1', '--pretrain-steps', '20', '--select-per-task',
                       '--expert-input-rank', '2', '--out', str(out), '--cache', str(tmp_path / 'cache')])
    assert code == 0
    report = json.loads((out / 'report.json').read_text())
    assert [row['round'] for row in report['rows']] == [1, 2]
    assert all(row['outcome'] == 'aggregated' and row['robots'] == 3 for row in report['rows'])
    assert report['peak_memory_bytes'] > 0 and report['rows'][0]['bytes_per_robot'] > 0
    # Closed rounds keep their signed aggregate and outcome but no update (delete_closed_updates).
    assert not list((out / 'fleet').rglob('*.tgu')) and len(list((out / 'fleet').rglob('aggregate.bin'))) == 2
    # The gate's per-task selection ran in every Flower round and every reference round, on all five tasks.
    for row in report['rows'] + report['reference_rows']:
        assert set(row['selection']['selection_successes']) == set(split.FLEET_TASKS)
        assert set(row['selection']['kept_tasks']) <= set(split.FLEET_TASKS)
    # The non-private reference ran the same rounds, evaluated on the same seeds and episode counts.
    assert [row['round'] for row in report['reference_rows']] == [1, 2]
    for row, plain in zip(report['rows'], report['reference_rows']):
        assert plain['epsilon'] is None and sum(plain['episodes'].values()) == 5
        assert row['points_below_reference'] == pytest.approx(100 * (plain['success'] - row['success']))
    for i in range(3):
        ledger = PrivacyLedger.from_dict(PrivacyBudget(8.0), json.loads(
            (out / 'fleet' / 'robots' / f'robot_{i + 1}' / 'state' / 'privacy.json').read_text()))
        assert ledger.rounds == ['1', '2']
        assert ledger.epsilon() == pytest.approx(report['rows'][1]['epsilon'])  # all robots: the same mechanism


def test_demonstrations_are_recorded_once_and_then_read_from_the_cache(tmp_path, monkeypatch):
    recorded = []
    real = split.record_demonstrations
    monkeypatch.setattr(split, 'record_demonstrations', lambda *a: recorded.append(a) or real(*a))
    first = split.cached_demonstrations(tmp_path, 'reach-v3', 2, split.ROBOT_SEED)
    again = split.cached_demonstrations(tmp_path, 'reach-v3', 2, split.ROBOT_SEED)
    assert recorded == [('reach-v3', 2, split.ROBOT_SEED)] and len(first) == len(again) > 0
    for a, b in zip(first, again):
        assert a.task == b.task and np.array_equal(a.observation_state, b.observation_state)
        assert np.array_equal(a.action, b.action)


def test_robot_i_demonstrates_task_i_mod_n_from_its_own_seeds(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(split, 'cached_demonstrations',
                        lambda _cache, task, episodes, seed: asked.append((task, episodes, seed)) or [])
    split.robot_demonstrations(tmp_path, 5, 2, ('reach-v3', 'push-v3'))
    assert asked == [(('reach-v3', 'push-v3')[i % 2], 2, split.ROBOT_SEED + split.SEED_STRIDE * i) for i in range(5)]


@pytest.mark.parametrize('command', [scale, frontier])
@pytest.mark.parametrize('tasks, refusal', [
    (['--tasks', 'reach-v3', 'push-v3', 'reach-v3'], '--tasks names reach-v3 more than once'),
    (['--pretrain-tasks', 'reach-v3', 'reach-v3'], '--pretrain-tasks names reach-v3 more than once'),
    (['--tasks', 'push-v3', 'reach-v3', '--pretrain-tasks', 'reach-v3'],
     'reach-v3 in both --tasks and --pretrain-tasks'),
])
def test_a_split_that_repeats_a_task_or_pretrains_on_a_robots_task_is_refused(command, tasks, refusal, tmp_path,
                                                                             capsys):
    with pytest.raises(SystemExit):
        command.main(['--robots', '4', '--out', str(tmp_path / 'out'), *tasks])
    assert refusal in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('command', [scale, frontier])
def test_a_fleet_larger_than_the_lattice_parameters_can_sum_is_refused_before_any_work(command, tmp_path, capsys):
    with pytest.raises(SystemExit):
        command.main(['--robots', '2000', '--out', str(tmp_path / 'out')])
    assert '--robots 2000: max_clients=2000 exceeds the body noise budget' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()
    assert plaintext.lattice_refusal(1000) is None
