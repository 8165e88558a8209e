// The StreamBroker dashboard (SPEC §14): GET /stats polled, and every replica's snapshots live
// from an ephemeral subscription to `system.metrics` through the broker's JavaScript client.
// Plain ES module, no build step; the page's Content-Security-Policy allows no inline script or
// style, so everything here is built with DOM APIs.
import { StreamBrokerClient } from '/js/streambroker.js';

const TOKEN_KEY = 'streambroker.token';
const params = new URLSearchParams(location.search);
/** How often /stats is polled (ms); `?poll=` overrides it (the tests slow it down). */
const POLL_MS = Math.max(200, Number(params.get('poll')) || 2000);
const SAMPLE_MS = 1000;
const HISTORY = 60;
const STALE_MS = 15000;
const FORGET_MS = 120000;

const $ = (id) => document.getElementById(id);

/** What the page knows: per replica, its last /stats answer or snapshot, whichever is newer. */
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  statsReplica: null,
  replicas: new Map(), // id -> { id, at, source, topics: Map, groups, ownership, connections, snapshotAt }
  configured: [], // topic names from GET /topics
  history: new Map(), // topic -> [{ p, d }]
  snapshots: 0,
  polls: 0,
  generation: 0, // bumped at sign-out: late answers of an older session are ignored
  client: null,
  pollTimer: null,
  sampleTimer: null,
  pending: null, // the DLQ action waiting for confirmation
};

// --------------------------------------------------------------------------------------------
// DOM helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function cell(field, value, cls = 'num') {
  return h('td', { 'data-field': field, class: cls }, value);
}

function fmtInt(n) {
  return typeof n === 'number' ? n.toLocaleString('en-US') : '–';
}

function fmtRate(r) {
  if (typeof r !== 'number') return '–';
  return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2);
}

function fmtAge(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3600000) return `${Math.floor(ms / 60000)} min ${Math.floor((ms % 60000) / 1000)} s`;
  return `${(ms / 3600000).toFixed(1)} h`;
}

function setPill(el, stateName, text, title) {
  el.dataset.state = stateName;
  el.textContent = text;
  if (title !== undefined) el.title = title;
}

function showError(message) {
  const el = $('error');
  el.hidden = !message;
  el.textContent = message || '';
}

const SVG = 'http://www.w3.org/2000/svg';

/** A small SVG line of `values` (scaled to their max), with the last value as a dot. */
function sparkline(values, kind) {
  const w = 120, hgt = 24, pad = 2;
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('width', w);
  svg.setAttribute('height', hgt);
  svg.setAttribute('viewBox', `0 0 ${w} ${hgt}`);
  svg.setAttribute('class', `spark spark-${kind}`);
  svg.setAttribute('data-spark', kind);
  svg.setAttribute('data-points', values.length);
  const max = Math.max(...values, 0);
  const x = (i) => pad + (values.length <= 1 ? w - 2 * pad : (i * (w - 2 * pad)) / (HISTORY - 1));
  const y = (v) => hgt - pad - (max > 0 ? (v / max) * (hgt - 2 * pad) : 0);
  const offset = HISTORY - values.length;
  const base = document.createElementNS(SVG, 'line');
  base.setAttribute('x1', pad);
  base.setAttribute('x2', w - pad);
  base.setAttribute('y1', hgt - pad);
  base.setAttribute('y2', hgt - pad);
  base.setAttribute('class', 'base');
  svg.append(base);
  if (values.length > 0) {
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('points', values.map((v, i) => `${x(i + offset).toFixed(1)},${y(v).toFixed(1)}`).join(' '));
    line.setAttribute('class', 'line');
    svg.append(line);
    const dot = document.createElementNS(SVG, 'circle');
    dot.setAttribute('cx', x(values.length - 1 + offset).toFixed(1));
    dot.setAttribute('cy', y(values[values.length - 1]).toFixed(1));
    dot.setAttribute('r', 2);
    dot.setAttribute('class', 'dot');
    svg.append(dot);
  }
  const title = document.createElementNS(SVG, 'title');
  title.textContent = `${kind} rate, last ${values.length} s (max ${fmtRate(max)}/s)`;
  svg.append(title);
  return svg;
}

// --------------------------------------------------------------------------------------------
// HTTP

