// TensorGuard dashboard: renders the fleet-state model pushed by /api/events (server-sent events).
// Hand-written, no dependencies. Text from the fleet is only ever set with textContent.
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
const NEAR_BUDGET = 0.9;
const COLORS = ['#2457c5', '#c54a24', '#1b7f3b', '#8a3ab9', '#b26a00', '#008b8b', '#a1346b', '#4d5b7c'];
const view = { snapshot: null, rounds: [], writable: false };

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === 'class') node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function num(value, digits = 2) {
  if (value === null || value === undefined) return '-';
  if (Math.abs(value) >= 1000) return value.toExponential(2);
  return value.toFixed(digits);
}

function since(seconds) {
  if (seconds === null) return 'never';
  if (seconds < 60) return `${seconds.toFixed(0)} s ago`;
  return `${(seconds / 60).toFixed(0)} min ago`;
}

// Fleet panel.
function renderFleet(s) {
  const open = s.open_round;
  $('phase').textContent = s.phase;
  $('round').textContent = open ? `${open.round_id} (open)` : String(s.round_id);
  $('participants').textContent = `${s.participants.length} / ${s.quorum}`;
  $('enrolled').textContent = `${s.enrolled.length} / ${s.revoked.length}`;
  $('success').textContent = s.last_success_rate === null ? '-'
    : `${num(s.last_success_rate)} (${num(s.last_success_lower_bound)})`;
  const decision = $('decision');
  decision.textContent = s.last_gate_decision || '-';
  decision.className = s.last_gate_decision === 'reject' ? 'bad' : s.last_gate_decision ? 'ok' : '';
  $('deployed').textContent = `v${s.model_version} (${num(s.deployed_success_rate)})`;
  const reasons = Object.entries(s.rejections).filter(([, count]) => count > 0);
  $('rejections').textContent = reasons.length ? reasons.map(([r, c]) => `${r} ${c}`).join(', ') : 'none';
  $('rejections').className = reasons.length ? 'warn' : '';
  const diagnostics = $('diagnostics');
  diagnostics.replaceChildren(...s.diagnostics.filter((d) => d.name.startsWith('tensorguard: ')).map((d) =>
    el('div', { class: d.level >= 2 ? 'bad' : d.level === 1 ? 'warn' : 'ok' }, `${d.name}: ${d.level_name} ${d.message}`)));
  $('updated').textContent = s.status_seen_at === null ? 'no fleet status yet'
    : `fleet status ${since(s.taken_at - s.status_seen_at)}`;
}

// Robots table.
function budgetBar(robot) {
  const fraction = robot.budget_fraction;
  const bar = el('span', { class: 'bar' + (fraction !== null && fraction >= NEAR_BUDGET ? ' near' : '') }, el('span'));
  bar.firstChild.style.width = `${Math.min(100, 100 * (fraction || 0)).toFixed(1)}%`;
  bar.title = fraction === null ? 'no budget reported' : `${(100 * fraction).toFixed(1)}% of the budget`;
  return [bar, el('small', {}, `${num(robot.epsilon_spent, 3)} / ${num(robot.epsilon_budget, 3)}`)];
}

function renderRobots(s) {
  const rows = s.robots.map((robot) => {
    const seen = robot.last_seen === null ? null : s.taken_at - robot.last_seen;
    const state = robot.revoked ? 'revoked' : `${robot.lifecycle_state} / ${robot.activity}` + (robot.late ? ' (late)' : '');
    const rejections = Object.entries(robot.rejections).reduce((sum, [, count]) => sum + count, 0);
    const revoke = el('button', { type: 'button', class: 'revoke' }, 'Revoke');
    revoke.disabled = robot.revoked;
    revoke.addEventListener('click', () => revokeRobot(robot.robot_id));
    const row = el('tr', { 'data-robot-id': robot.robot_id, class: robot.silent ? 'silent' : '' },
      el('td', {}, robot.robot_id), el('td', { class: robot.revoked ? 'bad' : robot.late ? 'warn' : '' }, state),
      el('td', {}, robot.episodes_buffered), el('td', {}, robot.model_version), el('td', {}, ...budgetBar(robot)),
      el('td', { class: robot.silent ? 'bad' : '' }, since(seen) + (robot.silent ? ' (silent)' : '')),
      el('td', { class: rejections ? 'warn' : '' }, rejections), el('td', { class: 'write' }, revoke));
    return row;
  });
  document.querySelector('#robots tbody').replaceChildren(...rows);
}

