// The dashboard's entry point: configuration, login (and the silent refresh of api.js), the
// pages (Live, Events, Geofences, History, Devices, Setup; hash routes) and the shared map. What
// a page offers follows the role of the login answer; the API decides what data comes back.

import { session, login, refresh, logout, json, call } from './api.js';
import { h, fill, $, age } from './dom.js';
import { MapView } from './map.js';
import { LiveLayer } from './live.js';
import { HistoryView } from './history.js';
import { renderSetup, showCredentials } from './setup.js';
import { EventFeed, renderEvents, focusLayer, describe, EVENT_LABELS } from './events.js';
import { GeofenceLayer, renderGeofences } from './geofences.js';
import { formatSpeed, speedUnit, setSpeedUnit, SPEED_UNITS } from './units.js';

// Uncaught errors are kept for the browser tests (which print them when a step times out).
window.__errors = [];
window.addEventListener('error', (e) => window.__errors.push(`${e.message} (${e.filename}:${e.lineno})`));
window.addEventListener('unhandledrejection', (e) => window.__errors.push(`unhandled: ${e.reason && e.reason.stack || e.reason}`));

const state = { config: null, devices: [], deviceById: new Map(), page: null, fitted: false, connections: 0, focused: null };

const map = new MapView($('#map'));
const panel = $('#panel');
let live, history, feed, fences, eventsUpdate = null, fencePage = null;

async function boot() {
  state.config = await (await fetch('/config.json')).json();
  map.tileUrl = state.config.tile_url;
  map.loadBasemap('/vendor/land-110m.json');
  live = new LiveLayer(map, state.config.live_url);
  history = new HistoryView(map, h('div'));
  feed = new EventFeed();
  fences = new GeofenceLayer(map);
  map.overlayLayers.push(focusLayer(() => state.focused));
  feed.on((what, event) => {
    if (what === 'alarm') announce(event);
    renderBadge();
    if (what === 'changed' && state.page === 'events') scheduleEventsUpdate();
  });
  live.on((what, detail) => {
    if (what === 'event') feed.frame(detail);
    // Events raised while the connection was down are not replayed by the server: reload them.
    if (what === 'connected' && ++state.connections > 1 && session.can('events:read')) feed.load();
    // What may be seen changed: the feed is read again from scratch.
    if (what === 'access_changed' && session.can('events:read')) { feed.clear(); feed.load(); }
    if (what === 'state') renderLiveState();
    if (what !== 'devices') return;
    if (!state.fitted && live.devices.size) fitToDevices();
    if (state.page === 'live') renderLiveList();
  });
  map.on((e) => {
    if (e.type === 'click' && state.page === 'geofences' && fencePage) {
      fencePage.click(...map.fromScreen(e.x, e.y));
      return;
    }
    if (e.type !== 'click' || state.page !== 'live') return;
    const d = live.pick(e.x, e.y);
    live.selected = d ? d.id : null;
    map.overlayDirty = true;
    renderLiveList();
  });
  window.__dash = { map, live, history, feed, fences, state, stats: () => ({
    frames: map.frames, last_frame_ms: map.lastFrameMs, devices: live.devices.size, fixes: live.fixes,
    live: live.state, history: history.stats, page: state.page }) };
  session.onChange((on) => { if (!on) showLogin('Your session ended: log in again.'); });
  $('#logout').addEventListener('click', () => logout());
  const unit = $('#speed-unit');
  fill(unit, Object.entries(SPEED_UNITS).map(([key, u]) => h('option', { value: key, selected: key === speedUnit() }, u.label)));
  unit.addEventListener('change', () => { setSpeedUnit(unit.value); route(); });
  $('#login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const status = $('#login-status');
    fill(status, 'Logging in…');
    try {
      await login($('#login-email').value.trim(), $('#login-password').value,
        $('#login-tenant').value.trim());
      $('#login-password').value = '';
      fill(status);
      await start();
    } catch (err) {
      if (err.code === 'tenant_required') {
        // The same email and password belong to accounts of several tenants: ask which one.
        $('#login-tenant-row').hidden = false;
        $('#login-tenant').focus();
        fill(status, 'This login exists in several organisations: name the one to log in to.');
      } else {
        fill(status, err.status === 401 ? 'Wrong email or password.' : `Login failed: ${err.message}`);
      }
    }
  });
  window.addEventListener('hashchange', () => route());
  if (await refresh().catch(() => false)) await start();
  else showLogin();
}

function showLogin(message) {
  if (live) live.stop();
  history && history.clear();
  feed && feed.clear();
  fences && fences.clear();
  state.focused = null;
  state.connections = 0;
  renderBadge();
  document.body.classList.remove('signed-in');
  $('#login').hidden = false;
  if (message) fill($('#login-status'), message);
  $('#login-email').focus();
}

