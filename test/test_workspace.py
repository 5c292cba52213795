"""The workspace itself: package manifests, library boundaries, bootstrap and test command."""
import ast
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent for p in (ROOT / 'src').glob('*/package.xml'))
PYTHON_PACKAGES = [p for p in PACKAGES if (p / 'setup.py').exists()]
LIBRARIES = ['tensorguard_crypto', 'tensorguard_learning']
ROS_MODULES = {'rclpy', 'rosidl_runtime_py', 'launch', 'launch_ros', 'tensorguard_msgs',
               'tensorguard_ros', 'std_msgs', 'sensor_msgs', 'diagnostic_msgs'}
TENSORGUARD = {p.name for p in PACKAGES}
# Robot and server share only messages and libraries; the simulation may import both. The rqt plugin
# sees the fleet only through its ROS interfaces (its integration test starts a fleet through tensorguard_sim).
# So does the monitor (and its dashboard stays small: no torch through the learning library); the
# `tensorguard` command reaches the monitor through an entry point, never an import. The Flower
# integration is ROS-free: it uses the robot's and the server's libraries, never the ROS simulation.
NEVER_IMPORTS = {'tensorguard_edge': {'tensorguard_aggregator', 'tensorguard_sim'},
                 'tensorguard_aggregator': {'tensorguard_edge', 'tensorguard_sim'},
                 'tensorguard_rqt': {'tensorguard_edge', 'tensorguard_aggregator'},
                 'tensorguard_monitor': {'tensorguard_learning', 'tensorguard_edge', 'tensorguard_aggregator',
                                         'tensorguard_sim'},
                 'tensorguard_policy': {'tensorguard_aggregator', 'tensorguard_sim'},
                 'tensorguard_crypto': {'tensorguard_monitor'},
                 'tensorguard_flower': {'tensorguard_sim'}}
# Modules of ROS packages that are ROS-free by design (tested and used without ROS).
ROS_FREE_MODULES = ['tensorguard_monitor/tensorguard_monitor/fleet_state.py',
                    'tensorguard_monitor/tensorguard_monitor/metrics.py',
                    'tensorguard_monitor/tensorguard_monitor/web.py']


def _imports(source: Path) -> set[str]:
    """Top-level names of every module `source` imports (anywhere in the file)."""
    names = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split('.')[0])
    return names


def _dependencies(pkg: Path, *tags: str) -> set[str]:
    """Names `pkg`'s package.xml lists under the given tags."""
    root = ET.parse(pkg / 'package.xml').getroot()
    return {element.text.strip() for tag in tags for element in root.iter(tag)}


def _runtime_dependencies(pkg: Path) -> set[str]:
    return _dependencies(pkg, 'depend', 'exec_depend')


def _sources(pkg: Path) -> list[tuple[Path, bool]]:
    """(file, is a test) for every Python file of a Python package: its module and its test/."""
    return ([(f, False) for f in sorted((pkg / pkg.name).rglob('*.py'))]
            + [(f, True) for f in sorted((pkg / 'test').rglob('*.py'))])


def test_every_package_is_format_3_with_matching_build_type():
    names = {p.name for p in PACKAGES}
    assert {'tensorguard_msgs', 'tensorguard_crypto', 'tensorguard_learning',
            'tensorguard_edge', 'tensorguard_aggregator', 'tensorguard_ros', 'tensorguard_sim'} <= names
    for pkg in PACKAGES:
        root = ET.parse(pkg / 'package.xml').getroot()
        assert root.get('format') == '3', pkg.name
        assert root.findtext('name') == pkg.name
        build_type = root.find('export/build_type').text
        assert build_type == ('ament_python' if (pkg / 'setup.py').exists() else 'ament_cmake'), pkg.name


def test_python_packages_install_scripts_where_ros_looks_and_declare_tests():
    for pkg in PYTHON_PACKAGES:
        cfg = (pkg / 'setup.cfg').read_text()
        assert f'script_dir=$base/lib/{pkg.name}' in cfg, pkg.name
        assert f'install_scripts=$base/lib/{pkg.name}' in cfg, pkg.name
        assert (pkg / 'resource' / pkg.name).exists(), pkg.name
        assert "extras_require={'test':" in (pkg / 'setup.py').read_text(), pkg.name


