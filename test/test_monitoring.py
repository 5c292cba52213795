"""The web dashboard watching a real fleet: two simulated robots, their edge nodes, the aggregator, the key
service and the dashboard (``tensorguard_monitor.dashboard_node``), each its own process over DDS, and
headless Chromium loading the page. One fleet serves the module; the tests run in order.

Checked: the page shows each round's row within 1 s of the FleetStatus that closes the round (for a
round run from the dashboard with the token and for one run by another client); a write without the
token gets 403 and no round runs; ``/metrics`` parses and matches what the nodes publish; the
dashboard process stays under 150 MB RSS without torch; the page and its assets weigh under 500 KB;
a screenshot of the page is a real picture. The dashboard's snapshot is saved next to the screenshot
(and to ``$TENSORGUARD_MONITOR_RECORD`` when set) for ``python -m tensorguard_monitor.screenshot``.
"""
from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import rclpy
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from rclpy.action import ActionClient
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tensorguard_crypto.fleet import FleetPaths
from tensorguard_monitor.screenshot import chromium
from tensorguard_monitor.web import TOKEN_HEADER, write_token_file
from tensorguard_msgs.action import RunRound
from tensorguard_msgs.msg import FleetStatus, RobotStatus
from tensorguard_ros import qos, topics
from tensorguard_sim.plan import load_config
from tensorguard_sim.provisioning import provision
from tensorguard_sim.simulated_fleet import Processes, start_fleet

sys.path.insert(0, str(Path(__file__).parent))
from test_fleet_integration import DATA, fleet_parameters  # noqa: E402 - the fleet test's parameter files

pytestmark = [pytest.mark.ros, pytest.mark.slow]

# The gate deploys every aggregated candidate (no canary trial): one evaluation per round keeps the
# module's rounds short on a shared machine.
NO_CANARY = '/tensorguard/aggregator:\n  ros__parameters:\n    deploy_margin: 0.0\n'
ROBOTS = ['robot_1', 'robot_2']
RSS_LIMIT_KB = 150 * 1024
PAGE_LIMIT_BYTES = 500_000
ROW_LATENCY_S = 1.0
# Collection deadline of the module's rounds: training on a machine shared with other fleets can take minutes.
ROUND_DEADLINE_S = 300.0
# Records, per round id, when its row first appeared in the rounds table (browser clock = system clock).
WATCH_ROWS = """
window.rowSeen = window.rowSeen || {};
const note = () => document.querySelectorAll('#rounds tbody tr[data-round-id]').forEach((row) => {
  const id = row.getAttribute('data-round-id'); if (!(id in window.rowSeen)) window.rowSeen[id] = Date.now() / 1000; });
new MutationObserver(note).observe(document.querySelector('#rounds tbody'), { childList: true });
note();
"""


class Watcher(Node):
    """The test's own view of the fleet: every FleetStatus with its receipt time, each robot's last status."""

    def __init__(self) -> None:
        super().__init__('monitoring_test')
        self.lock = threading.Lock()
        self.statuses: list[tuple[float, FleetStatus]] = []
        self.robots: dict[str, RobotStatus] = {}
        self.create_subscription(FleetStatus, topics.FLEET_STATUS, self._on_fleet, qos.STATUS)
        for robot in ROBOTS:
            self.create_subscription(RobotStatus, f'/{robot}/status', self._on_robot, qos.STATUS)
        self.run_round = ActionClient(self, RunRound, topics.RUN_ROUND)

    def _on_fleet(self, msg: FleetStatus) -> None:
        with self.lock:
            self.statuses.append((time.time(), msg))

    def _on_robot(self, msg: RobotStatus) -> None:
        with self.lock:
            self.robots[msg.robot_id] = msg

    @property
    def fleet(self) -> FleetStatus | None:
        with self.lock:
            return self.statuses[-1][1] if self.statuses else None

    def since(self, started: float) -> list[FleetStatus]:
        """FleetStatus messages received after `started`."""
        with self.lock:
            return [msg for t, msg in self.statuses if t >= started]

    def closing_status_time(self, round_id: int) -> float | None:
        """Receipt time of the first status showing round `round_id` closed (idle, no participants) after
        one showing it open."""
        with self.lock:
            opened = False
            for t, msg in self.statuses:
                if msg.round_id == round_id and (msg.phase != 'idle' or msg.participants):
                    opened = True
                elif opened and msg.phase == 'idle' and not msg.participants:
                    return t
        return None


