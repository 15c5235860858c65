// History: one device over a time range, drawn as a track on the map's base canvas, simplified
// by the API (`simplify` for the zoom level, `bucket` for long ranges), with a playback slider,
// the stops and trips of the summary endpoint, and exports (GeoJSON, GPX, CSV) fetched with the
// bearer header and saved as files.

import { call, json, session } from './api.js';
import { h, fill, time, duration, localInput, download } from './dom.js';
import { project } from './map.js';
import { formatSpeed } from './units.js';
import { EVENT_LABELS } from './events.js';

const MAX_POINTS = 100_000;

function search(ts, t) {
  let lo = 0, hi = ts.length - 1;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (ts[mid] < t) lo = mid + 1; else hi = mid; }
  return lo;
}

/** "2 Overspeed, 1 Alarm" from the summary's per-type counts (`none` when all are 0). */
function eventCounts(counts) {
  const parts = Object.entries(counts).filter(([, n]) => n > 0).map(([type, n]) => `${n} ${EVENT_LABELS[type] || type}`);
  return parts.length ? parts.join(', ') : 'none';
}

export class HistoryView {
  constructor(map, panel) {
    this.map = map;
    this.panel = panel;
    this.track = null;
    this.index = 0;
    this.playing = false;
    this.stats = null;
    map.baseLayers.push((ctx, m) => this.draw(ctx, m));
    map.on((e) => { if (e.type === 'view') this.maybeRefine(); });
  }

  /** Render the form for these devices, preselecting `selected`. */
  render(devices, selected) {
    const now = Date.now();
    this.deviceSelect = h('select', { name: 'device', id: 'history-device' },
      devices.map((d) => h('option', { value: d.id, selected: d.id === selected }, d.name ? `${d.name} (${d.uid})` : d.uid)));
    this.from = h('input', { type: 'datetime-local', id: 'history-from', value: localInput(now - 86_400_000) });
    this.to = h('input', { type: 'datetime-local', id: 'history-to', value: localInput(now + 60_000) });
    const quick = (label, ms) => h('button', { type: 'button', class: 'small', onclick: () => {
      this.from.value = localInput(Date.now() - ms); this.to.value = localInput(Date.now() + 60_000); this.load();
    } }, label);
    this.slider = h('input', { type: 'range', id: 'history-slider', min: 0, max: 0, value: 0, disabled: true,
      oninput: () => this.seek(Number(this.slider.value)) });
    this.playButton = h('button', { type: 'button', disabled: true, onclick: () => this.togglePlay() }, 'Play');
    this.readout = h('div', { class: 'readout', id: 'history-readout' });
    this.status = h('div', { class: 'status', id: 'history-status' });
    this.summaryBox = h('div', { class: 'summary', id: 'history-summary' });
    const exportButton = (format, ext) => h('button', { type: 'button', class: 'small', id: `export-${ext}`,
      onclick: () => this.export(format, ext) }, ext.toUpperCase());
    fill(this.panel,
      h('h2', {}, 'History'),
      h('form', { class: 'stack', onsubmit: (e) => { e.preventDefault(); this.load(); } },
        h('label', {}, 'Device', this.deviceSelect),
        h('label', {}, 'From', this.from),
        h('label', {}, 'To', this.to),
        h('div', { class: 'row' }, quick('1 h', 3_600_000), quick('24 h', 86_400_000), quick('7 d', 7 * 86_400_000)),
        h('button', { type: 'submit', id: 'history-load' }, 'Show track')),
      this.status,
      h('div', { class: 'row' }, this.playButton, this.slider),
      this.readout,
      session.can('positions:export')
        ? h('div', { class: 'row exports' }, 'Export:', exportButton('geojson', 'geojson'), exportButton('gpx', 'gpx'), exportButton('csv', 'csv'))
        : null,
      this.summaryBox);
  }

  range() {
    const from = new Date(this.from.value).getTime();
    const to = new Date(this.to.value).getTime();
    if (!Number.isFinite(from) || !Number.isFinite(to) || from >= to) throw new Error('pick a time range (from before to)');
    return { from, to };
  }

