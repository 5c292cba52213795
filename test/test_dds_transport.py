"""Two real processes exchange TensorGuard messages over Fast DDS (issue: workspace)."""
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ros

EIGHT_MIB = 8 * 1024 * 1024


def test_latched_round_config_and_8mib_update_cross_processes_intact():
    result = subprocess.run(
        [sys.executable, '-m', 'tensorguard_ros.transport_check', 'selftest',
         '--payload-bytes', str(EIGHT_MIB), '--timeout', '60'],
        capture_output=True, text=True, timeout=180)
    lines = [line for line in result.stdout.splitlines() if line.startswith(('PASS', 'FAIL'))]
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(lines) == 5 and all(line.startswith('PASS') for line in lines), result.stdout
    assert f'{EIGHT_MIB:,} byte payload received' in result.stdout


def test_listener_alone_times_out_and_fails():
    """Without a publisher the listener must report failure, so the check above can fail."""
    result = subprocess.run(
        [sys.executable, '-m', 'tensorguard_ros.transport_check', 'listener', '--timeout', '2'],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert '"timed out"' in result.stdout
