'use strict';
// The SwiftMesh dashboard: plain DOM and SVG, no libraries, nothing loaded from elsewhere.
// Every figure comes from the control plane's admin API — the same calls as `mesh stat`,
// `mesh edges` and `mesh top` — authenticated with the admin token. Data is only ever put in
// the page as text (textContent, attributes), never as HTML: paths and names in denials come
// from requests that anyone could have sent.

const TOKEN_KEY = 'swiftmesh-admin-token';
// The hop attribution's parts, in the order of `mesh edges` (EdgeStat.hopsMs keys).
const HOPS = [
  ['caller-proxy', 'caller proxy'],
  ['network', 'network + TLS'],
  ['peer-proxy', 'peer proxy'],
  ['app', 'app'],
];
const settings = { window: 60, refreshMs: 5000, service: null };
let token = null;
let timer = null;

// ---- DOM helpers ------------------------------------------------------------------------

function build(node, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key === 'className' ? 'class' : key, String(value));
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}
const el = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
const svg = (tag, attrs, ...children) => build(document.createElementNS('http://www.w3.org/2000/svg', tag), attrs, children);

// ---- formatting (the Chromium test formats the same way) --------------------------------

function digits(x) {
  return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
}
const fmt = {
  rate: (x) => (x == null ? '–' : digits(x)),
  ms: (x) => (x == null ? '–' : `${digits(x)} ms`),
  pct: (x) => (x == null ? '–' : `${(x * 100).toFixed(1)}%`),
  time: (iso) => new Date(iso).toLocaleTimeString([], { hour12: false }),
  left: (seconds) => {
    if (seconds <= 0) return 'expired';
    const hours = Math.floor(seconds / 3600);
    const minutes = Math.floor((seconds % 3600) / 60);
    return hours >= 48 ? `${Math.floor(hours / 24)} d` : hours > 0 ? `${hours} h ${minutes} min` : `${minutes} min`;
  },
};

/// Success-rate classes shared by the graph, the tables and the cards.
function health(successRate) {
  if (successRate == null) return 'idle';
  return successRate >= 0.99 ? 'ok' : successRate >= 0.95 ? 'warn' : 'bad';
}

// ---- the admin API ----------------------------------------------------------------------

class AuthError extends Error {}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    // Not JSON: the status line says enough.
  }
  if (response.status === 401) throw new AuthError((body && body.message) || 'the admin token was refused');
  if (!response.ok) throw new Error(`${path}: ${(body && body.message) || `${response.status} ${response.statusText}`}`);
  return body;
}

// ---- page frame -------------------------------------------------------------------------

function readLocation() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromURL = fragment.get('token');
  if (fromURL) {
    // Keep the token out of the address bar, history and screenshots.
    sessionStorage.setItem(TOKEN_KEY, fromURL);
    fragment.delete('token');
    const rest = fragment.toString();
    history.replaceState(null, '', location.pathname + location.search + (rest ? `#${rest}` : ''));
  }
  token = sessionStorage.getItem(TOKEN_KEY);
  settings.service = fragment.get('service');
  const query = new URLSearchParams(location.search);
  const span = Number(query.get('window'));
  if ([30, 60, 300].includes(span)) settings.window = span;
  if (query.get('refresh') === '0') settings.refreshMs = 0;
  document.getElementById('window').value = String(settings.window);
}

function setStatus(text, isError) {
  const status = document.getElementById('status');
  status.textContent = text;
  status.classList.toggle('error', Boolean(isError));
}

function showLogin(message) {
  document.getElementById('main').replaceChildren();
  document.getElementById('login').hidden = false;
  document.getElementById('login-error').textContent = message || '';
  setStatus('not signed in', true);
}

function crumbs() {
  const nav = document.getElementById('crumbs');
  nav.replaceChildren(el('a', { href: '#' }, 'overview'));
  if (settings.service) nav.append(' › ', el('span', {}, settings.service));
}

