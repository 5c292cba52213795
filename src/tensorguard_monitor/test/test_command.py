"""`tensorguard dashboard`: found through the tensorguard.commands entry point, and a clear error without it."""
from __future__ import annotations

import subprocess
import sys

from tensorguard_crypto import cli


def test_tensorguard_help_lists_the_dashboard_and_dispatches_to_it():
    assert 'dashboard' in cli._installed_commands()
    assert cli._installed_commands()['dashboard'].value == 'tensorguard_monitor.dashboard_node:command'
    result = subprocess.run([sys.executable, '-m', 'tensorguard_crypto.cli', '--help'], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and 'dashboard' in result.stdout
    result = subprocess.run([sys.executable, '-m', 'tensorguard_crypto.cli', 'dashboard', '--help'],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith('usage: tensorguard dashboard')
    assert '--token-file' in result.stdout


def test_without_the_monitor_package_the_command_names_it(monkeypatch, capsys):
    monkeypatch.setattr(cli, '_installed_commands', lambda: {})
    assert cli.main(['dashboard', '--port', '8000']) == cli.EXIT_USAGE
    assert 'needs the tensorguard_monitor package, which is not installed' in capsys.readouterr().err
    assert 'not installed' in cli.build_parser().format_help()