  query(params) {
    return new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== null)).toString();
  }

  /** Load and draw the track; `tolerance` is the `simplify` in metres (null: every fix). */
  async load(tolerance = 5) {
    let range;
    try { range = this.range(); } catch (e) { fill(this.status, e.message); return; }
    const device = this.deviceSelect.value;
    if (!device) return;
    this.stop();
    const seconds = (range.to - range.from) / 1000;
    // Long ranges: one fix per bucket, so at most ~MAX_POINTS come back before simplification.
    const bucket = seconds > MAX_POINTS ? `${Math.ceil(seconds / MAX_POINTS)}s` : undefined;
    const params = { from: range.from, to: range.to, limit: MAX_POINTS, simplify: tolerance, bucket };
    fill(this.status, 'Loading…');
    const started = performance.now();
    let body, text, headers, arrived;
    try {
      const response = await call(`/v1/devices/${device}/positions?${this.query(params)}`);
      headers = performance.now();
      text = await response.text();
      arrived = performance.now();
      body = JSON.parse(text);
    } catch (e) {
      fill(this.status, `Could not load the track: ${e.message}`);
      return;
    }
    const parsed = performance.now();
    const rows = body.positions;
    const n = rows.length;
    const xs = new Float64Array(n), ys = new Float64Array(n), ts = new Float64Array(n);
    const speeds = new Float32Array(n);
    let w = 180, s = 90, e = -180, north = -90;
    for (let i = 0; i < n; i++) {
      const r = rows[i];
      [xs[i], ys[i]] = project(r.lon, r.lat);
      ts[i] = Date.parse(r.fix_time);
      speeds[i] = r.speed_mps ?? NaN;
      if (r.lon < w) w = r.lon; if (r.lon > e) e = r.lon;
      if (r.lat < s) s = r.lat; if (r.lat > north) north = r.lat;
    }
    const refine = this.track && this.track.device === device && this.track.from === range.from && this.track.to === range.to;
    this.track = { device, from: range.from, to: range.to, xs, ys, ts, speeds, tolerance, bucket, stops: [], truncated: Boolean(body.next_cursor) };
    this.index = 0;
    this.slider.max = Math.max(0, n - 1);
    this.slider.value = 0;
    this.slider.disabled = n === 0;
    this.playButton.disabled = n === 0;
    if (n && !refine) this.map.fit([w, s, e, north], 17);
    this.map.baseDirty = true;
    this.map.frame();
    const drawn = performance.now();
    // Measured (docs/dashboard.md): request to headers, the body's transfer, then the page's own
    // work once the whole response is in (parse, project, draw).
    this.stats = { fixes: n, headers_ms: headers - started, body_ms: arrived - headers, parse_ms: parsed - arrived,
      draw_ms: drawn - parsed, after_response_ms: drawn - arrived, bytes: text.length };
    const simplified = tolerance === null ? 'not simplified' : `simplified to ${tolerance} m`;
    fill(this.status, n
      ? `${n.toLocaleString()} points (${simplified}${bucket ? `, one per ${bucket}` : ''})${this.track.truncated ? '; more follow: narrow the range' : ''}`
      : 'No fixes in this range.');
    this.seek(0);
    if (!refine) this.loadSummary(device, range);
  }

  /** Zoomed in past the loaded detail: fetch again, finer. */
  maybeRefine() {
    const t = this.track;
    if (!t || !t.xs.length || this.loading) return;
    const wanted = Math.max(0.5, Math.round(this.map.metresPerPixel() * 10) / 10);
    if (t.tolerance <= wanted * 2) return;
    clearTimeout(this.refineTimer);
    this.refineTimer = setTimeout(async () => {
      this.loading = true;
      try { await this.load(wanted); } finally { this.loading = false; }
    }, 400);
  }

  async loadSummary(device, range) {
    fill(this.summaryBox);
    let body;
    try {
      body = await json(`/v1/devices/${device}/summary?${this.query({ from: range.from, to: range.to })}`);
    } catch (e) {
      fill(this.summaryBox, `No summary: ${e.message}`);
      return;
    }
    const sum = body.summary;
    const t = this.track;
    if (t && t.ts.length) {
      t.stops = sum.stops.map((stop) => search(t.ts, stop.start_ms));
      this.map.baseDirty = true;
    }
    const km = (m) => `${(m / 1000).toFixed(2)} km`;
    const row = (kind, seg) => h('li', { class: `segment ${kind}`, onclick: () => this.seekTime(seg.start_ms) },
      `${kind === 'trip' ? 'Trip' : 'Stop'} ${time(seg.start_ms)} · ${duration((seg.end_ms - seg.start_ms) / 1000)}`,
      kind === 'trip' ? ` · ${km(seg.distance_m)}` : '');
    const segments = [
      ...sum.trips.map((seg) => ['trip', seg]),
      ...sum.stops.map((seg) => ['stop', seg]),
    ].sort((a, b) => a[1].start_ms - b[1].start_ms);
    fill(this.summaryBox,
      h('dl', {},
        h('dt', {}, 'Fixes'), h('dd', {}, sum.fix_count.toLocaleString()),
        h('dt', {}, 'Distance'), h('dd', {}, km(sum.distance_m)),
        h('dt', {}, 'Moving'), h('dd', {}, duration(sum.moving_time_s)),
        h('dt', {}, 'Max speed'), h('dd', {}, formatSpeed(sum.max_speed_mps)),
        sum.event_counts ? [h('dt', {}, 'Events'), h('dd', { id: 'history-event-counts' }, eventCounts(sum.event_counts))] : null),
      h('ul', { class: 'segments', id: 'history-segments' }, segments.slice(0, 500).map(([k, seg]) => row(k, seg))));
  }

  seekTime(ms) {
    if (this.track) this.seek(search(this.track.ts, ms));
  }

  seek(i) {
    const t = this.track;
    if (!t || !t.xs.length) { fill(this.readout); return; }
    this.index = Math.max(0, Math.min(t.xs.length - 1, i));
    this.slider.value = this.index;
    const speed = t.speeds[this.index];
    fill(this.readout, `${time(t.ts[this.index])}${Number.isFinite(speed) ? ` · ${formatSpeed(speed)}` : ''}`);
    this.map.baseDirty = true;
  }

  togglePlay() {
    if (this.playing) return this.stop();
    const t = this.track;
    if (!t || !t.xs.length) return;
    this.playing = true;
    fill(this.playButton, 'Pause');
    if (this.index >= t.xs.length - 1) this.index = 0;
    let clock = t.ts[this.index];
    let last = performance.now();
    const step = (now) => {
      if (!this.playing || this.track !== t) return;
      clock += (now - last) * 60; // a minute of track per second
      last = now;
      this.seek(search(t.ts, clock));
      if (this.index >= t.xs.length - 1) return this.stop();
      requestAnimationFrame(step);
    };
    requestAnimationFrame(step);
  }

  stop() {
    this.playing = false;
    if (this.playButton) fill(this.playButton, 'Play');
  }

  clear() {
    this.stop();
    this.track = null;
    this.map.baseDirty = true;
  }

  async export(format, ext) {
    let range;
    try { range = this.range(); } catch (e) { fill(this.status, e.message); return; }
    const device = this.deviceSelect.value;
    try {
      const response = await call(`/v1/devices/${device}/positions?${this.query({ from: range.from, to: range.to, limit: MAX_POINTS, format })}`);
      const blob = await response.blob();
      const more = response.headers.get('x-next-cursor') ? ' (first 100,000 fixes: narrow the range for the rest)' : '';
      const option = this.deviceSelect.selectedOptions[0];
      const name = `${(option ? option.textContent : device).replace(/[^\w.-]+/g, '_')}-${new Date(range.from).toISOString().slice(0, 10)}.${ext}`;
      download(blob, name);
      fill(this.status, `Exported ${name}${more}`);
    } catch (e) {
      fill(this.status, `Export failed: ${e.message}`);
    }
  }

  draw(ctx, map) {
    const t = this.track;
    if (!t || !t.xs.length) return;
    const k = map.worldPx, ox = map.width / 2 - map.cx * k, oy = map.height / 2 - map.cy * k;
    ctx.beginPath();
    ctx.moveTo(t.xs[0] * k + ox, t.ys[0] * k + oy);
    for (let i = 1; i < t.xs.length; i++) ctx.lineTo(t.xs[i] * k + ox, t.ys[i] * k + oy);
    ctx.lineJoin = 'round';
    ctx.strokeStyle = 'rgba(255, 255, 255, 0.9)';
    ctx.lineWidth = 5;
    ctx.stroke();
    ctx.strokeStyle = '#c2185b';
    ctx.lineWidth = 2.5;
    ctx.stroke();
    for (const i of t.stops) {
      ctx.beginPath();
      ctx.arc(t.xs[i] * k + ox, t.ys[i] * k + oy, 5, 0, 2 * Math.PI);
      ctx.fillStyle = '#fff'; ctx.fill();
      ctx.strokeStyle = '#6a1b9a'; ctx.lineWidth = 2; ctx.stroke();
    }
    const i = this.index;
    ctx.beginPath();
    ctx.arc(t.xs[i] * k + ox, t.ys[i] * k + oy, 7, 0, 2 * Math.PI);
    ctx.fillStyle = '#1b4fd8'; ctx.fill();
    ctx.strokeStyle = '#fff'; ctx.lineWidth = 2; ctx.stroke();
  }
}