async function refresh() {
  clearTimeout(timer);
  readLocation();
  crumbs();
  if (!token) {
    showLogin();
    return;
  }
  document.getElementById('login').hidden = true;
  try {
    const view = settings.service ? await serviceView(settings.service) : await overview();
    document.getElementById('main').replaceChildren(...view);
    setStatus(`updated ${new Date().toLocaleTimeString([], { hour12: false })}`);
    document.body.dataset.ready = 'true';
  } catch (error) {
    if (error instanceof AuthError) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(error.message);
      return;
    }
    setStatus(error.message, true);
  }
  if (settings.refreshMs > 0) timer = setTimeout(refresh, settings.refreshMs);
}

function section(title, note, ...content) {
  return el('section', {}, el('h2', {}, title), note ? el('p', { className: 'note' }, note) : null, ...content);
}

function table(headers, rows, empty) {
  if (rows.length === 0) return el('p', { className: 'empty' }, empty);
  return el('table', {},
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', {}, h)))),
    el('tbody', {}, rows));
}

function serviceLink(name) {
  return el('a', { href: `#service=${encodeURIComponent(name)}` }, name);
}

// ---- overview ---------------------------------------------------------------------------

async function overview() {
  const w = settings.window;
  const [services, stats, edges, denials] = await Promise.all([
    api('/v1/services'), api(`/v1/stat?window=${w}`), api(`/v1/edges?window=${w}`), api('/v1/decisions?limit=20'),
  ]);
  return [
    section('Service graph', `Calls over the last ${w} s as the callers' proxies saw them. Edge colour: success rate (green ≥ 99 %, amber ≥ 95 %, red below); label: requests/s · p99. Dashed: plaintext.`,
      graph(services, stats, edges)),
    section('Services', 'Inbound traffic per service: what its callers got.', servicesTable(stats)),
    section('Slowest edges: where the time goes', 'Mean time per request in each hop, from the timings both proxies record.',
      slowestEdges(edges)),
    section('Policy denials', 'The latest requests refused by policy; `mesh explain --request-id ID` says why.', denialsTable(denials)),
    section('Certificates', 'Workload SVIDs per instance; proxies renew at half their lifetime.', certificates(services)),
  ];
}

const NODE_W = 150;
const NODE_H = 46;
const COL = 330;
const ROW = 110;
const PAD = 24;
// Height of the arc of a call that skips columns, and how much higher each further column goes.
const ARC = 70;
const ARC_STEP = 24;

/// Places services in columns by the longest chain of callers before them, so that calls
/// flow left to right; a cycle is cut where it is found.
function layout(names, edges) {
  const callers = new Map(names.map((n) => [n, []]));
  for (const e of edges) if (e.source !== e.destination) callers.get(e.destination).push(e.source);
  const layer = new Map();
  const visiting = new Set();
  const depth = (name) => {
    if (layer.has(name)) return layer.get(name);
    if (visiting.has(name)) return 0;
    visiting.add(name);
    let d = 0;
    for (const caller of callers.get(name)) d = Math.max(d, depth(caller) + 1);
    visiting.delete(name);
    layer.set(name, d);
    return d;
  };
  names.forEach(depth);
  const columns = [];
  for (const name of names) (columns[layer.get(name)] ||= []).push(name);
  const rows = Math.max(1, ...columns.map((c) => (c ? c.length : 0)));
  // Room for the arcs of calls that skip columns (above) or go back (below).
  let above = 0;
  let below = 0;
  for (const e of edges) {
    const span = layer.get(e.destination) - layer.get(e.source);
    if (span > 1) above = Math.max(above, 0.75 * (ARC + ARC_STEP * (span - 2)) + 16);
    if (span < 1 && e.source !== e.destination) below = Math.max(below, 0.75 * (ARC + ARC_STEP * Math.abs(span)) + 20);
  }
  const positions = new Map();
  columns.forEach((column, x) => {
    if (!column) return;
    const offset = ((rows - column.length) * ROW) / 2;
    column.sort().forEach((name, y) => positions.set(name, { x: PAD + x * COL, y: PAD + above + offset + y * ROW }));
  });
  return { positions, width: PAD * 2 + (columns.length - 1) * COL + NODE_W, height: PAD * 2 + above + below + (rows - 1) * ROW + NODE_H };
}