def wait_for(predicate, timeout: float, what: str, procs: Processes | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        dead = procs.dead() if procs else []
        if dead:
            raise AssertionError(f'{", ".join(dead)} exited while waiting for {what}')
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class MonitoredFleet:
    """A running two-robot fleet, the dashboard process (token enabled), and the test's watcher node."""

    def __init__(self, run_dir: Path) -> None:
        passphrase = secrets.token_urlsafe(24)
        shared, plan = load_config(DATA / 'fleet_test.yaml', DATA / 'fleet_test_plan.yaml')
        self.plan = replace(plan, robots=len(ROBOTS))
        paths = FleetPaths(run_dir / 'fleet')
        (run_dir / 'logs').mkdir(parents=True)
        provision(paths, shared, self.plan, passphrase.encode(), lambda _text: None)
        self.procs = Processes(run_dir / 'logs', {**os.environ, 'TENSORGUARD_KEY_PASSPHRASE': passphrase,
                                                  'OMP_NUM_THREADS': '1'})
        params_file = fleet_parameters(run_dir, NO_CANARY)
        start_fleet(self.procs, params_file, paths, self.plan)
        self.token_file = run_dir / 'dashboard.token'
        write_token_file(self.token_file)
        self.token = self.token_file.read_text().strip()
        self.url = f'http://127.0.0.1:{free_port()}'
        port = self.url.rsplit(':', 1)[1]
        self.procs.children['dashboard'] = subprocess.Popen(
            [sys.executable, '-m', 'tensorguard_monitor.dashboard_node', '--port', port,
             '--token-file', str(self.token_file)],
            stdout=open(run_dir / 'logs' / 'dashboard.log', 'w'), stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != 'TENSORGUARD_KEY_PASSPHRASE'}, start_new_session=True)
        self.dashboard_pid = self.procs.children['dashboard'].pid
        self.max_rss_kb = 0
        self._sampling = threading.Event()
        threading.Thread(target=self._sample_rss, daemon=True).start()
        rclpy.init()
        self.watcher = Watcher()
        self.executor = MultiThreadedExecutor(num_threads=2)
        self.executor.add_node(self.watcher)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _sample_rss(self) -> None:
        """The dashboard's peak resident set size while the fleet runs, from /proc/<pid>/status."""
        status = Path(f'/proc/{self.dashboard_pid}/status')
        while not self._sampling.wait(0.25):
            try:
                match = re.search(r'^VmRSS:\s+(\d+) kB', status.read_text(), re.MULTILINE)
            except OSError:
                return
            if match:
                self.max_rss_kb = max(self.max_rss_kb, int(match.group(1)))

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return response.read()

    def snapshot(self) -> dict:
        return json.loads(self.get('/api/snapshot'))['snapshot']

    def post(self, path: str, body: dict, token: str | None) -> tuple[int, dict]:
        headers = {'Content-Type': 'application/json', **({TOKEN_HEADER: token} if token is not None else {})}
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), headers=headers,
                                         method='POST')
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def close(self) -> None:
        self._sampling.set()
        self.executor.shutdown()
        self.watcher.destroy_node()
        rclpy.try_shutdown()
        self.procs.stop_all()


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    # A domain of its own: other fleets (other test runs on this machine) must not mix into this one.
    domain = os.environ.get('ROS_DOMAIN_ID')
    os.environ['ROS_DOMAIN_ID'] = str(random.randint(100, 200))
    running = None
    try:
        running = MonitoredFleet(tmp_path_factory.mktemp('monitoring'))
        wait_for(lambda: _reachable(running), 180, 'the dashboard to serve', running.procs)
        wait_for(lambda: len(running.snapshot()['robots']) == len(ROBOTS)
                 and all(r['episodes_buffered'] >= 2 for r in running.snapshot()['robots']), 300,
                 'every robot to report demonstrations through the dashboard', running.procs)
        wait_for(lambda: running.watcher.run_round.server_is_ready(), 60, 'the RunRound server', running.procs)
        yield running
    finally:
        if running is not None:
            running.close()
        if domain is None:
            os.environ.pop('ROS_DOMAIN_ID', None)
        else:
            os.environ['ROS_DOMAIN_ID'] = domain


def _reachable(fleet: MonitoredFleet) -> bool:
    try:
        return fleet.snapshot()['status_seen_at'] is not None
    except OSError:
        return False


