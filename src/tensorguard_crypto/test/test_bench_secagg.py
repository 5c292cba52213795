"""Smoke test keeping the bench_secagg command from rotting."""
from tensorguard_crypto.bench_secagg import main


def test_quick_run_prints_one_complete_table(capsys):
    main(["--quick"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(rows) == 16  # header + 15 metrics
    for metric in ("encryption, values/s", "TenSEAL BFV N=4096 symmetric", "TenSEAL BFV N=4096 public key",
                   "sum time ratio", "decryption of summed bodies", "wire expansion", "key-layer bytes"):
        assert any(metric in row for row in rows), metric
    assert "command: bench_secagg --quick" in out
