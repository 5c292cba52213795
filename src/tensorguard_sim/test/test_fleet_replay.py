"""The one-process replay of the fleet's learning runs end to end on a tiny fleet."""
from __future__ import annotations

import json
import math
from pathlib import Path

from tensorguard_sim.fleet_replay import main

DATA = Path(__file__).resolve().parents[3] / 'test' / 'data'


def test_replay_of_a_tiny_fleet_reports_every_round(tmp_path, capsys):
    report = tmp_path / 'replay.json'
    assert main(['--config', str(DATA / 'fleet_test.yaml'), '--plan', str(DATA / 'fleet_test_plan.yaml'),
                 '--rounds', '2', '--episodes', '2', '--eval-episodes', '1', '--train-steps', '20',
                 '--report', str(report)]) == 0
    rows = json.loads(report.read_text())['rounds']
    assert [r['round'] for r in rows] == [0, 1, 2]
    assert rows[0]['kl'] is None and rows[0]['decision'] == 'initial'
    for row in rows[1:]:
        assert len(row['update_norms']) == 3 and all(n > 0 for n in row['update_norms'])
        assert row['delta_norm'] > 0 and math.isfinite(row['kl']) and row['kl'] >= 0
        assert 0.0 <= row['success_rate'] <= 1.0
        assert row['decision'] in ('deploy', 'canary', 'reject')
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{')]
    assert printed == rows