@pytest.fixture(scope='module')
def browser(fleet, tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp('chromium-profile'))
    try:
        driver.get(fleet.url + '/')
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, 'phase').text == 'idle'
                                        and len(d.find_elements(By.CSS_SELECTOR, '#robots tbody tr')) == 2)
        driver.execute_script(WATCH_ROWS)
        yield driver
    finally:
        driver.quit()


def _round_row_latency(fleet: MonitoredFleet, browser, round_id: int) -> float:
    """Seconds from the FleetStatus closing `round_id` reaching the test to its row appearing on the page."""
    wait_for(lambda: fleet.watcher.closing_status_time(round_id) is not None, 400, f'round {round_id} to close',
             fleet.procs)
    closed = fleet.watcher.closing_status_time(round_id)
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(f'return window.rowSeen["{round_id}"]'))
    return browser.execute_script(f'return window.rowSeen["{round_id}"]') - closed


def test_a_write_without_the_token_is_refused_and_no_round_runs(fleet, browser):
    before = fleet.snapshot()
    started = time.time()
    assert fleet.post('/api/round', {}, None) == (403, {'error': f'missing or wrong {TOKEN_HEADER} header'})
    assert fleet.post('/api/round', {}, 'not-the-token-0123456789')[0] == 403
    assert fleet.post('/api/revoke', {'robot_id': 'robot_1'}, None)[0] == 403
    time.sleep(3.0)
    statuses = fleet.watcher.since(started)
    assert statuses and all(s.phase == 'idle' and s.round_id == before['round_id'] for s in statuses)
    after = fleet.snapshot()
    assert after['actions'] == [] and after['rounds'] == before['rounds'] and after['revoked'] == []
    assert browser.find_element(By.ID, 'mode').text == 'actions enabled (token)'


def test_a_round_run_with_the_token_appears_on_the_page_within_a_second(fleet, browser):
    status, answer = fleet.post('/api/round', {'deadline_seconds': ROUND_DEADLINE_S}, fleet.token)
    assert status == 202, answer
    wait_for(lambda: fleet.watcher.fleet.phase != 'idle', 30, 'the round to open', fleet.procs)
    round_id = fleet.watcher.fleet.round_id
    latency = _round_row_latency(fleet, browser, round_id)
    assert latency < ROW_LATENCY_S, f'round {round_id} row appeared {latency:.2f} s after its closing status'
    print(f'round {round_id} row appeared {latency:+.2f} s after its closing status')
    wait_for(lambda: fleet.snapshot()['actions'][-1]['status'] != 'running', 120, 'the action to finish')
    action = fleet.snapshot()['actions'][-1]
    assert (action['kind'], action['status'], action['round_id']) == ('run_round', 'succeeded', round_id)
    row = browser.find_element(By.CSS_SELECTOR, f'#rounds tr[data-round-id="{round_id}"]').text
    assert 'aggregated' in row and ('deploy' in row or 'canary' in row), row


def test_a_round_run_by_another_client_appears_within_a_second(fleet, browser):
    goal = fleet.watcher.run_round.send_goal_async(RunRound.Goal(deadline_seconds=ROUND_DEADLINE_S))
    wait_for(goal.done, 30, 'the goal to be accepted', fleet.procs)
    result = goal.result().get_result_async()
    wait_for(lambda: fleet.watcher.fleet.phase != 'idle', 30, 'the round to open', fleet.procs)
    round_id = fleet.watcher.fleet.round_id
    latency = _round_row_latency(fleet, browser, round_id)
    assert latency < ROW_LATENCY_S, f'round {round_id} row appeared {latency:.2f} s after its closing status'
    print(f'round {round_id} row appeared {latency:+.2f} s after its closing status')
    wait_for(result.done, 120, 'the round result', fleet.procs)
    assert result.result().result.success
    rounds = fleet.snapshot()['rounds']
    assert [r['outcome'] for r in rounds] == ['aggregated', 'aggregated']
    assert all(sorted(r['participants']) == ROBOTS for r in rounds)


