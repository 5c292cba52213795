"""The latency benchmark runs the real step (every measured step commands) and reports per-run percentiles."""
import json

from tensorguard_policy.bench_latency import main


def test_the_benchmark_reports_percentiles_of_commanded_steps(tmp_path, capsys):
    output = tmp_path / 'report.json'
    assert main(['--runs', '2', '--steps', '50', '--warmup', '5', '--output', str(output)]) == 0
    report = json.loads(output.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report['adapter']['num_experts'] == 8 and report['adapter']['top_k'] == 1
    assert len(report['per_run']) == 2
    for run in report['per_run']:
        assert 0 < run['p50_ms'] <= run['p99_ms'] <= run['max_ms']
    p99 = report['summary']['p99_ms']
    assert p99['min'] <= p99['median'] <= p99['max']