class HTTPError extends Error {
  constructor(status, body) {
    const e = body && body.error;
    super(e ? `${e.code}: ${e.message}` : `HTTP ${status}`);
    this.status = status;
    this.code = e ? e.code : null;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  let parsed = null;
  try {
    parsed = await response.json();
  } catch {
    parsed = null;
  }
  if (!response.ok) throw new HTTPError(response.status, parsed);
  return parsed;
}

// --------------------------------------------------------------------------------------------
// The model: what each replica reported last

const isUserTopic = (name) => !name.startsWith('system.') && !name.endsWith('.DLQ');

function replica(id) {
  let r = state.replicas.get(id);
  if (!r) {
    r = { id, at: 0, source: null, topics: new Map(), groups: [], ownership: [], connections: null, snapshotAt: null, statsAt: null };
    state.replicas.set(id, r);
  }
  return r;
}

function fromStats(body) {
  state.statsReplica = body.replica;
  const r = replica(body.replica);
  r.topics = new Map(body.topics.filter((t) => isUserTopic(t.topic)).map((t) => [t.topic, t]));
  r.groups = body.groups;
  r.ownership = body.ownership;
  r.at = r.statsAt = Date.now();
  r.source = 'stats';
}

function fromSnapshot(payload) {
  if (!payload || typeof payload.replica !== 'string') return;
  const r = replica(payload.replica);
  r.topics = new Map(Object.entries(payload.topics || {}).filter(([name]) => isUserTopic(name)).map(([name, t]) => [name, { topic: name, ...t }]));
  if (Array.isArray(payload.groups)) r.groups = payload.groups;
  if (Array.isArray(payload.ownership)) r.ownership = payload.ownership;
  if (typeof payload.connections === 'number') r.connections = payload.connections;
  r.at = r.snapshotAt = Date.now();
  r.source = 'system.metrics';
  state.snapshots += 1;
  document.body.dataset.snapshots = String(state.snapshots);
  window.__dashboard.lastSnapshot = payload;
  if ($('live-status').dataset.state === 'live') setPill($('live-status'), 'live', `live: ${state.snapshots} snapshots`);
}

function liveReplicas() {
  const now = Date.now();
  for (const [id, r] of state.replicas) if (now - r.at > FORGET_MS) state.replicas.delete(id);
  return [...state.replicas.values()].sort((a, b) => a.id.localeCompare(b.id));
}

/** Per topic: counts and rates summed over the replicas (each counts what it handled). */
function topicView() {
  const out = new Map(state.configured.filter(isUserTopic).map((name) => [name, { topic: name, published: 0, delivered: 0, publishRate: 0, deliverRate: 0 }]));
  const now = Date.now();
  for (const r of liveReplicas()) {
    if (now - r.at > STALE_MS) continue;
    for (const t of r.topics.values()) {
      const o = out.get(t.topic) || { topic: t.topic, published: 0, delivered: 0, publishRate: 0, deliverRate: 0 };
      o.published += t.published || 0;
      o.delivered += t.delivered || 0;
      o.publishRate += t.publishRate || 0;
      o.deliverRate += t.deliverRate || 0;
      out.set(t.topic, o);
    }
  }
  return [...out.values()].sort((a, b) => a.topic.localeCompare(b.topic));
}

/** Group partitions of every replica; a partition reported by two (a handoff) shows the higher epoch. */
function groupView() {
  const out = new Map();
  for (const r of liveReplicas()) {
    for (const g of r.groups) {
      const key = `${g.topic}\u0000${g.group}\u0000${g.partition}`;
      const seen = out.get(key);
      if (!seen || (g.epoch || 0) > (seen.epoch || 0)) out.set(key, { ...g, replica: r.id });
    }
  }
  return [...out.values()].sort((a, b) => a.topic.localeCompare(b.topic) || a.group.localeCompare(b.group) || a.partition - b.partition);
}

// --------------------------------------------------------------------------------------------
// Rendering

function render() {
  renderTopics();
  renderGroups();
  renderReplicas();
  renderDLQTopics();
}

function renderTopics() {
  const rows = topicView().map((t) => {
    const hist = state.history.get(t.topic) || [];
    return h('tr', { 'data-topic': t.topic },
      h('td', { 'data-field': 'topic', class: 'name' }, t.topic),
      cell('published', fmtInt(t.published)),
      cell('publishRate', fmtRate(t.publishRate)),
      h('td', { class: 'spark-cell' }, sparkline(hist.map((s) => s.p), 'publish')),
      cell('delivered', fmtInt(t.delivered)),
      cell('deliverRate', fmtRate(t.deliverRate)),
      h('td', { class: 'spark-cell' }, sparkline(hist.map((s) => s.d), 'deliver')),
      h('td', {}, h('button', { type: 'button', class: 'small', 'data-dlq': t.topic, onclick: () => openDLQ(t.topic) }, 'Dead letters')));
  });
  $('topics').tBodies[0].replaceChildren(...rows);
  $('topics-empty').hidden = rows.length > 0;
}

function renderGroups() {
  const rows = groupView().map((g) => {
    const full = g.maxInflight > 0 && g.inflight >= g.maxInflight;
    return h('tr', { 'data-topic': g.topic, 'data-group': g.group, 'data-partition': g.partition, class: g.lag > 0 ? 'lagging' : null },
      h('td', { class: 'name' }, g.topic),
      h('td', { class: 'name' }, g.group),
      cell('partition', g.partition),
      cell('committed', fmtInt(g.committed)),
      cell('highWatermark', fmtInt(g.highWatermark)),
      h('td', { 'data-field': 'lag', 'data-value': g.lag, class: `num ${g.lag > 0 ? 'hot' : ''}` }, fmtInt(g.lag)),
      h('td', { 'data-field': 'inflight', 'data-value': g.inflight, class: `num ${full ? 'hot' : ''}` }, `${g.inflight} / ${g.maxInflight}`),
      cell('oldestUnacked', fmtAge(g.oldestUnackedMs)),
      cell('redeliveries', fmtInt(g.redeliveries)),
      h('td', { 'data-field': 'deadLetters', 'data-value': g.deadLetters, class: `num ${g.deadLetters > 0 ? 'hot' : ''}` }, fmtInt(g.deadLetters)),
      cell('connections', fmtInt(g.connections)),
      h('td', { 'data-field': 'replica' }, g.replica));
  });
  $('groups').tBodies[0].replaceChildren(...rows);
  $('groups-empty').hidden = rows.length > 0;
}

function renderReplicas() {
  const now = Date.now();
  const rows = liveReplicas().map((r) => {
    const owned = r.ownership.filter((o) => o.partitions.length > 0 || o.connections > 0);
    const list = h('ul', { class: 'owned' }, owned.map((o) =>
      h('li', { 'data-topic': o.topic, 'data-group': o.group, 'data-partitions': o.partitions.join(',') },
        h('span', { class: 'name' }, `${o.topic} / ${o.group}`), ': ',
        o.partitions.length ? `partitions ${o.partitions.join(', ')}` : 'none (idle member)',
        ` · ${o.connections} conn.`)));
    const stale = now - r.at > STALE_MS;
    return h('tr', { 'data-replica': r.id, class: stale ? 'stale' : null },
      h('td', { class: 'name' }, r.id, r.id === state.statsReplica ? h('span', { class: 'tag' }, 'this') : null),
      cell('connections', r.connections === null ? '–' : fmtInt(r.connections)),
      h('td', { 'data-field': 'owned' }, owned.length ? list : '–'),
      h('td', { 'data-field': 'seen' }, stale ? `stale (${fmtAge(now - r.at)} ago)` : `${fmtAge(now - r.at)} ago`),
      h('td', { 'data-field': 'source' }, r.source));
  });
  $('replicas').tBodies[0].replaceChildren(...rows);
}

function renderDLQTopics() {
  const select = $('dlq-topic');
  const names = [...new Set([...state.configured, ...topicView().map((t) => t.topic)])].filter(isUserTopic).sort();
  const current = select.value;
  const have = [...select.options].map((o) => o.value);
  if (have.join('\n') === names.join('\n')) return;
  select.replaceChildren(...names.map((n) => h('option', { value: n }, n)));
  if (names.includes(current)) select.value = current;
}

/** Once a second: a point of each topic's rate history, and the header's status. */
function sample() {
  for (const t of topicView()) {
    const hist = state.history.get(t.topic) || [];
    hist.push({ p: t.publishRate, d: t.deliverRate });
    if (hist.length > HISTORY) hist.splice(0, hist.length - HISTORY);
    state.history.set(t.topic, hist);
  }
  render();
  const client = state.client;
  if (client) {
    const connected = client.connected;
    const s = $('live-status');
    if (connected && s.dataset.state !== 'error') setPill(s, 'live', `live: ${state.snapshots} snapshots`, 'subscribed to system.metrics');
    else if (!connected && s.dataset.state === 'live') setPill(s, 'connecting', 'live: reconnecting…', client.lastError ? String(client.lastError.message) : '');
  }
}

// --------------------------------------------------------------------------------------------
// Polling /stats and /topics

async function poll(generation) {
  if (generation !== state.generation) return;
  try {
    const [stats, topics] = await Promise.all([api('GET', '/stats'), api('GET', '/topics')]);
    if (generation !== state.generation) return;
    fromStats(stats);
    state.configured = (topics.topics || []).map((t) => t.topic);
    state.polls += 1;
    document.body.dataset.polls = String(state.polls);
    $('replica').textContent = `replica ${stats.replica}`;
    setPill($('poll-status'), 'ok', `stats: ${new Date().toLocaleTimeString()}`, `GET /stats every ${POLL_MS} ms`);
    showError(null);
    render();
  } catch (e) {
    if (generation !== state.generation) return;
    if (e.status === 401) {
      signOut('The broker no longer accepts the token: ' + e.message);
      return;
    }
    setPill($('poll-status'), 'error', 'stats: failed', e.message);
    showError(`GET /stats: ${e.message}`);
  }
  if (generation === state.generation) state.pollTimer = setTimeout(() => poll(generation), POLL_MS);
}

// --------------------------------------------------------------------------------------------
// The live path: system.metrics through the JavaScript client

async function live(generation) {
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  const options = {
    url,
    onError: (e) => {
      if (generation === state.generation) $('live-status').title = String(e && e.message);
    },
  };
  if (state.token) options.token = state.token;
  const client = new StreamBrokerClient(options);
  state.client = client;
  setPill($('live-status'), 'connecting', 'live: connecting…');
  try {
    await client.connect();
    const sub = await client.subscribe('system.metrics', { from: 'latest', maxInflight: 16 });
    if (generation !== state.generation) return;
    setPill($('live-status'), 'live', `live: ${state.snapshots} snapshots`, 'subscribed to system.metrics');
    $('principal').textContent = client.principal ? `signed in as ${client.principal}` : '';
    for await (const m of sub) {
      if (generation !== state.generation) break;
      fromSnapshot(m.payload);
      render();
    }
  } catch (e) {
    if (generation === state.generation) setPill($('live-status'), 'error', `live: ${e.code || 'error'}`, String(e.message || e));
  }
}

// --------------------------------------------------------------------------------------------
// Dead letters

function dlqTopic() {
  return $('dlq-topic').value;
}

function dlqGroup() {
  return $('dlq-group').value.trim();
}

function dlqResult(kind, text) {
  const el = $('dlq-result');
  el.hidden = false;
  el.dataset.state = kind;
  el.className = kind === 'error' ? 'error' : 'ok';
  el.textContent = text;
}

function openDLQ(topic) {
  renderDLQTopics();
  $('dlq-topic').value = topic;
  loadDLQ();
  $('dlq').scrollIntoView({ block: 'start' });
}

async function loadDLQ() {
  const topic = dlqTopic();
  if (!topic) return;
  const group = dlqGroup();
  const query = new URLSearchParams({ limit: '100' });
  if (group) query.set('group', group);
  const tbody = $('dlq-list').tBodies[0];
  try {
    const body = await api('GET', `/topics/${encodeURIComponent(topic)}/dlq?${query}`);
    const rows = body.deadLetters.map((d) => {
      const hd = d.headers || {};
      const original = `${hd['x-original-topic'] ?? '?'} [${hd['x-original-partition'] ?? '?'}] @ ${hd['x-original-offset'] ?? '?'}`;
      const headers = h('dl', { class: 'headers' }, Object.keys(hd).sort().map((k) => [
        h('dt', { class: k.startsWith('x-') ? 'sys' : null }, k), h('dd', { 'data-header': k }, hd[k])]));
      return h('tr', { 'data-offset': d.offset, 'data-id': d.id },
        cell('offset', d.offset),
        h('td', { 'data-field': 'original' }, original),
        h('td', { 'data-field': 'group' }, hd['x-original-group'] ?? '–'),
        cell('attempts', hd['x-attempts'] ?? '–'),
        h('td', { 'data-field': 'reason' }, hd['x-last-reason'] ?? '–'),
        h('td', { 'data-field': 'headers' }, headers),
        h('td', {}, h('pre', { 'data-field': 'payload' }, JSON.stringify(d.payload, null, 1))));
    });
    tbody.replaceChildren(...rows);
    const empty = $('dlq-empty');
    empty.hidden = rows.length > 0;
    empty.textContent = `No dead letters for ${topic}${group ? ` (group ${group})` : ''}.`;
    $('dlq').dataset.topic = topic;
    $('dlq').dataset.count = String(rows.length);
  } catch (e) {
    tbody.replaceChildren();
    $('dlq').dataset.count = '';
    dlqResult('error', `Could not list dead letters of ${topic}: ${e.message}`);
  }
}

function askDLQ(action) {
  const topic = dlqTopic();
  if (!topic) return;
  const group = dlqGroup();
  const count = $('dlq').dataset.topic === topic ? $('dlq').dataset.count : '';
  const what = count ? `${count} listed dead letter${count === '1' ? '' : 's'}` : 'the dead letters';
  state.pending = { action, topic, group };
  $('dlq-confirm-text').textContent = action === 'redrive'
    ? `Republish ${group ? `group ${group}'s` : 'all'} dead letters of ${topic} to ${topic}? (${what} shown; a repeated redrive stores nothing twice)`
    : `Delete every dead letter of ${topic} (${what} shown)? This cannot be undone.`;
  $('dlq-confirm').dataset.action = action;
  $('dlq-confirm').hidden = false;
  $('dlq-confirm-yes').focus();
}

async function confirmDLQ() {
  const pending = state.pending;
  state.pending = null;
  $('dlq-confirm').hidden = true;
  if (!pending) return;
  const { action, topic, group } = pending;
  const query = action === 'redrive' && group ? `?group=${encodeURIComponent(group)}` : '';
  try {
    const body = await api('POST', `/topics/${encodeURIComponent(topic)}/dlq/${action}${query}`, {});
    if (action === 'redrive') dlqResult('ok', `Redrove ${body.redriven} dead letter${body.redriven === 1 ? '' : 's'} to ${topic}; ${body.duplicates} already redriven before (stored nothing).`);
    else dlqResult('ok', `Purged ${body.purged} dead letter${body.purged === 1 ? '' : 's'} of ${topic}.`);
  } catch (e) {
    dlqResult('error', `${action === 'redrive' ? 'Redrive' : 'Purge'} refused: ${e.message}`);
    return;
  }
  await loadDLQ();
}

// --------------------------------------------------------------------------------------------
// Signing in and out

function showLogin(message) {
  document.body.dataset.state = 'login';
  $('main').hidden = true;
  $('login').hidden = false;
  $('sign-out').hidden = true;
  const err = $('login-error');
  err.hidden = !message;
  err.textContent = message || '';
  $('token').value = '';
  $('token').focus();
}

function stop() {
  state.generation += 1;
  clearTimeout(state.pollTimer);
  clearInterval(state.sampleTimer);
  const client = state.client;
  state.client = null;
  if (client) client.close().catch(() => {});
  state.replicas.clear();
  state.history.clear();
  state.snapshots = 0;
}

function signOut(message) {
  stop();
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $('principal').textContent = '';
  setPill($('live-status'), 'off', 'live: off');
  setPill($('poll-status'), 'off', 'stats: …');
  showLogin(message);
}

/** Shows the data with the current credential (none, or the stored token). */
function begin(firstStats) {
  stop();
  const generation = state.generation;
  document.body.dataset.state = 'ready';
  $('login').hidden = true;
  $('main').hidden = false;
  $('sign-out').hidden = !state.token;
  fromStats(firstStats);
  $('replica').textContent = `replica ${firstStats.replica}`;
  render();
  poll(generation);
  live(generation);
  state.sampleTimer = setInterval(sample, SAMPLE_MS);
}

/** Tries the current credential on /stats: the data, or the sign-in form. */
async function start() {
  try {
    const stats = await api('GET', '/stats');
    begin(stats);
  } catch (e) {
    if (e.status === 401) {
      const refused = !!state.token;
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(refused ? `The broker refused the token (${e.message}).` : null);
    } else {
      document.body.dataset.state = 'error';
      showError(`GET /stats: ${e.message}`);
      setTimeout(start, POLL_MS);
    }
  }
}

async function signIn(event) {
  event.preventDefault();
  const token = $('token').value.trim();
  if (!token) return;
  state.token = token;
  try {
    const stats = await api('GET', '/stats');
    sessionStorage.setItem(TOKEN_KEY, token);
    begin(stats);
  } catch (e) {
    state.token = null;
    showLogin(e.status === 401 ? `The broker refused the token (${e.message}). Try another.` : `Could not reach the broker: ${e.message}`);
  }
}

window.__dashboard = { state, lastSnapshot: null, pollMs: POLL_MS };
$('login-form').addEventListener('submit', (e) => { signIn(e).catch((err) => showError(String(err))); });
$('sign-out').addEventListener('click', () => signOut(null));
$('dlq-form').addEventListener('submit', (e) => { e.preventDefault(); loadDLQ(); });
$('dlq-redrive').addEventListener('click', () => askDLQ('redrive'));
$('dlq-purge').addEventListener('click', () => askDLQ('purge'));
$('dlq-confirm-yes').addEventListener('click', () => { confirmDLQ(); });
$('dlq-confirm-no').addEventListener('click', () => { state.pending = null; $('dlq-confirm').hidden = true; });
start();
