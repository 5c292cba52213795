"""The benchmark command runs end to end on a tiny configuration."""
from tensorguard_learning.bench_learning import main


def test_quick_benchmark_prints_the_table(tmp_path, capsys):
    assert main(['--quick', '--cache-dir', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for method in ('centralised BC', 'local-only', '| FedAvg |', '| FedMoE |', 'random-k'):
        assert method in out
    assert 'fewer bytes than dense fp32' in out
