"""Smoke test keeping the bench_secagg command from rotting (tiny sizes; it times nothing itself)."""
import json

from tensorguard_crypto import hybrid
from tensorguard_crypto.bench_secagg import METRICS, main
from tensorguard_crypto.params import standard_params


def test_quick_run_prints_both_tables_and_writes_the_report(capsys, tmp_path):
    path = tmp_path / 'report.json'
    main(['--quick', '--runs', '2', '--json', str(path)])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith('| ')]
    assert len(rows) == 1 + len(METRICS) + 1 + 6  # timing header + metrics, size header + sizes
    assert all(line.count(' | ') == 3 for line in rows[:1 + len(METRICS)])  # metric, median, min, max
    for metric in ('robot: lattice encryption + hybrid seal', 'hybrid seal of the packed body alone',
                   'TenSEAL BFV N=4096 symmetric', 'TenSEAL BFV N=4096 public key',
                   'ratio robot (lattice + seal) / TenSEAL symmetric', 'aggregator: open + parse + add',
                   'decryption of summed bodies', 'wire expansion', 'key-layer bytes'):
        assert any(metric in row for row in rows), metric
    assert f'command: bench_secagg --quick --runs 2 --json {path}' in out

    data = json.loads(path.read_text())
    assert {'platform', 'cpu_model', 'cores'} <= set(data['machine'])
    assert set(data['packages']) == {'numpy', 'tenseal', 'cryptography'}
    assert data['date'] and data['command'].startswith('bench_secagg --quick')
    assert len(data['runs']) == 2
    for run in data['runs']:
        assert all(len(times) == 2 for times in run['times_s'].values())
        assert len(run['load_average_before']) == 3
        assert set(run['metrics']) == {key for key, _, _ in METRICS}
    for key, stats in data['summary'].items():
        samples = [run['metrics'][key] for run in data['runs']]
        assert stats['min'] == min(samples) and stats['max'] == max(samples)
        assert stats['min'] <= stats['median'] <= stats['max']
    params = standard_params(128, plaintext_bits=20, max_clients=20)
    sizes = data['sizes']
    assert sizes['sealed_update_bytes'] == params.body_bytes(1 << 14) + hybrid.SEAL_OVERHEAD_BYTES
    assert sizes['seal_overhead_bytes'] == 48
    assert sizes['expansion_vs_plaintext'] > sizes['body_expansion_vs_plaintext'] == 32 / 20
