"""The repository's one lint configuration (ruff.toml) holds for every Python file."""
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which('ruff')
    assert ruff, 'ruff is not installed: it is pinned in requirements/base.txt (scripts/bootstrap installs it)'
    result = subprocess.run([ruff, 'check', '--no-cache', str(ROOT)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