// Actions.
function renderActions(s) {
  const items = s.actions.slice().reverse().map((a) => {
    let text = `#${a.action_id} ${a.kind.replace('_', ' ')}${a.target ? ' ' + a.target : ''}: ${a.status}`;
    if (a.feedback && a.status === 'running') {
      const f = a.feedback;
      text += ` (${f.phase}, ${f.updates_received}/${f.quorum} updates, ${f.seconds_remaining.toFixed(0)} s left)`;
    }
    if (a.detail && !(a.status === 'running' && a.feedback)) text += ` - ${a.detail}`;
    return el('li', { class: a.status === 'failed' ? 'bad' : a.status === 'succeeded' ? 'ok' : '' }, text);
  });
  $('action-log').replaceChildren(...items);
}

async function post(path, body) {
  $('action-error').textContent = '';
  try {
    const response = await fetch(path, {
      method: 'POST', credentials: 'omit', cache: 'no-store',
      headers: { 'Content-Type': 'application/json', 'X-TensorGuard-Token': $('token').value },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      const answer = await response.json().catch(() => ({}));
      $('action-error').textContent = `${response.status}: ${answer.error || response.statusText}`;
    }
  } catch (error) {
    $('action-error').textContent = `request failed: ${error}`;
  }
}

function revokeRobot(robotId) {
  if (window.confirm(`Revoke ${robotId}? Its next message will be refused.`)) {
    post('/api/revoke', { robot_id: robotId, reason: $('revoke-reason').value });
  }
}

// Rounds table and plots.
function maxEpsilon(round) {
  const values = Object.values(round.epsilon_by_robot);
  return values.length ? Math.max(...values) : null;
}

function renderRounds(rounds) {
  const rows = rounds.slice().reverse().map((r) => {
    const sizes = r.participants.map((p) => r.bytes_by_robot[p]).filter((b) => b !== undefined);
    const kb = sizes.length ? sizes.reduce((a, b) => a + b, 0) / sizes.length / 1024 : null;
    const rejected = Object.values(r.rejections).reduce((a, b) => a + b, 0);
    return el('tr', { 'data-round-id': r.round_id, class: r.outcome === 'aggregated' ? '' : 'warn' },
      el('td', {}, r.round_id), el('td', {}, r.outcome), el('td', {}, r.participants.length),
      el('td', {}, num(r.success_rate)), el('td', {}, num(r.success_lower_bound)),
      el('td', { class: r.gate_decision === 'reject' ? 'bad' : '' }, r.gate_decision || '-'),
      el('td', {}, r.model_version), el('td', {}, num(r.deployed_success_rate)), el('td', {}, num(maxEpsilon(r), 3)),
      el('td', {}, kb === null ? '-' : kb.toFixed(1)), el('td', {}, rejected), el('td', {}, r.duration_s.toFixed(0)));
  });
  document.querySelector('#rounds tbody').replaceChildren(...rows);
  plotSuccess(rounds);
  plotEpsilon(rounds);
}

function frame(plot, rounds, yMax, yLabel) {
  const box = { left: 44, right: 470, top: 14, bottom: 180 };
  plot.replaceChildren();
  const x = (i) => rounds.length < 2 ? (box.left + box.right) / 2
    : box.left + (i * (box.right - box.left)) / (rounds.length - 1);
  const y = (v) => box.bottom - (v / yMax) * (box.bottom - box.top);
  for (let k = 0; k <= 4; k += 1) {
    const v = (yMax * k) / 4;
    plot.append(svg('line', { class: 'grid', x1: box.left, x2: box.right, y1: y(v), y2: y(v) }));
    plot.append(svg('text', { x: box.left - 4, y: y(v) + 3, 'text-anchor': 'end' }, yMax >= 1000 ? v.toExponential(1) : v.toFixed(2)));
  }
  plot.append(svg('line', { class: 'axis', x1: box.left, x2: box.left, y1: box.top, y2: box.bottom }));
  plot.append(svg('line', { class: 'axis', x1: box.left, x2: box.right, y1: box.bottom, y2: box.bottom }));
  const step = Math.max(1, Math.ceil(rounds.length / 12));
  rounds.forEach((r, i) => {
    if (i % step === 0) plot.append(svg('text', { x: x(i), y: box.bottom + 14, 'text-anchor': 'middle' }, r.round_id));
  });
  plot.append(svg('text', { x: box.right, y: 9, 'text-anchor': 'end' }, `x: round, y: ${yLabel}`));
  if (!rounds.length) plot.append(svg('text', { x: 250, y: 100, 'text-anchor': 'middle' }, 'no rounds yet'));
  return { x, y };
}

function polyline(points, cls, color) {
  const attrs = { class: cls, points: points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(' ') };
  if (color) attrs.stroke = color;
  return svg('polyline', Object.assign(attrs, color ? { fill: 'none', 'stroke-width': 2 } : {}));
}

function plotSuccess(rounds) {
  const plot = $('success-plot');
  const { x, y } = frame(plot, rounds, 1, 'success rate');
  const series = (key) => rounds.map((r, i) => [i, r[key]]).filter(([, v]) => v !== null).map(([i, v]) => [x(i), y(v)]);
  plot.append(polyline(series('success_lower_bound'), 'lower'));
  plot.append(polyline(series('success_rate'), 'success'));
  plot.append(polyline(series('deployed_success_rate'), 'deployed'));
  rounds.forEach((r, i) => {
    if (r.success_rate === null) return;
    plot.append(svg('circle', { class: r.gate_decision === 'reject' ? 'rejected' : 'dot', cx: x(i), cy: y(r.success_rate), r: 3 }));
  });
  const legend = [['candidate', '#2457c5'], ['lower bound (dashed)', '#2457c5'], ['deployed', '#1b7f3b']];
  legend.forEach(([label, color], k) => plot.append(svg('text', { x: 52 + 130 * k, y: 24, fill: color }, label)));
}

function plotEpsilon(rounds) {
  const plot = $('epsilon-plot');
  const robots = [...new Set(rounds.flatMap((r) => Object.keys(r.epsilon_by_robot)))].sort();
  const last = {};
  const series = robots.map((robot) => rounds.map((r) => {
    if (r.epsilon_by_robot[robot] !== undefined) last[robot] = r.epsilon_by_robot[robot];
    return last[robot] === undefined ? null : last[robot];
  }));
  const top = Math.max(1e-9, ...series.flat().filter((v) => v !== null));
  const { x, y } = frame(plot, rounds, top * 1.1, 'epsilon spent');
  robots.forEach((robot, k) => {
    const color = COLORS[k % COLORS.length];
    const points = series[k].map((v, i) => [i, v]).filter(([, v]) => v !== null).map(([i, v]) => [x(i), y(v)]);
    plot.append(polyline(points, 'robot-line', color));
    plot.append(svg('text', { x: 52 + 80 * (k % 5), y: 24 + 12 * Math.floor(k / 5), fill: color }, robot));
  });
}

// Live updates.
function connect() {
  const events = new EventSource('/api/events');
  events.addEventListener('open', () => { $('connection').textContent = 'live'; $('connection').className = 'badge ok'; });
  events.addEventListener('error', () => { $('connection').textContent = 'reconnecting'; $('connection').className = 'badge bad'; });
  events.addEventListener('snapshot', (event) => {
    const data = JSON.parse(event.data);
    view.snapshot = data.snapshot;
    view.writable = data.writable;
    document.body.classList.toggle('writable', data.writable);
    $('mode').textContent = data.writable ? 'actions enabled (token)' : 'read-only';
    $('mode').className = data.writable ? 'badge write' : 'badge';
    renderFleet(data.snapshot);
    renderRobots(data.snapshot);
    renderActions(data.snapshot);
  });
  events.addEventListener('rounds', (event) => {
    view.rounds = JSON.parse(event.data);
    renderRounds(view.rounds);
  });
}

document.addEventListener('DOMContentLoaded', () => {
  $('run-round').addEventListener('click', () => post('/api/round', {}));
  $('action-form').addEventListener('submit', (event) => event.preventDefault());
  renderRounds([]);
  connect();
});
