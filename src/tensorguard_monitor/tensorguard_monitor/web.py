"""The web dashboard: an aiohttp application over a `FleetState` and an actions interface (ROS-free).

Routes:

- ``GET /`` and ``GET /assets/<file>``: the page, its script and style, shipped in this package (no CDN);
- ``GET /api/snapshot``: ``{"writable": bool, "snapshot": FleetSnapshot.to_json()}``;
- ``GET /api/events``: server-sent events, pushed when the model changes (at most every
  `min_event_interval_s`, and every `heartbeat_s` without changes): ``snapshot`` (everything but the
  round history) and ``rounds`` (the history, only when it changed);
- ``GET /metrics``: Prometheus exposition (`tensorguard_monitor.metrics`);
- ``POST /api/round`` (``{"deadline_seconds", "quorum"}``, both optional) and ``POST /api/revoke``
  (``{"robot_id", "reason"}``): operator actions, answered 202 with the action's id; their progress
  and outcome arrive through the model.

Read-only unless a token is configured. A write must carry it in the ``X-TensorGuard-Token`` header
(never a cookie, so a browser never sends it on its own), use ``Content-Type: application/json``, and
come from this origin (``Origin`` and ``Sec-Fetch-Site``, when the client sends them); otherwise 403.
Every request must name an expected host in ``Host`` (localhost names and the bound address with the
listening port, or one of `allowed_hosts`), which defeats DNS rebinding. Responses carry a strict
Content-Security-Policy.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tensorguard_monitor.fleet_state import FleetSnapshot, RevokeResult, RoundFeedback, RoundResult
from tensorguard_monitor.metrics import registry

TOKEN_HEADER = 'X-TensorGuard-Token'
ASSETS = {'app.js': 'text/javascript', 'app.css': 'text/css', 'favicon.svg': 'image/svg+xml'}
LOCAL_NAMES = ('localhost', '127.0.0.1', '::1')
HOST = re.compile(r'(?P<name>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?')
ROBOT_ID = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,63}')
MAX_REASON = 200
SECURITY_HEADERS = {
    'Content-Security-Policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    'X-Content-Type-Options': 'nosniff',
    'X-Frame-Options': 'DENY',
    'Referrer-Policy': 'no-referrer',
    'Cross-Origin-Resource-Policy': 'same-origin',
}
log = logging.getLogger('tensorguard_monitor.web')


class TokenFileError(Exception):
    """The token file is missing, unreadable, too permissive or does not hold a usable token."""


class StateSource(Protocol):
    """What the web app reads: a `FleetState`, or a recorded snapshot (`RecordedState`)."""

    def snapshot(self, now: float | None = None) -> FleetSnapshot:
        """The current snapshot."""

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call `listener(version)` on every change."""

    def remove_listener(self, listener: Callable[[int], None]) -> None:
        """Stop calling `listener`."""


class Actions(Protocol):
    """The operator actions the app may call (`tensorguard_monitor.fleet_actions.FleetActions`)."""

    def run_round(self, on_feedback: Callable[[RoundFeedback], None] | None = None,
                  on_done: Callable[[RoundResult], None] | None = None, deadline_seconds: float = 0.0,
                  quorum: int = 0) -> int:
        """Start a round without blocking; returns the action id."""

    def revoke(self, robot_id: str, reason: str, on_done: Callable[[RevokeResult], None] | None = None) -> int:
        """Revoke a robot without blocking; returns the action id."""


class RecordedState:
    """A `StateSource` that always shows one recorded snapshot (for screenshots and demos)."""

    def __init__(self, snapshot: FleetSnapshot) -> None:
        self._snapshot = snapshot

    def snapshot(self, now: float | None = None) -> FleetSnapshot:
        """The recorded snapshot, as taken."""
        return self._snapshot

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Nothing ever changes."""

    def remove_listener(self, listener: Callable[[int], None]) -> None:
        """Nothing to remove."""


@dataclass(frozen=True)
class WebSettings:
    """How the app serves. `token` None: read-only. ``Host`` must name a local name or the bound `host` with
    the listening port, or one of `allowed_hosts` (any port: e.g. the name a TLS reverse proxy forwards)."""

    host: str = '127.0.0.1'
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    min_event_interval_s: float = 0.2
    heartbeat_s: float = 5.0
    max_event_streams: int = 16


def read_token_file(path: Path) -> str:
    """The token in `path`: a regular file, not a symlink, mode 0600 or stricter (no group or other
    bits), holding at least 16 characters. Raises `TokenFileError` with the reason otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise TokenFileError(f'token file {path}: {exc.strerror}') from None
    with os.fdopen(fd, 'rb') as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise TokenFileError(f'token file {path} is not a regular file')
        if info.st_mode & 0o077:
            raise TokenFileError(f'token file {path} has mode {stat.S_IMODE(info.st_mode):04o}: group or others '
                                 f'may read it; run chmod 600 {path}')
        token = handle.read(4096).decode('utf-8', 'replace').strip()
    if len(token) < 16 or any(c.isspace() or not c.isprintable() for c in token):
        raise TokenFileError(f'token file {path} must hold one token of at least 16 printable characters')
    return token


