// Live positions over the fanout WebSocket (`/v1/live?ticket=…`, the ticket from the query API):
// subscribe to everything the user may see, apply the snapshot and then every `fix` into one map
// of device states, and draw them on the map's overlay canvas at most once per animation frame
// (messages only mark the layer dirty, so 10,000 fixes a second cost one draw per frame).
// Reconnects by itself with backoff; after a `gap` (the server lost its Redis feed) or an
// `access_changed`, it takes a fresh snapshot. With `wantEvents` the subscription also asks for
// events (`events: true`); their frames go to the listeners as ('event', frame).

import { json } from './api.js';
import { project } from './map.js';

const TRAIL_MS = 5 * 60 * 1000;
const TRAIL_POINTS = 32;
/** Trail segments drawn per frame, all devices together. */
const TRAIL_SEGMENTS = 20_000;
/** Marker sprite size, CSS pixels. */
const SPRITE = 22;
/** Trail pixels: rgba(40, 90, 200, 0.6) as a little-endian RGBA word. */
const TRAIL_COLOUR = (153 << 24) | (200 << 16) | (90 << 8) | 40;

/** A two-pixel line into a pixel buffer (Bresenham, doubled below), clipped to the buffer. */
function line(px, W, H, x0, y0, x1, y1, colour) {
  if ((x0 < 0 && x1 < 0) || (y0 < 0 && y1 < 0) || (x0 >= W && x1 >= W) || (y0 >= H && y1 >= H)) return;
  const dx = Math.abs(x1 - x0), dy = -Math.abs(y1 - y0);
  const sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  let err = dx + dy;
  for (let steps = 0; steps < 4 * (W + H); steps++) {
    if (x0 >= 0 && y0 >= 0 && x0 < W && y0 < H - 1) { px[y0 * W + x0] = colour; px[(y0 + 1) * W + x0] = colour; }
    if (x0 === x1 && y0 === y1) return;
    const e2 = 2 * err;
    if (e2 >= dy) { err += dy; x0 += sx; }
    if (e2 <= dx) { err += dx; y0 += sy; }
  }
}
/** Age buckets: limit (ms) and colour. */
const AGES = [
  [30_000, '#1a9641'],
  [120_000, '#a6c93a'],
  [600_000, '#f08c2e'],
  [Infinity, '#8a8f98'],
];

export class LiveLayer {
  constructor(map, liveUrl) {
    this.map = map;
    this.liveUrl = liveUrl;
    this.devices = new Map();
    this.names = new Map();
    this.selected = null;
    this.state = 'idle';
    this.detail = '';
    this.fixes = 0;
    this.lagged = 0;
    this.version = 0;
    this.listeners = new Set();
    this.ws = null;
    this.running = false;
    this.attempt = 0;
    this.requestId = 0;
    this.trailSegments = TRAIL_SEGMENTS;
    this.wantEvents = false;
    // A fanout that predates events refuses the field: subscribe without it from then on.
    this.eventsRefused = false;
    this.draw = this.draw.bind(this);
    map.overlayLayers.push(this.draw);
    // Ages change with time even without fixes.
    setInterval(() => { if (this.devices.size) map.overlayDirty = true; }, 1000);
  }

  on(f) { this.listeners.add(f); }

  emit(what, detail) { for (const f of this.listeners) f(what, detail); }

  subscribe() {
    const message = { type: 'subscribe', id: ++this.requestId, all: true };
    if (this.wantEvents && !this.eventsRefused) message.events = true;
    this.send(message);
  }

  setState(state, detail = '') {
    this.state = state;
    this.detail = detail;
    for (const f of this.listeners) f('state');
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.connect();
  }

  stop() {
    this.running = false;
    clearTimeout(this.retry);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
    this.devices.clear();
    this.setState('idle');
  }