/// The curve of one call and where its label goes: next column, a straight S-curve; further
/// right, an arc over the columns in between (so it never runs behind a node); a call back to
/// the left or within a column, an arc below.
function route(from, to) {
  const span = Math.round((to.x - from.x) / COL);
  if (span === 1) {
    const [x1, y1, x2, y2] = [from.x + NODE_W, from.y + NODE_H / 2, to.x, to.y + NODE_H / 2];
    const bend = Math.max(60, (x2 - x1) / 2);
    return { d: `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`, lx: (x1 + x2) / 2, ly: (y1 + y2) / 2 - 7 };
  }
  if (span > 1) {
    const lift = ARC + ARC_STEP * (span - 2);
    const [x1, y1, x2, y2] = [from.x + NODE_W / 2, from.y, to.x + NODE_W / 2, to.y];
    return { d: `M ${x1} ${y1} C ${x1} ${y1 - lift}, ${x2} ${y2 - lift}, ${x2} ${y2}`, lx: (x1 + x2) / 2, ly: (y1 + y2) / 2 - 0.75 * lift - 6 };
  }
  const lift = ARC + ARC_STEP * Math.abs(span);
  const [x1, y1, x2, y2] = [from.x + NODE_W / 2 + 10, from.y + NODE_H, to.x + NODE_W / 2 - 10, to.y + NODE_H];
  return { d: `M ${x1} ${y1} C ${x1} ${y1 + lift}, ${x2} ${y2 + lift}, ${x2} ${y2}`, lx: (x1 + x2) / 2, ly: (y1 + y2) / 2 + 0.75 * lift + 14 };
}