@pytest.mark.parametrize('library', LIBRARIES)
def test_libraries_never_import_ros(library):
    offenders = [f'{source.relative_to(ROOT)}: {sorted(_imports(source) & ROS_MODULES)}'
                 for source in (ROOT / 'src' / library).rglob('*.py') if _imports(source) & ROS_MODULES]
    assert not offenders


@pytest.mark.parametrize('module', ROS_FREE_MODULES)
def test_ros_free_modules_never_import_ros(module):
    assert not _imports(ROOT / 'src' / module) & ROS_MODULES


@pytest.mark.parametrize('pkg', PYTHON_PACKAGES, ids=lambda p: p.name)
def test_packages_import_only_the_tensorguard_packages_they_declare(pkg):
    """Modules may import their runtime dependencies; tests also their test dependencies."""
    runtime = _runtime_dependencies(pkg) | {pkg.name}
    tests = runtime | _dependencies(pkg, 'test_depend')
    offenders = [f'{source.relative_to(ROOT)}: {sorted(undeclared)}' for source, is_test in _sources(pkg)
                 if (undeclared := (_imports(source) & TENSORGUARD) - (tests if is_test else runtime))]
    assert not offenders, 'imports a TensorGuard package its package.xml does not declare'


@pytest.mark.parametrize('name', sorted(NEVER_IMPORTS))
def test_robot_and_server_never_depend_on_each_other_or_the_simulation(name):
    pkg = ROOT / 'src' / name
    forbidden = NEVER_IMPORTS[name]
    assert not _dependencies(pkg, 'depend', 'exec_depend', 'build_depend', 'test_depend') & forbidden
    offenders = [f'{source.relative_to(ROOT)}: {sorted(_imports(source) & forbidden)}'
                 for source, _ in _sources(pkg) if _imports(source) & forbidden]
    assert not offenders, 'tests spanning edge and server belong in the top-level test/'


def test_the_import_check_sees_every_kind_of_import(tmp_path):
    source = tmp_path / 'sample.py'
    source.write_text('import rclpy.node\nfrom tensorguard_edge.client import EdgeClient\n'
                      'from . import sibling\n\ndef f():\n    import tensorguard_sim.plan as plan\n')
    assert _imports(source) == {'rclpy', 'tensorguard_edge', 'tensorguard_sim'}


def test_second_bootstrap_run_is_fast():
    subprocess.run([str(ROOT / 'scripts' / 'bootstrap')], check=True,
                   env={**os.environ, 'TG_BOOTSTRAP_QUIET': '1'})
    started = time.monotonic()
    subprocess.run([str(ROOT / 'scripts' / 'bootstrap')], check=True,
                   env={**os.environ, 'TG_BOOTSTRAP_QUIET': '1'})
    assert time.monotonic() - started < 20


def _run_test_command(*args):
    return subprocess.run([str(ROOT / 'scripts' / 'test'), *args, '-q'],
                          capture_output=True, text=True, timeout=300)


def test_test_command_fails_when_no_test_ran(tmp_path):
    result = _run_test_command(str(tmp_path))
    assert result.returncode != 0
    assert 'no test ran' in result.stderr


def test_test_command_fails_when_a_test_fails(tmp_path):
    (tmp_path / 'test_failing.py').write_text('def test_fails():\n    assert 1 == 2\n')
    (tmp_path / 'test_passing.py').write_text('def test_passes():\n    assert 1 == 1\n')
    result = _run_test_command(str(tmp_path))
    assert result.returncode == 1
    assert '1 failed, 1 passed' in result.stdout


def test_operator_command_is_on_path_after_sourcing_env():
    """The documented `tensorguard` command runs after `source scripts/env.sh` in a clean shell: colcon's
    package hook puts install/tensorguard_crypto/bin on PATH (the console script itself stays in lib/)."""
    environment = {'HOME': os.environ.get('HOME', '/root'), 'PATH': '/usr/local/bin:/usr/bin:/bin', 'LANG': 'C.UTF-8'}
    result = subprocess.run(['bash', '-c', 'source scripts/env.sh && command -v tensorguard && tensorguard --help'],
                            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    located, _, usage = result.stdout.partition('\n')
    assert located == str(ROOT / 'install' / 'tensorguard_crypto' / 'bin' / 'tensorguard')
    assert usage.startswith('usage: tensorguard') and 'kms' in usage