  async connect() {
    if (!this.running) return;
    this.setState('connecting');
    let ticket;
    try {
      ({ ticket } = await json('/v1/live/ticket', { method: 'POST' }));
    } catch (e) {
      return this.reconnect(`ticket refused: ${e.message}`);
    }
    if (!this.running) return;
    const ws = new WebSocket(`${this.liveUrl}?ticket=${encodeURIComponent(ticket)}`);
    this.ws = ws;
    ws.onmessage = (event) => this.message(ws, JSON.parse(event.data));
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.reconnect(event.reason ? `closed: ${event.code} ${event.reason}` : `closed (${event.code})`);
    };
  }

  reconnect(why) {
    if (!this.running) return;
    this.attempt += 1;
    const delay = Math.min(15_000, 500 * 2 ** Math.min(this.attempt, 5)) * (0.75 + Math.random() / 2);
    this.setState('reconnecting', `${why}; retry in ${Math.round(delay / 1000)} s`);
    clearTimeout(this.retry);
    this.retry = setTimeout(() => this.connect(), delay);
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  /** A fresh snapshot of everything visible (after a gap or an access change). */
  resync() {
    this.send({ type: 'unsubscribe', id: ++this.requestId });
    this.subscribe();
  }

  message(ws, m) {
    if (this.ws !== ws) return;
    switch (m.type) {
      case 'welcome':
        this.attempt = 0;
        this.setState('live');
        this.subscribe();
        this.emit('connected');
        break;
      case 'snapshot':
        for (const p of m.positions) this.apply(p);
        this.setState('live', m.truncated ? 'snapshot truncated' : '');
        this.changed();
        break;
      case 'fix':
        this.apply(m);
        break;
      case 'event':
        this.emit('event', m);
        break;
      case 'lagged':
        this.lagged += m.coalesced;
        break;
      case 'gap':
        if (m.status === 'lost') this.setState('gap', 'server lost its live feed; positions may be stale');
        else { this.setState('live', 'resynced after a gap'); this.resync(); }
        break;
      case 'access_changed':
        // What may still be seen comes back in the new snapshot.
        this.devices.clear();
        this.resync();
        this.changed();
        this.emit('access_changed');
        break;
      case 'error':
        if (typeof m.field === 'string' && m.field.startsWith('events') && !this.eventsRefused) {
          this.eventsRefused = true;
          this.subscribe();
          break;
        }
        this.setState(this.state, `server: ${m.message}`);
        break;
      default:
        break;
    }
  }

  /** One fix (snapshot entry or live frame) into the device's state. */
  apply(m) {
    const f = m.fix;
    if (!f || !Number.isFinite(f.lat) || !Number.isFinite(f.lon)) return;
    let d = this.devices.get(m.device);
    if (!d) {
      d = { id: m.device, uid: String(m.uid ?? ''), trail: new Float64Array(TRAIL_POINTS * 3), head: 0, count: 0, t: -Infinity };
      this.devices.set(m.device, d);
      this.version += 1;
    }
    if (f.t < d.t) return; // a late fix never moves the marker back
    const [x, y] = project(f.lon, f.lat);
    d.x = x; d.y = y; d.lat = f.lat; d.lon = f.lon; d.t = f.t;
    d.hdg = Number.isFinite(f.hdg) ? f.hdg : null;
    d.spd = Number.isFinite(f.spd) ? f.spd : null;
    d.proto = m.proto;
    const i = d.head * 3;
    d.trail[i] = x; d.trail[i + 1] = y; d.trail[i + 2] = f.t;
    d.head = (d.head + 1) % TRAIL_POINTS;
    d.count = Math.min(TRAIL_POINTS, d.count + 1);
    this.fixes += 1;
    this.map.overlayDirty = true;
  }

  changed() { for (const f of this.listeners) f('devices'); }

  /** The device nearest to a screen point, within 12 px. */
  pick(px, py) {
    const map = this.map;
    let best = null, bestD = 144;
    for (const d of this.devices.values()) {
      const dx = map.toScreenX(d.x) - px, dy = map.toScreenY(d.y) - py;
      const dist = dx * dx + dy * dy;
      if (dist < bestD) { best = d; bestD = dist; }
    }
    return best;
  }

  /**
   * Markers and trails are written straight into one ImageData (pixels, not canvas paths) and
   * put on the overlay once per frame: a canvas path or drawImage per device is rasterized by
   * the browser, which costs far more than a frame at 10,000 devices on a software canvas (no
   * GPU), while a few hundred thousand pixel writes take milliseconds. Each marker is a sprite
   * (per age colour and 10° of heading, plus a dot for no heading) rasterized once by the canvas
   * and kept as pixel offsets and colours. Trails share a budget of segments per frame: with
   * many devices on screen each trail gets shorter.
   */
  sprite(bucket, heading) {
    const key = heading === null ? bucket * 37 + 36 : bucket * 37 + (Math.round(heading / 10) % 36);
    this.sprites = this.sprites || new Map();
    let sprite = this.sprites.get(key);
    if (sprite) return sprite;
    const ratio = window.devicePixelRatio || 1;
    const size = Math.ceil(SPRITE * ratio);
    const canvas = document.createElement('canvas');
    canvas.width = canvas.height = size;
    const g = canvas.getContext('2d');
    g.scale(ratio, ratio);
    g.translate(SPRITE / 2, SPRITE / 2);
    g.beginPath();
    if (heading === null) {
      g.arc(0, 0, 4, 0, 2 * Math.PI);
    } else {
      g.rotate((Math.round(heading / 10) * 10 * Math.PI) / 180);
      g.moveTo(0, -9); g.lineTo(5, 5); g.lineTo(0, 2); g.lineTo(-5, 5); g.closePath();
    }
    g.fillStyle = AGES[bucket][1];
    g.fill();
    g.strokeStyle = 'rgba(0, 0, 0, 0.7)';
    g.lineWidth = 1;
    g.stroke();
    const rgba = new Uint32Array(g.getImageData(0, 0, size, size).data.buffer);
    const offsets = [], colours = [];
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const c = rgba[y * size + x];
        if (c >>> 24 > 16) { offsets.push(x - (size >> 1), y - (size >> 1)); colours.push(c); }
      }
    }
    sprite = { offsets: Int32Array.from(offsets), colours: Uint32Array.from(colours) };
    this.sprites.set(key, sprite);
    return sprite;
  }

  draw(ctx, map, now) {
    if (!this.devices.size) return;
    const ratio = window.devicePixelRatio || 1;
    const W = map.overlay.width, H = map.overlay.height;
    if (!this.image || this.image.width !== W || this.image.height !== H) {
      this.image = ctx.createImageData(W, H);
      this.pixels = new Uint32Array(this.image.data.buffer);
    }
    const px = this.pixels;
    px.fill(0);
    const k = map.worldPx * ratio;
    const ox = (map.width / 2 - map.cx * map.worldPx) * ratio, oy = (map.height / 2 - map.cy * map.worldPx) * ratio;
    const margin = SPRITE * ratio;
    const visible = [];
    for (const d of this.devices.values()) {
      const sx = Math.round(d.x * k + ox), sy = Math.round(d.y * k + oy);
      if (sx > -margin && sy > -margin && sx < W + margin && sy < H + margin) visible.push(d, sx, sy);
    }
    const count = visible.length / 3;
    const points = Math.min(TRAIL_POINTS, Math.floor(this.trailSegments / Math.max(1, count)) + 1);
    if (points > 1) {
      for (let v = 0; v < visible.length; v += 3) {
        const d = visible[v];
        let lx = null, ly = 0;
        for (let n = Math.min(d.count, points); n > 0; n--) {
          const i = ((d.head - n + TRAIL_POINTS) % TRAIL_POINTS) * 3;
          if (now - d.trail[i + 2] > TRAIL_MS) continue;
          const tx = Math.round(d.trail[i] * k + ox), ty = Math.round(d.trail[i + 1] * k + oy);
          if (lx !== null) line(px, W, H, lx, ly, tx, ty, TRAIL_COLOUR);
          lx = tx; ly = ty;
        }
      }
    }
    for (let v = 0; v < visible.length; v += 3) {
      const d = visible[v], cx = visible[v + 1], cy = visible[v + 2];
      const age = now - d.t;
      let b = 0;
      while (age > AGES[b][0]) b++;
      const { offsets, colours } = this.sprite(b, d.hdg);
      for (let j = 0, o = 0; j < colours.length; j++, o += 2) {
        const x = cx + offsets[o], y = cy + offsets[o + 1];
        if (x >= 0 && y >= 0 && x < W && y < H) px[y * W + x] = colours[j];
      }
    }
    ctx.putImageData(this.image, 0, 0);
    const sel = this.selected && this.devices.get(this.selected);
    if (sel) {
      const sx = map.toScreenX(sel.x), sy = map.toScreenY(sel.y);
      ctx.beginPath();
      ctx.arc(sx, sy, 12, 0, 2 * Math.PI);
      ctx.strokeStyle = '#1b4fd8';
      ctx.lineWidth = 2;
      ctx.stroke();
      const label = this.names.get(sel.id) || sel.uid;
      ctx.font = '12px system-ui, sans-serif';
      ctx.lineWidth = 3;
      ctx.strokeStyle = '#fff';
      ctx.strokeText(label, sx + 14, sy - 10);
      ctx.fillStyle = '#111';
      ctx.fillText(label, sx + 14, sy - 10);
    }
  }

  /** A synthetic in-page feed (measurements): n devices, `rate` fixes a second through `apply`. */
  synthetic(n, rate) {
    const [lon0, lat0] = [this.map.fromScreen(this.map.width / 2, this.map.height / 2)].flat();
    const spread = this.map.metresPerPixel() * Math.min(this.map.width, this.map.height) / 2 / 111_000;
    const state = Array.from({ length: n }, (_, i) => ({
      device: `synthetic-${i}`, uid: `syn-${String(i).padStart(5, '0')}`,
      lat: lat0 + (Math.random() - 0.5) * spread, lon: lon0 + (Math.random() - 0.5) * spread, hdg: Math.random() * 360,
    }));
    let next = 0;
    const tick = 20;
    const timer = setInterval(() => {
      const now = Date.now();
      for (let k = 0; k < (rate * tick) / 1000; k++) {
        const s = state[next];
        next = (next + 1) % n;
        s.hdg = (s.hdg + (Math.random() - 0.5) * 20 + 360) % 360;
        const step = 0.00005;
        s.lat += Math.cos((s.hdg * Math.PI) / 180) * step;
        s.lon += Math.sin((s.hdg * Math.PI) / 180) * step;
        this.apply({ device: s.device, uid: s.uid, proto: 'synthetic', fix: { t: now, lat: s.lat, lon: s.lon, hdg: s.hdg, spd: 10 } });
      }
    }, tick);
    this.changed();
    return () => clearInterval(timer);
  }
}
