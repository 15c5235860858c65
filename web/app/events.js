// The event feed: the newest events of the devices the user may see (the API and the fanout
// filter by role and groups), first from `GET /v1/events` (the last 24 hours), then live from
// the WebSocket's `event` frames (the subscription opts in with `events: true`). Keeps the
// newest KEEP events, newest first, counts the alarms the user has not seen yet, and renders the
// Events page: a type filter and one entry per event (time, device, what happened, details)
// that focuses the map on the event when chosen. Every text from the API or a device goes in as
// text (dom.js), never as HTML.

import { json } from './api.js';
import { h, fill, time } from './dom.js';
import { formatSpeed } from './units.js';

/** Events kept in memory (the page lists the newest SHOWN of them that pass the filter). */
const KEEP = 500;
const SHOWN = 200;
const DAY_MS = 86_400_000;
/** The newest alarm the user has seen (its fix time, ms), across reloads. */
const SEEN_KEY = 'gps.alarmsSeenAt';

/** What the page calls each event type. */
export const EVENT_LABELS = {
  geofence_enter: 'Entered fence',
  geofence_exit: 'Left fence',
  overspeed: 'Overspeed',
  alarm: 'Alarm',
  device_online: 'Online',
  device_offline: 'Offline',
  motion_start: 'Started moving',
  motion_stop: 'Stopped',
};

/** An event of the API (`fix_time` RFC 3339) or of a live frame (`fix_time` ms) in one shape. */
function normalize(e, uid) {
  const t = typeof e.fix_time === 'number' ? e.fix_time : Date.parse(e.fix_time);
  return {
    id: String(e.id), device: String(e.device_id), uid: uid === undefined ? null : String(uid), type: String(e.type), t,
    lat: Number.isFinite(e.lat) ? e.lat : null, lon: Number.isFinite(e.lon) ? e.lon : null,
    fence: e.geofence_id ? String(e.geofence_id) : null, details: e.details && typeof e.details === 'object' ? e.details : {},
  };
}

export class EventFeed {
  constructor() {
    this.events = []; // newest first
    this.ids = new Set();
    this.unseen = new Set(); // ids of alarms not seen yet
    this.state = 'idle'; // idle | loading | ready | error
    this.error = '';
    this.listeners = new Set();
    this.generation = 0;
  }

  on(f) { this.listeners.add(f); }

  emit(what, event) { for (const f of this.listeners) f(what, event); }

  get seenAt() { return Number(localStorage.getItem(SEEN_KEY)) || 0; }

  clear() {
    this.generation += 1;
    this.events = [];
    this.ids.clear();
    this.unseen.clear();
    this.state = 'idle';
    this.emit('changed');
  }

  /**
   * The newest KEEP events of the last 24 hours. The API pages oldest first, so the page asks
   * for windows going back from now: a window holding more than KEEP is halved (its newer half
   * first) until one fits, and a window that fits is taken whole, the next one four times as
   * long. A quiet day costs a few requests, a busy hour a few more. Merged with what arrived
   * live meanwhile.
   */
  async load() {
    const generation = ++this.generation;
    this.state = 'loading';
    this.error = '';
    this.emit('changed');
    const floor = Date.now() - DAY_MS;
    let to = Date.now() + 60_000, span = 15 * 60_000, found = 0;
    try {
      for (let requests = 0; found < KEEP && to > floor && requests < 40; requests++) {
        const from = Math.max(floor, to - span);
        const body = await json(`/v1/events?from=${Math.round(from)}&to=${Math.round(to)}&limit=${KEEP}`);
        if (generation !== this.generation) return;
        if (body.next_cursor && to - from > 60_000) { span = (to - from) / 2; continue; }
        for (const e of body.events) this.add(normalize(e), false);
        found += body.events.length;
        to = from;
        span *= 4;
      }
      this.state = 'ready';
    } catch (e) {
      if (generation !== this.generation) return;
      this.state = 'error';
      this.error = e.message;
    }
    this.emit('changed');
  }

  /** A live `event` frame: `{"type":"event","device_id","uid","event":{…}}`. */
  frame(m) {
    if (!m.event || typeof m.event !== 'object') return;
    const e = normalize(m.event, m.uid);
    if (this.add(e, true)) this.emit('changed');
  }

  /** Insert by fix time (newest first), once per id; true when it is new. */
  add(e, live) {
    if (!e.id || !Number.isFinite(e.t) || this.ids.has(e.id)) return false;
    let i = 0;
    while (i < this.events.length && this.events[i].t > e.t) i++;
    if (i >= KEEP) return false;
    this.events.splice(i, 0, e);
    this.ids.add(e.id);
    if (this.events.length > KEEP) {
      const dropped = this.events.pop();
      this.ids.delete(dropped.id);
      this.unseen.delete(dropped.id);
    }
    if (e.type === 'alarm' && (live || e.t > this.seenAt)) {
      this.unseen.add(e.id);
      if (live) this.emit('alarm', e);
    }
    return true;
  }

