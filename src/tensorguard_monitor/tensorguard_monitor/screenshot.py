"""A PNG of the dashboard, taken by headless Chromium: ``python -m tensorguard_monitor.screenshot OUT.png``.

Either of a running dashboard (``--url http://127.0.0.1:8000/``) or of a recorded snapshot
(``--snapshot FILE.json``, the ``snapshot`` of ``GET /api/snapshot``, e.g. the one
test/test_monitoring.py saves from its real fleet run): the snapshot is served read-only by the
same web app on a free localhost port while the browser loads it. Needs Chromium and ChromeDriver
(Debian: ``chromium``, ``chromium-driver``) and selenium; the dashboard itself needs none of them.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

from aiohttp import web
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tensorguard_monitor.fleet_state import FleetSnapshot
from tensorguard_monitor.web import RecordedState, create_app

CHROMIUM = '/usr/bin/chromium'
CHROMEDRIVER = '/usr/bin/chromedriver'
CHROMIUM_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--disable-dev-shm-usage', '--hide-scrollbars')


def chromium(user_data_dir: Path, width: int = 1400, height: int = 1000) -> webdriver.Chrome:
    """Headless Chromium driven by ChromeDriver, with a fresh profile in `user_data_dir` and no network
    traffic of its own (no updates, sync or background requests)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f'--user-data-dir={user_data_dir}', f'--window-size={width},{height}'):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def capture(driver: webdriver.Chrome, url: str, out: Path, timeout_s: float = 30.0) -> None:
    """Load `url`, wait until the page shows round rows, resize to the whole page and save a PNG to `out`."""
    driver.get(url)
    WebDriverWait(driver, timeout_s).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#rounds tbody tr'))
    width = driver.execute_script('return document.documentElement.clientWidth')
    height = driver.execute_script('return document.documentElement.scrollHeight')
    driver.execute_cdp_cmd('Emulation.setDeviceMetricsOverride',
                           {'width': width, 'height': height, 'deviceScaleFactor': 1, 'mobile': False})
    driver.save_screenshot(str(out))


@contextmanager
def serve_snapshot(snapshot: FleetSnapshot) -> Iterator[str]:
    """Serve `snapshot` read-only on a free localhost port in a background thread; yields the page URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(RecordedState(snapshot)), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, '127.0.0.1', 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{port}/'
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point: take the screenshot."""
    parser = argparse.ArgumentParser(prog='screenshot', description=__doc__.splitlines()[0])
    parser.add_argument('out', type=Path, help='PNG to write')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--snapshot', type=Path, help='recorded snapshot JSON to serve and capture')
    source.add_argument('--url', help='URL of a running dashboard')
    parser.add_argument('--width', type=int, default=1400)
    args = parser.parse_args(argv)
    with TemporaryDirectory(prefix='tg-chromium-') as profile:
        driver = chromium(Path(profile), width=args.width)
        try:
            if args.url:
                capture(driver, args.url, args.out)
            else:
                data = json.loads(args.snapshot.read_text())
                with serve_snapshot(FleetSnapshot.from_json(data.get('snapshot', data))) as url:
                    capture(driver, url, args.out)
        finally:
            driver.quit()
    print(f'screenshot written to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
