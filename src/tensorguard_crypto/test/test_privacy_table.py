"""`privacy_table`: the trade-off printed before a fleet is deployed, and the multiplier a budget allows."""
import pytest

from tensorguard_crypto import privacy_table


def rows_of(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines()[2:]]


def test_a_budget_prints_the_smallest_multiplier_that_keeps_within_it(capsys):
    argv = ['--dim', '195312', '--rounds', '3', '--epsilon', '8', '--min-clients', '16', '1000']
    assert privacy_table.main(argv) == 0
    output = capsys.readouterr().out
    assert 'smallest multiplier with epsilon <= 8' in output.splitlines()[0]
    rows = rows_of(output)
    assert [int(row[1]) for row in rows] == [16, 1000]
    for multiplier, clients, _, spent, _ in rows:
        assert float(spent) <= 8
        # one grid step less noise would overspend: the printed multiplier is the boundary, not just safe
        less = privacy_table.table(195312, 3, 2.0, 16, 1e-5, [float(multiplier) - 0.01], [int(clients)])
        assert less[0]['epsilon_R'] > 8


@pytest.mark.parametrize('argv, message', [
    (['--epsilon', '0'], 'epsilon budget must be positive'),
    (['--epsilon', '8', '--rounds', '0'], 'rounds must be at least 1'),
    (['--rounds', '0'], 'rounds must be at least 1'),
])
def test_bad_input_is_a_usage_error_naming_it(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        privacy_table.main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err