def write_token_file(path: Path) -> None:
    """Create `path` (it must not exist) with mode 0600 holding a new random token."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, 'w') as handle:
        handle.write(secrets.token_urlsafe(32) + '\n')


def _error(status: int, message: str) -> web.Response:
    return web.json_response({'error': message}, status=status)


class Dashboard:
    """The request handlers and middleware of one app (see module docstring)."""

    def __init__(self, state: StateSource, actions: Actions | None, settings: WebSettings) -> None:
        self.state = state
        self.actions = actions
        self.settings = settings
        self.registry = registry(state)
        self.streams = 0
        self.closing = asyncio.Event()
        self.local_names = {n.lower() for n in (*LOCAL_NAMES, settings.host)}
        self.allowed_names = {n.lower() for n in settings.allowed_hosts}
        package = resources.files('tensorguard_monitor') / 'assets'
        self.assets = {name: (package / name).read_bytes() for name in (*ASSETS, 'index.html')}

    @property
    def writable(self) -> bool:
        """Whether write actions are possible at all (a token is configured)."""
        return self.settings.token is not None

    # Middleware.
    @web.middleware
    async def guard(self, request: web.Request, handler) -> web.StreamResponse:
        """Host check for every request, origin and token checks for writes, security headers; a
        failing handler answers 500 and the server keeps serving."""
        refusal = self._refusal(request)
        if refusal is not None:
            response = _error(403, refusal)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = _error(exc.status, exc.reason)
            except (ConnectionResetError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - a bad request must never take the dashboard down.
                log.error('%s %s failed: %s', request.method, request.path, type(exc).__name__)
                response = _error(500, 'internal error')
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response

    def _refusal(self, request: web.Request) -> str | None:
        """Why `request` is refused (403), or None."""
        host = HOST.fullmatch(request.headers.get('Host', ''))
        name = host['name'].lower().strip('[]') if host else ''
        local = name in self.local_names and int(host['port'] or 80) == self._local_port(request)
        if not (local or name in self.allowed_names):
            return 'unexpected Host header'
        if request.method in ('GET', 'HEAD'):
            return None
        if request.headers.get('Sec-Fetch-Site', 'same-origin') not in ('same-origin', 'none'):
            return 'cross-site request refused'
        origin = request.headers.get('Origin')
        if origin is not None and urlsplit(origin).netloc.lower() != request.headers['Host'].lower():
            return 'cross-origin request refused'
        if request.content_type != 'application/json':
            return 'writes need Content-Type: application/json'
        if self.settings.token is None:
            return 'read-only dashboard: start it with --token-file to allow actions'
        supplied = request.headers.get(TOKEN_HEADER, '')
        if not secrets.compare_digest(supplied.encode(), self.settings.token.encode()):
            return f'missing or wrong {TOKEN_HEADER} header'
        return None

    @staticmethod
    def _local_port(request: web.Request) -> int | None:
        sockname = request.transport.get_extra_info('sockname') if request.transport else None
        return sockname[1] if sockname else None

    # Pages and data.
    async def index(self, request: web.Request) -> web.Response:
        """The page."""
        return web.Response(body=self.assets['index.html'], content_type='text/html', charset='utf-8',
                            headers={'Cache-Control': 'no-cache'})

    async def asset(self, request: web.Request) -> web.Response:
        """One of the shipped assets (a fixed list: no path from the request reaches the file system)."""
        name = request.match_info['name']
        if name not in ASSETS:
            raise web.HTTPNotFound(reason='no such asset')
        return web.Response(body=self.assets[name], content_type=ASSETS[name], headers={'Cache-Control': 'no-cache'})

    async def snapshot(self, request: web.Request) -> web.Response:
        """The whole snapshot as JSON."""
        return web.json_response({'writable': self.writable, 'snapshot': self.state.snapshot().to_json()},
                                 headers={'Cache-Control': 'no-store'})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus exposition."""
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, self.registry)
        return web.Response(body=body, headers={'Content-Type': CONTENT_TYPE_LATEST, 'Cache-Control': 'no-store'})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the snapshot on every change, coalesced (see module docstring)."""
        if self.streams >= self.settings.max_event_streams:
            raise web.HTTPServiceUnavailable(reason='too many open event streams')
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def listener(_version: int) -> None:
            loop.call_soon_threadsafe(changed.set)

        response = web.StreamResponse(headers={**SECURITY_HEADERS, 'Content-Type': 'text/event-stream',
                                               'Cache-Control': 'no-store', 'X-Accel-Buffering': 'no'})
        self.streams += 1
        self.state.add_listener(listener)
        try:
            await response.prepare(request)
            await self._stream(response, changed)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.state.remove_listener(listener)
            self.streams -= 1
        return response

    async def _stream(self, response: web.StreamResponse, changed: asyncio.Event) -> None:
        sent_rounds = None
        while not self.closing.is_set():
            changed.clear()
            data = self.state.snapshot().to_json()
            rounds = json.dumps(data.pop('rounds'), separators=(',', ':'))
            if rounds != sent_rounds:
                await response.write(f'event: rounds\ndata: {rounds}\n\n'.encode())
                sent_rounds = rounds
            payload = json.dumps({'writable': self.writable, 'snapshot': data}, separators=(',', ':'))
            await response.write(f'event: snapshot\ndata: {payload}\n\n'.encode())
            await asyncio.sleep(self.settings.min_event_interval_s)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake(changed), self.settings.heartbeat_s)

    async def _wake(self, changed: asyncio.Event) -> None:
        """Return when the model changed or the app is closing."""
        closing = asyncio.ensure_future(self.closing.wait())
        waiting = asyncio.ensure_future(changed.wait())
        try:
            await asyncio.wait([closing, waiting], return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            waiting.cancel()

    # Actions.
    async def run_round(self, request: web.Request) -> web.Response:
        """Start a round through ``RunRound``; 409 while one started here is still running."""
        body = await self._json(request)
        try:
            deadline = float(body.get('deadline_seconds', 0.0))
            quorum = int(body.get('quorum', 0))
        except (TypeError, ValueError):
            raise web.HTTPBadRequest(reason='deadline_seconds must be a number and quorum an integer') from None
        if not (0.0 <= deadline <= 86400.0) or not (0 <= quorum <= 100000):
            raise web.HTTPBadRequest(reason='deadline_seconds or quorum out of range')
        if any(a.kind == 'run_round' and a.status == 'running' for a in self.state.snapshot().actions):
            raise web.HTTPConflict(reason='a round started from this dashboard is still running')
        action_id = self._actions().run_round(deadline_seconds=deadline, quorum=quorum)
        log.info('run round requested from %s', request.remote)
        return web.json_response({'action_id': action_id}, status=202)

    async def revoke(self, request: web.Request) -> web.Response:
        """Revoke a robot through ``RevokeRobot``."""
        body = await self._json(request)
        robot_id, reason = body.get('robot_id'), body.get('reason') or 'revoked from the dashboard'
        if not isinstance(robot_id, str) or not ROBOT_ID.fullmatch(robot_id):
            raise web.HTTPBadRequest(reason='robot_id must be a robot identity')
        if not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable():
            raise web.HTTPBadRequest(reason=f'reason must be printable text of at most {MAX_REASON} characters')
        action_id = self._actions().revoke(robot_id, reason)
        log.warning('revoke %s requested from %s', robot_id, request.remote)
        return web.json_response({'action_id': action_id}, status=202)

    def _actions(self) -> Actions:
        if self.actions is None:
            raise web.HTTPServiceUnavailable(reason='no fleet connection for actions')
        return self.actions

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPBadRequest(reason='the body is not JSON') from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(reason='the body must be a JSON object')
        return body

    async def on_shutdown(self, _app: web.Application) -> None:
        """End every event stream."""
        self.closing.set()


def create_app(state: StateSource, actions: Actions | None = None, settings: WebSettings | None = None,
               ) -> web.Application:
    """The dashboard application over `state`; `actions` (with a token in `settings`) enables writes."""
    dashboard = Dashboard(state, actions, settings or WebSettings())
    app = web.Application(middlewares=[dashboard.guard], client_max_size=16 * 1024)
    app.router.add_get('/', dashboard.index)
    app.router.add_get('/assets/{name}', dashboard.asset)
    app.router.add_get('/api/snapshot', dashboard.snapshot)
    app.router.add_get('/api/events', dashboard.events)
    app.router.add_get('/metrics', dashboard.metrics)
    app.router.add_post('/api/round', dashboard.run_round)
    app.router.add_post('/api/revoke', dashboard.revoke)
    app.on_shutdown.append(dashboard.on_shutdown)
    return app