def test_metrics_parse_and_match_what_the_nodes_publish(fleet):
    wait_for(lambda: all(fleet.watcher.robots[r].last_round_id == fleet.watcher.fleet.round_id for r in ROBOTS)
             and all(fleet.watcher.robots[r].model_version == fleet.watcher.fleet.model_version for r in ROBOTS),
             60, 'every robot to report the last round and model')
    mismatches = None
    for _ in range(10):  # a scrape can fall between two status messages: retry until one agrees
        families = {f.name: f for f in text_string_to_metric_families(fleet.get('/metrics').decode())}
        mismatches = _metric_mismatches(families, fleet.watcher.fleet, fleet.watcher.robots, fleet.snapshot())
        if not mismatches:
            break
        time.sleep(0.5)
    assert not mismatches


def _metric_mismatches(families, status: FleetStatus, robots: dict[str, RobotStatus], snapshot: dict) -> list:
    def value(name: str, **labels) -> float | None:
        return next((s.value for family in families.values() for s in family.samples
                     if s.name == name and s.labels == labels), None)

    expected = {('tensorguard_rounds_total', (('outcome', 'aggregated'),)): 2,
                ('tensorguard_round_duration_seconds_count', ()): 2,
                ('tensorguard_fleet_model_version', ()): status.model_version,
                ('tensorguard_fleet_round_id', ()): status.round_id,
                ('tensorguard_fleet_enrolled_robots', ()): len(status.enrolled_robots),
                ('tensorguard_candidate_success_rate', ()): status.last_success_rate,
                ('tensorguard_candidate_success_lower_bound', ()): status.last_success_lower_bound,
                ('tensorguard_gate_decision', (('decision', status.last_gate_decision),)): 1,
                ('tensorguard_update_bytes_received_total', ()): sum(
                    sum(r['bytes_by_robot'].values()) for r in snapshot['rounds'])}
    for reason in status.rejections:
        expected[('tensorguard_rejections_total', (('reason', reason.reason),))] = reason.count
    for robot_id, robot in robots.items():
        label = (('robot', robot_id),)
        expected.update({('tensorguard_robot_epsilon_spent', label): robot.epsilon_spent,
                         ('tensorguard_robot_epsilon_budget', label): robot.epsilon_budget,
                         ('tensorguard_robot_last_update_bytes', label): robot.last_update_bytes,
                         ('tensorguard_robot_model_version', label): robot.model_version,
                         ('tensorguard_robot_silent', label): 0})
    assert expected[('tensorguard_update_bytes_received_total', ())] > 0
    return [(name, dict(labels), value(name, **dict(labels)), want) for (name, labels), want in expected.items()
            if value(name, **dict(labels)) is None or abs(value(name, **dict(labels)) - want) > 1e-9 * max(1, want)]


def test_dashboard_stays_small_and_never_loads_torch(fleet):
    maps = Path(f'/proc/{fleet.dashboard_pid}/maps').read_text()
    assert 'torch' not in maps and 'metaworld' not in maps
    assert 0 < fleet.max_rss_kb < RSS_LIMIT_KB, f'dashboard peak RSS {fleet.max_rss_kb} kB'
    print(f'dashboard peak RSS {fleet.max_rss_kb / 1024:.1f} MiB')


def test_page_weight_is_under_500_kb(fleet):
    html = fleet.get('/')
    assets = re.findall(r'(?:src|href)="(/assets/[^"]+)"', html.decode())
    total = len(html) + sum(len(fleet.get(asset)) for asset in assets)
    assert assets and total < PAGE_LIMIT_BYTES, f'page and assets weigh {total} bytes'
    print(f'page weight {total} bytes ({len(assets)} assets)')


def test_screenshot_of_the_live_page_is_a_real_picture(fleet, browser, tmp_path_factory):
    out = tmp_path_factory.mktemp('screenshot')
    (out / 'snapshot.json').write_text(json.dumps(fleet.snapshot(), indent=1))
    if os.environ.get('TENSORGUARD_MONITOR_RECORD'):
        shutil.copy(out / 'snapshot.json', os.environ['TENSORGUARD_MONITOR_RECORD'])
    assert browser.find_elements(By.CSS_SELECTOR, '#success-plot polyline.success')
    assert browser.save_screenshot(str(out / 'dashboard.png'))
    with Image.open(out / 'dashboard.png') as image:
        assert image.format == 'PNG' and image.width >= 1000 and image.height >= 700
        colours = image.convert('RGB').getcolors(maxcolors=1 << 20)
    assert len(colours) > 200, f'{len(colours)} distinct colours: the page looks blank'
    assert (out / 'dashboard.png').stat().st_size > 30_000
    print(f'screenshot {out / "dashboard.png"}')