async function start() {
  $('#login').hidden = true;
  document.body.classList.add('signed-in');
  fill($('#whoami'), `${session.email || 'signed in'} · ${session.role}`);
  for (const link of document.querySelectorAll('nav a[data-permission]')) {
    link.hidden = !session.can(link.dataset.permission);
  }
  await loadDevices();
  live.wantEvents = session.can('events:read');
  live.start();
  if (session.can('events:read')) feed.load();
  if (session.can('geofences:read')) fences.load().then(() => { map.baseDirty = true; });
  route();
}

async function loadDevices() {
  try {
    state.devices = (await json('/v1/devices')).devices;
  } catch (e) {
    state.devices = [];
  }
  state.deviceById = new Map(state.devices.map((d) => [d.id, d]));
  live.names = new Map(state.devices.filter((d) => d.name).map((d) => [d.id, d.name]));
}

function fitToDevices() {
  let w = 180, s = 90, e = -180, n = -90;
  for (const d of live.devices.values()) {
    w = Math.min(w, d.lon); e = Math.max(e, d.lon); s = Math.min(s, d.lat); n = Math.max(n, d.lat);
  }
  state.fitted = true;
  map.fit([w - 0.01, s - 0.01, e + 0.01, n + 0.01], 15);
}

function route() {
  if (!session.access) return;
  let page = (location.hash.replace(/^#\/?/, '') || 'live').split('?')[0];
  const allowed = { live: 'live:read', events: 'events:read', geofences: 'geofences:read', history: 'positions:read',
    devices: 'devices:read', setup: 'devices:write' };
  if (!allowed[page] || !session.can(allowed[page])) page = 'live';
  state.page = page;
  for (const link of document.querySelectorAll('nav a')) link.classList.toggle('active', link.dataset.page === page);
  document.body.dataset.page = page;
  if (page !== 'history') history.clear();
  if (page !== 'geofences' && fencePage) { fencePage.leave(); fencePage = null; }
  if (page !== 'events') eventsUpdate = null;
  if (page === 'live') renderLive();
  if (page === 'events') eventsUpdate = renderEvents(panel, feed, names, focusEvent);
  if (page === 'geofences') {
    renderFences();
    // Fences others wrote since: read them again into the list (a drawing under way stays).
    fences.load().then(() => { if (state.page === 'geofences' && fencePage) fencePage.refresh(); });
  }
  if (page === 'history') { history.panel = panel; history.render(state.devices, live.selected); }
  if (page === 'devices') renderDevices();
  if (page === 'setup') renderSetup(panel, state.config, async () => { await loadDevices(); });
}

// --- Live page ---------------------------------------------------------------------------------
let listTimer = null;
function renderLive() {
  const filter = h('input', { type: 'search', id: 'live-filter', placeholder: 'Filter by uid or name', oninput: () => renderLiveList() });
  fill(panel,
    h('h2', {}, 'Live'),
    h('div', { id: 'live-detail', class: 'status' }),
    filter,
    h('div', { id: 'live-count', class: 'note' }),
    h('ul', { id: 'live-list', class: 'devices' }),
    h('div', { id: 'live-selected' }));
  renderLiveState();
  renderLiveList();
  clearInterval(listTimer);
  listTimer = setInterval(() => { if (state.page === 'live') renderLiveList(); }, 1000);
}

function renderLiveState() {
  const badge = $('#live-state');
  badge.dataset.state = live.state;
  fill(badge, live.state);
  const detail = $('#live-detail');
  if (detail) fill(detail, live.detail);
}

function renderLiveList() {
  const list = $('#live-list');
  if (!list) return;
  const term = ($('#live-filter').value || '').toLowerCase();
  const now = Date.now();
  const rows = [];
  for (const d of live.devices.values()) {
    const name = live.names.get(d.id) || '';
    if (term && !d.uid.toLowerCase().includes(term) && !name.toLowerCase().includes(term)) continue;
    rows.push([d, name]);
  }
  rows.sort((a, b) => (a[0].uid < b[0].uid ? -1 : 1));
  fill($('#live-count'), `${live.devices.size.toLocaleString()} devices live${rows.length > 300 ? ', first 300 listed' : ''}`);
  fill(list, rows.slice(0, 300).map(([d, name]) => h('li', {
    class: d.id === live.selected ? 'selected' : '', dataset: { device: d.id, uid: d.uid },
    onclick: () => { live.selected = d.id; map.setView(d.lon, d.lat, Math.max(map.zoom, 14)); renderLiveList(); },
  }, h('span', { class: 'dot', dataset: { age: bucket(now - d.t) } }), h('span', { class: 'uid' }, name || d.uid), h('span', { class: 'age' }, age(now - d.t)))));
  const sel = live.selected && live.devices.get(live.selected);
  const box = $('#live-selected');
  if (!sel) { fill(box); return; }
  fill(box, h('dl', {},
    h('dt', {}, 'Device'), h('dd', {}, sel.uid),
    h('dt', {}, 'Name'), h('dd', {}, live.names.get(sel.id) || '—'),
    h('dt', {}, 'Fix'), h('dd', {}, new Date(sel.t).toLocaleString()),
    h('dt', {}, 'Position'), h('dd', {}, `${sel.lat.toFixed(5)}, ${sel.lon.toFixed(5)}`),
    h('dt', {}, 'Speed'), h('dd', {}, formatSpeed(sel.spd ?? NaN)),
    h('dt', {}, 'Protocol'), h('dd', {}, sel.proto || '—')),
    h('a', { href: '#/history', class: 'button' }, 'History of this device'));
}

// --- Events and geofences -----------------------------------------------------------------------
/** How the feed names a device and a fence. */
const names = {
  device(id, uid) {
    const d = state.deviceById.get(id);
    if (d) return d.name || d.uid;
    const seen = live.devices.get(id);
    return uid || (seen && seen.uid) || id.slice(0, 8);
  },
  fence: (id) => fences.name(id),
};

let eventsFrame = false;
function scheduleEventsUpdate() {
  if (eventsFrame) return;
  eventsFrame = true;
  requestAnimationFrame(() => { eventsFrame = false; if (eventsUpdate) eventsUpdate(); });
}

/** Show an event on the map: its device selected, the view on its position, a ring there. */
function focusEvent(e) {
  state.focused = e;
  live.selected = e.device;
  if (e.lat !== null && e.lon !== null) map.setView(e.lon, e.lat, Math.max(map.zoom, 14));
  map.overlayDirty = true;
}

function renderBadge() {
  const badge = $('#alarm-badge');
  const n = feed ? feed.unseen.size : 0;
  badge.hidden = n === 0;
  fill(badge, String(n), h('span', { class: 'sr-only' }, n === 1 ? ' unseen alarm' : ' unseen alarms'));
}

/** A new live alarm, read out by screen readers (the region is aria-live). */
function announce(e) {
  const detail = describe(e, names);
  fill($('#announcer'), `${EVENT_LABELS.alarm}${detail ? ` ${detail}` : ''} from ${names.device(e.device, e.uid)} at ${new Date(e.t).toLocaleTimeString()}`);
}

async function renderFences() {
  let groups = [];
  if (session.can('geofences:write') && session.can('groups:read')) {
    groups = await json('/v1/groups').then((b) => b.groups).catch(() => []);
    if (state.page !== 'geofences') return;
  }
  if (fencePage) fencePage.leave();
  fencePage = renderGeofences(panel, fences, groups, async (selected) => {
    await fences.load();
    fences.selected = selected;
    if (state.page === 'geofences') renderFences();
  });
}

function bucket(ms) { return ms < 30_000 ? 'fresh' : ms < 120_000 ? 'recent' : ms < 600_000 ? 'stale' : 'old'; }

// --- Devices page ------------------------------------------------------------------------------
async function renderDevices() {
  await loadDevices();
  const now = Date.now();
  const manage = session.can('devices:write');
  const target = h('div', { id: 'devices-credentials' });
  fill(panel,
    h('h2', {}, 'Devices'),
    h('table', { class: 'devices-table', id: 'devices-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Device'), h('th', {}, 'Last fix'), h('th', {}))),
      h('tbody', {}, state.devices.map((d) => {
        const seen = live.devices.get(d.id);
        return h('tr', { dataset: { device: d.id } },
          h('td', {}, h('div', {}, d.name || d.uid), h('div', { class: 'note' }, d.uid), d.disabled ? h('div', { class: 'note' }, 'disabled') : null),
          h('td', {}, seen ? `${age(now - seen.t)} ago` : '—'),
          h('td', {},
            h('a', { href: '#/history', onclick: () => { live.selected = d.id; } }, 'History'),
            manage ? h('button', { type: 'button', class: 'small', onclick: () => rotate(d, target) }, 'New credentials') : null));
      }))),
    target);
}

async function rotate(device, target) {
  try {
    const { token } = await json(`/v1/devices/${device.id}/rotate-token`, { method: 'POST' });
    const { udp_key: udpKey } = await json(`/v1/devices/${device.id}/rotate-udp-key`, { method: 'POST' });
    await showCredentials(target, state.config, device, token, udpKey);
    target.scrollIntoView();
  } catch (e) {
    fill(target, `Could not rotate: ${e.message}`);
  }
}

// `call` is exported for the console: every request the page makes is one a script can make.
window.gpsApi = { call, json };
boot();