function graph(services, stats, edges) {
  const registered = new Set(services.map((s) => s.service));
  const names = [...new Set([...registered, ...edges.flatMap((e) => [e.source, e.destination])])].sort();
  if (names.length === 0) return el('p', { className: 'empty' }, 'No services registered yet.');
  const statOf = new Map(stats.map((s) => [s.service, s]));
  const { positions, width, height } = layout(names, edges);
  const root = svg('svg', { className: 'graph', viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': 'service graph' });
  root.append(svg('defs', {}, ['ok', 'warn', 'bad', 'idle'].map((cls) =>
    svg('marker', { id: `arrow-${cls}`, viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
      svg('path', { d: 'M 0 0 L 10 5 L 0 10 z', className: `arrowhead ${cls}` })))));

  const labelsAt = new Map();
  for (const e of edges) {
    const { d, lx, ly } = route(positions.get(e.source), positions.get(e.destination));
    const cls = health(e.successRate);
    // Two edges with the same label spot (a call and its plaintext twin) stack their labels.
    const spot = `${Math.round(lx)}:${Math.round(ly)}`;
    const shift = (labelsAt.get(spot) || 0) * 15;
    labelsAt.set(spot, (labelsAt.get(spot) || 0) + 1);
    const text = `${fmt.rate(e.requestsPerSecond)} rps · p99 ${fmt.ms(e.p99Ms)}${e.denials > 0 ? ` · ${e.denials} denied` : ''}`;
    root.append(svg('g', {
      className: `edge ${cls}${e.mtls ? '' : ' plaintext'}${e.denials > 0 ? ' denied' : ''}`,
      dataset: {
        source: e.source, destination: e.destination, rps: String(e.requestsPerSecond),
        p99: e.p99Ms == null ? '' : String(e.p99Ms), success: e.successRate == null ? '' : String(e.successRate),
        denials: String(e.denials), mtls: String(e.mtls),
      },
    },
    svg('title', {}, `${e.source} → ${e.destination}: ${fmt.pct(e.successRate)} success, ${e.failures} failed, p50 ${fmt.ms(e.p50Ms)}`),
    svg('path', { d, className: 'line', 'marker-end': `url(#arrow-${cls})` }),
    svg('text', { x: lx, y: ly + shift, className: 'edge-label', 'text-anchor': 'middle' }, text)));
  }

  for (const name of names) {
    const { x, y } = positions.get(name);
    const stat = statOf.get(name);
    const isService = registered.has(name);
    const cls = isService ? health(stat && stat.successRate) : 'external';
    const sub = stat && stat.successRate != null ? `${fmt.rate(stat.requestsPerSecond)} rps · ${fmt.pct(stat.successRate)}` : isService ? 'no inbound traffic' : 'outside the mesh';
    const node = svg('g', { className: `node ${cls}`, dataset: { service: name }, transform: `translate(${x} ${y})` },
      svg('rect', { width: NODE_W, height: NODE_H, rx: 8 }),
      svg('text', { x: NODE_W / 2, y: 19, className: 'name', 'text-anchor': 'middle' }, name),
      svg('text', { x: NODE_W / 2, y: 36, className: 'sub', 'text-anchor': 'middle' }, sub));
    if (isService) {
      node.classList.add('link');
      node.addEventListener('click', () => { location.hash = `service=${encodeURIComponent(name)}`; });
    }
    root.append(node);
  }
  return el('div', { className: 'graph-box' }, root);
}

function servicesTable(stats) {
  const rows = stats.map((s) => el('tr', { className: health(s.successRate), dataset: { service: s.service } },
    el('td', {}, serviceLink(s.service)), el('td', { className: 'num' }, s.instances),
    el('td', { className: 'num rate' }, fmt.pct(s.successRate)), el('td', { className: 'num' }, fmt.rate(s.requestsPerSecond)),
    el('td', { className: 'num' }, fmt.ms(s.p50Ms)), el('td', { className: 'num' }, fmt.ms(s.p95Ms)),
    el('td', { className: 'num' }, fmt.ms(s.p99Ms)), el('td', { className: 'num' }, fmt.pct(s.mtlsShare)),
    el('td', { className: 'num' }, s.denials)));
  return table(['service', 'instances', 'success', 'req/s', 'p50', 'p95', 'p99', 'mTLS', 'denied'], rows, 'No services registered yet.');
}

function hopBar(hops, scale) {
  const width = 320;
  const bar = svg('svg', { className: 'hops', width, height: 14, viewBox: `0 0 ${width} 14` });
  let x = 0;
  for (const [key, label] of HOPS) {
    const w = Math.max(hops[key] > 0 ? 1 : 0, ((hops[key] || 0) / scale) * width);
    bar.append(svg('rect', { x, y: 0, width: w, height: 14, className: `hop ${key}` }, svg('title', {}, `${label}: ${fmt.ms(hops[key])}`)));
    x += w;
  }
  return bar;
}

/// One sentence that names where the time goes: the app, or the mesh.
function verdict(e) {
  const hops = e.hopsMs;
  const total = HOPS.reduce((sum, [key]) => sum + (hops[key] || 0), 0);
  const mesh = total - (hops.app || 0);
  if (total <= 0) return 'no timings yet';
  const [key, label] = HOPS.reduce((best, hop) => ((hops[hop[0]] || 0) > (hops[best[0]] || 0) ? hop : best));
  return `${label === 'app' ? `${e.destination}'s app` : label} takes ${Math.round(((hops[key] || 0) / total) * 100)} %: app ${fmt.ms(hops.app)}, the mesh adds ${fmt.ms(mesh)}`;
}

function slowestEdges(edges, limit = 5) {
  const timed = edges.filter((e) => e.hopsMs && e.p99Ms != null).sort((a, b) => b.p99Ms - a.p99Ms).slice(0, limit);
  const scale = Math.max(0.001, ...timed.map((e) => HOPS.reduce((sum, [key]) => sum + (e.hopsMs[key] || 0), 0)));
  const rows = timed.map((e) => el('tr', { dataset: { source: e.source, destination: e.destination } },
    el('td', {}, `${e.source} → ${e.destination}`), el('td', { className: 'num' }, fmt.ms(e.p99Ms)),
    el('td', {}, hopBar(e.hopsMs, scale)), el('td', { className: 'verdict' }, verdict(e))));
  const legend = el('p', { className: 'legend' }, HOPS.map(([key, label]) => el('span', {}, el('i', { className: `swatch ${key}` }), label)));
  return [table(['edge', 'p99', 'mean per hop', 'where the time goes'], rows, 'No mesh-to-mesh calls in this window.'), timed.length ? legend : null];
}

function denialsTable(denials) {
  const rows = denials.map((d) => el('tr', { dataset: { requestId: d.requestID } },
    el('td', {}, fmt.time(d.at)), el('td', {}, d.caller), el('td', {}, d.destination),
    el('td', { className: 'path' }, `${d.method} ${d.path}`), el('td', {}, d.code), el('td', {}, d.policy || '(no matching allow)'),
    el('td', {}, el('code', { title: `mesh explain --request-id ${d.requestID}` }, d.requestID))));
  return table(['time', 'caller', 'destination', 'request', 'reason', 'policy', 'request id'], rows, 'No denials reported.');
}

function certificates(services) {
  const now = Date.now();
  const rows = services.flatMap((s) => s.instances.map((i) => {
    const left = i.certificateExpiry ? (new Date(i.certificateExpiry).getTime() - now) / 1000 : null;
    const cls = left == null ? 'idle' : left < 3600 ? 'bad' : left < 6 * 3600 ? 'warn' : 'ok';
    return el('tr', { className: cls, dataset: { instance: i.id } },
      el('td', {}, serviceLink(s.service)), el('td', {}, i.id), el('td', {}, i.endpoint),
      el('td', {}, !i.healthy ? 'stale' : i.appHealthy === false ? 'app unhealthy' : 'healthy'), el('td', {}, i.mtls),
      el('td', {}, i.certificateExpiry ? new Date(i.certificateExpiry).toLocaleString([], { hour12: false }) : 'unknown'),
      el('td', { className: 'num rate' }, left == null ? '–' : fmt.left(left)));
  }));
  return table(['service', 'instance', 'endpoint', 'heartbeat', 'mTLS', 'SVID expires', 'left'], rows, 'No instances registered.');
}

// ---- one service --------------------------------------------------------------------------

async function serviceView(name) {
  const w = settings.window;
  const q = encodeURIComponent(name);
  const [stats, series, edges, top, services, denials] = await Promise.all([
    api(`/v1/stat?service=${q}&window=${w}`), api(`/v1/stat/series?service=${q}&window=900`), api(`/v1/edges?window=${w}`),
    api(`/v1/top?service=${q}&window=${w}`), api('/v1/services'), api(`/v1/decisions?limit=20&service=${q}`),
  ]);
  const stat = stats[0];
  const card = (label, value, cls) => el('div', { className: `card ${cls || ''}` }, el('span', { className: 'value' }, value), el('span', { className: 'label' }, label));
  const mine = edges.filter((e) => e.source === name || e.destination === name);
  const listing = services.filter((s) => s.service === name);
  return [
    el('h1', {}, name, el('span', { className: 'identity' }, listing.length ? listing[0].spiffeID : '')),
    el('div', { className: 'cards' },
      card('success', fmt.pct(stat.successRate), health(stat.successRate)), card('requests/s', fmt.rate(stat.requestsPerSecond)),
      card('p50', fmt.ms(stat.p50Ms)), card('p95', fmt.ms(stat.p95Ms)), card('p99', fmt.ms(stat.p99Ms)),
      card('mTLS', fmt.pct(stat.mtlsShare)), card('denied', String(stat.denials), stat.denials > 0 ? 'warn' : ''),
      card('instances', String(stat.instances))),
    section('Golden metrics over time', 'Inbound traffic of the last 15 minutes, one point per history step of the control plane.',
      el('div', { className: 'charts' },
        chart('requests/s', series, [{ key: 'requestsPerSecond', cls: 'rps', label: 'requests/s' }], fmt.rate, {}),
        chart('success rate', series, [{ key: 'successRate', cls: 'success', label: 'success' }], fmt.pct, { max: 1, floor: 0.9 }),
        chart('latency', series, [{ key: 'p50Ms', cls: 'p50', label: 'p50' }, { key: 'p99Ms', cls: 'p99', label: 'p99' }], fmt.ms, {}))),
    section('Calls in and out', `Over the last ${w} s.`, edgeTable(mine)),
    section('Where the time goes', 'Mean time per request in each hop of the calls this service makes and receives.', slowestEdges(mine, 20)),
    section('Busiest paths', 'What `mesh top` shows: method and normalized path as this service\'s proxies saw them.', topTable(top)),
    section('Policy denials', null, denialsTable(denials)),
    section('Instances and certificates', null, certificates(listing)),
  ];
}

function edgeTable(edges) {
  const rows = edges.map((e) => el('tr', { className: health(e.successRate) },
    el('td', {}, e.source), el('td', {}, e.destination), el('td', { className: 'num' }, fmt.rate(e.requestsPerSecond)),
    el('td', { className: 'num rate' }, fmt.pct(e.successRate)), el('td', { className: 'num' }, fmt.ms(e.p50Ms)),
    el('td', { className: 'num' }, fmt.ms(e.p99Ms)), el('td', {}, e.mtls ? 'mTLS' : 'plaintext'), el('td', { className: 'num' }, e.denials)));
  return table(['from', 'to', 'req/s', 'success', 'p50', 'p99', 'transport', 'denied'], rows, 'No calls in this window.');
}

function topTable(paths) {
  const rows = paths.slice(0, 15).map((p) => el('tr', { className: health(p.successRate) },
    el('td', {}, p.method), el('td', { className: 'path' }, p.path), el('td', { className: 'num' }, fmt.rate(p.requestsPerSecond)),
    el('td', { className: 'num rate' }, fmt.pct(p.successRate)), el('td', { className: 'num' }, fmt.ms(p.p50Ms)),
    el('td', { className: 'num' }, fmt.ms(p.p99Ms))));
  return table(['method', 'path', 'req/s', 'success', 'p50', 'p99'], rows, 'No requests in this window.');
}

/// A line chart of `lines` over the points' times; a line breaks where a value is missing.
function chart(title, points, lines, format, { max, floor }) {
  const width = 360;
  const height = 150;
  const m = { left: 56, right: 10, top: 10, bottom: 22 };
  const box = el('figure', { className: 'chart' }, el('figcaption', {}, title));
  const values = points.flatMap((p) => lines.map((l) => p[l.key])).filter((v) => v != null);
  if (points.length < 2 || values.length === 0) {
    box.append(el('p', { className: 'empty' }, 'collecting: a point per history step'));
    return box;
  }
  const times = points.map((p) => new Date(p.at).getTime());
  const [t0, t1] = [times[0], times[times.length - 1]];
  const top = max != null ? max : Math.max(...values) * 1.1 || 1;
  const bottom = floor != null ? Math.min(floor, Math.floor(Math.min(...values) * 10) / 10) : 0;
  const x = (t) => m.left + ((t - t0) / Math.max(1, t1 - t0)) * (width - m.left - m.right);
  const y = (v) => m.top + (1 - (v - bottom) / Math.max(1e-9, top - bottom)) * (height - m.top - m.bottom);
  const plot = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}` },
    svg('line', { x1: m.left, x2: width - m.right, y1: y(bottom), y2: y(bottom), className: 'axis' }),
    svg('line', { x1: m.left, x2: m.left, y1: m.top, y2: y(bottom), className: 'axis' }),
    svg('text', { x: m.left - 4, y: y(top) + 4, 'text-anchor': 'end', className: 'tick' }, format(top)),
    svg('text', { x: m.left - 4, y: y(bottom), 'text-anchor': 'end', className: 'tick' }, format(bottom)),
    svg('text', { x: m.left, y: height - 6, className: 'tick' }, fmt.time(points[0].at)),
    svg('text', { x: width - m.right, y: height - 6, 'text-anchor': 'end', className: 'tick' }, fmt.time(points[points.length - 1].at)));
  for (const line of lines) {
    let d = '';
    let pen = 'M';
    points.forEach((p, i) => {
      const v = p[line.key];
      if (v == null) { pen = 'M'; return; }
      d += `${pen} ${x(times[i]).toFixed(1)} ${y(v).toFixed(1)} `;
      pen = 'L';
    });
    plot.append(svg('path', { d, className: `series ${line.cls}` }, svg('title', {}, line.label)));
  }
  box.append(plot);
  if (lines.length > 1) box.append(el('p', { className: 'legend' }, lines.map((l) => el('span', {}, el('i', { className: `swatch ${l.cls}` }), l.label))));
  return box;
}

// ---- start ------------------------------------------------------------------------------

document.getElementById('login').addEventListener('submit', (event) => {
  event.preventDefault();
  const value = document.getElementById('token').value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  document.getElementById('token').value = '';
  refresh();
});
document.getElementById('window').addEventListener('change', (event) => {
  const query = new URLSearchParams(location.search);
  query.set('window', event.target.value);
  history.replaceState(null, '', `${location.pathname}?${query}${location.hash}`);
  refresh();
});
window.addEventListener('hashchange', refresh);
refresh();