  /** The user looked at the feed: no alarm is unseen now. */
  markSeen() {
    const newest = this.events.find((e) => e.type === 'alarm');
    if (newest && newest.t > this.seenAt) localStorage.setItem(SEEN_KEY, String(newest.t));
    if (this.unseen.size) { this.unseen.clear(); this.emit('seen'); }
  }
}

/**
 * What the event says beyond its type, as one line: the fence's name, the speed against the
 * limit in the user's unit, the alarm's name, how long the device was silent.
 * `names.fence(id)` gives a fence's name (or null).
 */
export function describe(e, names) {
  const d = e.details;
  const fence = e.fence ? names.fence(e.fence) || 'a deleted fence' : null;
  switch (e.type) {
    case 'geofence_enter':
    case 'geofence_exit':
      return fence;
    case 'overspeed':
      return `${formatSpeed(d.speed_mps)} (limit ${formatSpeed(d.limit_mps)}${fence ? ` in ${fence}` : ''})`;
    case 'alarm':
      return d.alarm === undefined ? null : String(d.alarm);
    case 'device_offline':
      return Number.isFinite(d.last_seen) ? `last seen ${time(d.last_seen)}` : null;
    case 'motion_start':
      return Number.isFinite(d.speed_mps) ? formatSpeed(d.speed_mps) : null;
    case 'motion_stop':
      return Number.isFinite(d.still_since) ? `still since ${time(d.still_since)}` : null;
    default:
      return null;
  }
}

/**
 * The Events page into `panel`. `names.device(id, uid)` and `names.fence(id)` name things,
 * `focus(event)` shows one on the map. Returns `update()`, which redraws the list (call it when
 * the feed changes).
 */
export function renderEvents(panel, feed, names, focus) {
  const filter = h('select', { id: 'events-type', onchange: () => update() },
    h('option', { value: '' }, 'All types'),
    Object.entries(EVENT_LABELS).map(([type, label]) => h('option', { value: type }, label)));
  const status = h('div', { class: 'status', id: 'events-status' });
  const list = h('ul', { class: 'events', id: 'events-list', 'aria-label': 'Events, newest first' });
  fill(panel,
    h('h2', {}, 'Events'),
    h('div', { class: 'row' }, h('label', { class: 'inline' }, 'Type ', filter)),
    status,
    list);

  function entry(e) {
    const device = names.device(e.device, e.uid);
    const detail = describe(e, names);
    return h('li', {},
      h('button', {
        type: 'button', class: 'event', dataset: { type: e.type, event: e.id, device: e.device },
        'aria-label': `${EVENT_LABELS[e.type] || e.type}, ${device}, ${time(e.t)}${detail ? `, ${detail}` : ''}`,
        onclick: () => focus(e),
      },
      h('span', { class: 'event-head' },
        h('span', { class: 'event-type' }, EVENT_LABELS[e.type] || e.type),
        h('time', { dateTime: new Date(e.t).toISOString() }, time(e.t))),
      h('span', { class: 'event-device' }, device),
      detail ? h('span', { class: 'event-detail' }, detail) : null));
  }

  function update() {
    const type = filter.value;
    const rows = feed.events.filter((e) => !type || e.type === type);
    if (feed.state === 'error') {
      fill(status, `Could not load events: ${feed.error} `,
        h('button', { type: 'button', class: 'small', id: 'events-retry', onclick: () => feed.load() }, 'Retry'));
    } else if (feed.state === 'loading' && !rows.length) {
      fill(status, 'Loading events…');
    } else if (!rows.length) {
      fill(status, type ? `No ${EVENT_LABELS[type] || type} events in the last 24 hours.` : 'No events in the last 24 hours.');
    } else {
      fill(status, rows.length > SHOWN ? `The newest ${SHOWN} of ${rows.length}` : `${rows.length} event${rows.length === 1 ? '' : 's'}`);
    }
    fill(list, rows.slice(0, SHOWN).map(entry));
    feed.markSeen();
  }
  update();
  return update;
}

/** The focused event on the map's overlay: a ring at its position. */
export function focusLayer(getFocused) {
  return (ctx, map) => {
    const e = getFocused();
    if (!e || e.lat === null || e.lon === null) return;
    const [x, y] = map.toScreen(e.lon, e.lat);
    ctx.beginPath();
    ctx.arc(x, y, 16, 0, 2 * Math.PI);
    ctx.strokeStyle = e.type === 'alarm' ? '#c62828' : '#6a1b9a';
    ctx.lineWidth = 3;
    ctx.stroke();
    const label = EVENT_LABELS[e.type] || e.type;
    ctx.font = 'bold 12px system-ui, sans-serif';
    ctx.lineWidth = 3;
    ctx.strokeStyle = '#fff';
    ctx.strokeText(label, x + 18, y + 16);
    ctx.fillStyle = '#111';
    ctx.fillText(label, x + 18, y + 16);
  };
}
