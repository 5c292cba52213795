"""The web dashboard without ROS: read-only default, token and 403s, CSRF and Host checks, SSE, assets, token files."""
from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from tensorguard_monitor import dashboard_node
from tensorguard_monitor.fleet_state import FleetState, FleetStatusRecord, RobotStatusRecord
from tensorguard_monitor.web import (
    TOKEN_HEADER,
    TokenFileError,
    WebSettings,
    create_app,
    read_token_file,
    write_token_file,
)

TOKEN = 'a-test-token-0123456789abcdef'
JSON = {'Content-Type': 'application/json'}


class FakeActions:
    """Records the calls the app makes; does nothing else."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def run_round(self, on_feedback=None, on_done=None, deadline_seconds=0.0, quorum=0) -> int:
        self.calls.append(('run_round', deadline_seconds, quorum))
        return 1

    def revoke(self, robot_id, reason, on_done=None) -> int:
        self.calls.append(('revoke', robot_id, reason))
        return 2


def fleet_state() -> FleetState:
    state = FleetState()
    state.apply_fleet_status(FleetStatusRecord(round_id=3, phase='idle', model_version=2, quorum=2,
                                               enrolled_robots=('robot_1',), rejections={'malformed': 4}))
    state.apply_robot_status(RobotStatusRecord('robot_1', epsilon_spent=1.5, epsilon_budget=10.0))
    return state


def serve(test, state: FleetState | None = None, actions: FakeActions | None = None, token: str | None = None,
          **settings):
    """Run `test(client)` against an app on a real localhost socket."""
    async def run():
        app = create_app(state or fleet_state(), actions, WebSettings(token=token, **settings))
        async with TestClient(TestServer(app, host='127.0.0.1')) as client:
            return await test(client)
    return asyncio.run(run())


def test_read_only_by_default_refuses_writes_with_403_even_with_a_token():
    actions = FakeActions()

    async def test(client):
        for path in ('/api/round', '/api/revoke'):
            response = await client.post(path, json={'robot_id': 'robot_1'}, headers={TOKEN_HEADER: TOKEN})
            assert response.status == 403
            assert 'read-only' in (await response.json())['error']
        snapshot = await (await client.get('/api/snapshot')).json()
        assert snapshot['writable'] is False and snapshot['snapshot']['model_version'] == 2

    serve(test, actions=actions)
    assert actions.calls == []


def test_writes_need_the_exact_token_in_the_header():
    actions = FakeActions()

    async def test(client):
        assert (await client.post('/api/round', json={})).status == 403
        assert (await client.post('/api/round', json={}, headers={TOKEN_HEADER: TOKEN[:-1]})).status == 403
        assert (await client.post('/api/round', json={}, headers={TOKEN_HEADER: TOKEN + 'x'})).status == 403
        assert (await client.post('/api/round', json={}, cookies={TOKEN_HEADER: TOKEN})).status == 403
        assert actions.calls == []
        response = await client.post('/api/round', json={'deadline_seconds': 30, 'quorum': 2},
                                     headers={TOKEN_HEADER: TOKEN})
        assert response.status == 202 and (await response.json()) == {'action_id': 1}
        response = await client.post('/api/revoke', json={'robot_id': 'robot_1', 'reason': 'stolen'},
                                     headers={TOKEN_HEADER: TOKEN})
        assert response.status == 202

    serve(test, actions=actions, token=TOKEN)
    assert actions.calls == [('run_round', 30.0, 2), ('revoke', 'robot_1', 'stolen')]


def test_cross_site_requests_and_foreign_hosts_are_refused():
    actions = FakeActions()

    async def test(client):
        auth = {TOKEN_HEADER: TOKEN}
        for headers in ({'Origin': 'http://evil.example'}, {'Origin': 'null'}, {'Sec-Fetch-Site': 'cross-site'},
                        {'Sec-Fetch-Site': 'same-site'}):
            response = await client.post('/api/round', json={}, headers={**auth, **headers})
            assert response.status == 403, headers
        form = await client.post('/api/round', data='a=1', headers={**auth, 'Content-Type': 'text/plain'})
        assert form.status == 403 and 'Content-Type' in (await form.json())['error']
        port = client.server.port
        for host in ('evil.example', f'evil.example:{port}', f'127.0.0.1:{port + 1}', '127.0.0.1:abc', ':::',
                     '127.0.0.1:99999999', '[::1', 'a b', ''):
            response = await client.get('/api/snapshot', headers={'Host': host})
            assert response.status == 403, host
        same_origin = await client.post('/api/round', json={}, headers={
            **auth, 'Origin': f'http://127.0.0.1:{port}', 'Sec-Fetch-Site': 'same-origin'})
        assert same_origin.status == 202
        for host in (f'localhost:{port}', f'[::1]:{port}', f'LOCALHOST:{port}'):
            assert (await client.get('/', headers={'Host': host})).status == 200, host

    serve(test, actions=actions, token=TOKEN)
    assert actions.calls == [('run_round', 0.0, 0)]


def test_a_name_allowed_for_a_reverse_proxy_is_accepted_on_any_port_and_scheme():
    actions = FakeActions()

    async def test(client):
        assert (await client.get('/', headers={'Host': 'dash.example'})).status == 200
        response = await client.post('/api/round', json={}, headers={
            TOKEN_HEADER: TOKEN, 'Host': 'dash.example', 'Origin': 'https://dash.example'})
        assert response.status == 202
        response = await client.post('/api/round', json={}, headers={
            TOKEN_HEADER: TOKEN, 'Host': 'dash.example', 'Origin': 'https://evil.example'})
        assert response.status == 403

    serve(test, actions=actions, token=TOKEN, allowed_hosts=('dash.example',))
    assert len(actions.calls) == 1


def test_bad_requests_get_4xx_and_the_server_keeps_serving():
    actions = FakeActions()

    async def test(client):
        auth = {TOKEN_HEADER: TOKEN, **JSON}
        cases = [('/api/round', b'{not json'), ('/api/round', b'[1, 2]'), ('/api/round', b'{"quorum": "many"}'),
                 ('/api/round', b'{"deadline_seconds": -1}'), ('/api/revoke', b'{}'),
                 ('/api/revoke', b'{"robot_id": "../etc"}'), ('/api/revoke', b'{"robot_id": "r", "reason": 5}'),
                 ('/api/revoke', b'\xff\xfe'), ('/api/round', b'{"x": "' + b'a' * 20000 + b'"}')]
        for path, body in cases:
            response = await client.post(path, data=body, headers=auth)
            assert 400 <= response.status < 500, (path, body[:40], response.status)
        assert (await client.get('/assets/../web.py')).status == 404
        assert (await client.get('/assets/missing.js')).status == 404
        assert (await client.get('/api/snapshot')).status == 200

    serve(test, actions=actions, token=TOKEN)
    assert actions.calls == []


def test_a_second_round_is_refused_while_one_from_this_dashboard_runs():
    state = fleet_state()
    state.action_started('run_round')

    async def test(client):
        response = await client.post('/api/round', json={}, headers={TOKEN_HEADER: TOKEN})
        assert response.status == 409

    serve(test, state=state, actions=FakeActions(), token=TOKEN)


def test_server_sent_events_deliver_a_change_within_a_second():
    state = fleet_state()

    async def test(client):
        response = await client.get('/api/events')
        assert response.headers['Content-Type'].startswith('text/event-stream')
        first = await read_event(response, 'snapshot')
        assert first['snapshot']['round_id'] == 3
        loop = asyncio.get_running_loop()
        started = loop.time()
        loop.call_later(0.3, lambda: state.apply_fleet_status(FleetStatusRecord(
            round_id=4, phase='collecting', model_version=2, quorum=2, enrolled_robots=('robot_1',))))
        while True:
            event = await asyncio.wait_for(read_event(response, 'snapshot'), 2.0)
            if event['snapshot']['round_id'] == 4:
                break
        assert loop.time() - started < 1.3
        response.close()

    serve(test, state=state)


async def read_event(response, name: str) -> dict:
    """The data of the next event called `name` on an SSE response."""
    kind = None
    while True:
        line = (await response.content.readline()).decode().rstrip('\n')
        if line.startswith('event: '):
            kind = line[len('event: '):]
        elif line.startswith('data: ') and kind == name:
            return json.loads(line[len('data: '):])


def test_page_and_assets_are_local_small_and_served_with_a_strict_policy():
    async def test(client):
        page = await client.get('/')
        html = await page.text()
        assert "script-src 'self'" in page.headers['Content-Security-Policy']
        assert page.headers['X-Content-Type-Options'] == 'nosniff'
        assets = re.findall(r'(?:src|href)="(/assets/[^"]+)"', html)
        assert {'/assets/app.js', '/assets/app.css'} <= set(assets)
        total = len(html.encode())
        for asset in assets:
            body = await (await client.get(asset)).read()
            total += len(body)
            assert b'http://' not in body.replace(b'http://www.w3.org/2000/svg', b'') and b'https://' not in body
        assert total < 500_000

    serve(test)


def test_metrics_endpoint_parses():
    async def test(client):
        response = await client.get('/metrics')
        assert response.headers['Content-Type'].startswith('text/plain')
        families = {f.name: f for f in text_string_to_metric_families(await response.text())}
        (sample,) = families['tensorguard_rejections'].samples
        assert sample.labels == {'reason': 'malformed'} and sample.value == 4

    serve(test)


def test_token_file_must_be_private_regular_and_hold_a_token(tmp_path):
    path = tmp_path / 'token'
    write_token_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(read_token_file(path)) >= 32
    with pytest.raises(FileExistsError):
        write_token_file(path)
    path.chmod(0o644)
    with pytest.raises(TokenFileError, match='mode 0644.*chmod 600'):
        read_token_file(path)
    path.chmod(0o640)
    with pytest.raises(TokenFileError, match='mode 0640'):
        read_token_file(path)
    short = tmp_path / 'short'
    short.write_text('abc\n')
    short.chmod(0o600)
    with pytest.raises(TokenFileError, match='at least 16'):
        read_token_file(short)
    link = tmp_path / 'link'
    link.symlink_to(short)
    with pytest.raises(TokenFileError):
        read_token_file(link)
    with pytest.raises(TokenFileError):
        read_token_file(tmp_path / 'missing')


def test_dashboard_command_refuses_a_loose_token_file_with_a_clear_error(tmp_path, capsys):
    path = tmp_path / 'token'
    path.write_text(TOKEN)
    path.chmod(0o644)
    assert dashboard_node.command(['--token-file', str(path)]) == 2
    assert f'token file {path} has mode 0644' in capsys.readouterr().err
    assert dashboard_node.command(['--new-token-file', str(tmp_path / 'new')]) == 0
    assert read_token_file(Path(tmp_path / 'new'))
