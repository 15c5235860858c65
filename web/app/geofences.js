// Geofences: the tenant's fences from `GET /v1/geofences` drawn on the map's base canvas
// (polygons, multipolygons and circles, with their names), the Geofences page (the list, a
// fence's details), and for `geofences:write` drawing a new fence on the map (a polygon corner
// by corner, or a circle: its centre, then a point on its edge; the corners and the centre are
// also plain inputs, so a keyboard can do it all), editing a fence's name and speed limit, and
// deleting one after a confirmation. The API validates (one rule for the API and the processor);
// its 400 names the field, and the reason is shown next to that field.

import { call, json, session } from './api.js';
import { h, fill } from './dom.js';
import { project } from './map.js';
import { formatSpeed, toMps, fromMps, SPEED_UNITS, speedUnit } from './units.js';

const EARTH_RADIUS_M = 6_371_008.8;
const CIRCLE_STEPS = 72;
const PAGE = 1000;

const rad = (deg) => (deg * Math.PI) / 180;

/** Great-circle distance in metres (the haversine, as `gps_domain::geo::haversine_m`). */
export function distanceM(lat1, lon1, lat2, lon2) {
  const a = Math.sin(rad(lat2 - lat1) / 2) ** 2 + Math.cos(rad(lat1)) * Math.cos(rad(lat2)) * Math.sin(rad(lon2 - lon1) / 2) ** 2;
  return 2 * EARTH_RADIUS_M * Math.asin(Math.min(1, Math.sqrt(a)));
}

/** A circle as a ring of [lon, lat] positions (for drawing). */
function circleRing(lon, lat, radius) {
  const d = radius / EARTH_RADIUS_M, φ1 = rad(lat);
  const ring = [];
  for (let i = 0; i <= CIRCLE_STEPS; i++) {
    const θ = (2 * Math.PI * i) / CIRCLE_STEPS;
    const φ2 = Math.asin(Math.sin(φ1) * Math.cos(d) + Math.cos(φ1) * Math.sin(d) * Math.cos(θ));
    const λ2 = rad(lon) + Math.atan2(Math.sin(θ) * Math.sin(d) * Math.cos(φ1), Math.cos(d) - Math.sin(φ1) * Math.sin(φ2));
    ring.push([(λ2 * 180) / Math.PI, (φ2 * 180) / Math.PI]);
  }
  return ring;
}

/**
 * A ring of [lon, lat] as mercator x, y pairs, unwrapped so that an edge over the antimeridian
 * (the short way round, as the API reads it) stays short on screen.
 */
function mercatorRing(ring) {
  const out = new Float64Array(ring.length * 2);
  let offset = 0;
  for (let i = 0; i < ring.length; i++) {
    const [lon, lat] = ring[i];
    if (i > 0) {
      const previous = ring[i - 1][0];
      if (lon - previous > 180) offset -= 360;
      else if (previous - lon > 180) offset += 360;
    }
    const [x, y] = project(lon + offset, lat);
    out[2 * i] = x; out[2 * i + 1] = y;
  }
  return out;
}

/** The rings to draw for a fence (polygon rings with their holes, or the circle's). */
function fenceRings(fence) {
  const g = fence.geometry || {};
  try {
    if (g.type === 'Polygon') return g.coordinates.map(mercatorRing);
    if (g.type === 'MultiPolygon') return g.coordinates.flatMap((p) => p.map(mercatorRing));
    if (g.type === 'Point' && Number.isFinite(fence.radius_m)) {
      return [mercatorRing(circleRing(g.coordinates[0], g.coordinates[1], fence.radius_m))];
    }
  } catch { /* a geometry the page cannot read is listed, not drawn */ }
  return [];
}

/** Whether mercator (x, y) is inside `rings` (even-odd over every ring: holes excluded). */
function insideRings(rings, x, y) {
  let inside = false;
  for (const r of rings) {
    for (let i = 0, j = r.length - 2; i < r.length; j = i, i += 2) {
      if ((r[i + 1] > y) !== (r[j + 1] > y) && x < ((r[j] - r[i]) * (y - r[i + 1])) / (r[j + 1] - r[i + 1]) + r[i]) inside = !inside;
    }
  }
  return inside;
}

/** Where a fence's name goes: the middle of its box (over the antimeridian too). */
function labelPoint([w, s, e, n]) {
  const east = e < w ? e + 360 : e;
  return project(((w + east) / 2 + 540) % 360 - 180, (s + n) / 2);
}

export function fenceKind(fence) {
  const g = fence.geometry || {};
  if (g.type === 'Point') return `circle, ${fence.radius_m >= 1000 ? `${(fence.radius_m / 1000).toFixed(2)} km` : `${Math.round(fence.radius_m)} m`}`;
  if (g.type === 'MultiPolygon') return `${g.coordinates.length} polygons`;
  return 'polygon';
}

export class GeofenceLayer {
  constructor(map) {
    this.map = map;
    this.fences = [];
    this.byId = new Map();
    this.state = 'idle';
    this.error = '';
    this.selected = null;
    /** The fence being drawn: `{kind: 'polygon', corners: [[lon, lat]…]}` or `{kind: 'circle', centre, radius}`. */
    this.draft = null;
    map.baseLayers.push((ctx, m) => this.draw(ctx, m));
  }

  name(id) {
    const fence = this.byId.get(id);
    return fence ? fence.name : null;
  }

  /** Every fence of the tenant, page by page. */
  async load() {
    this.state = 'loading';
    const fences = [];
    try {
      let cursor = null;
      do {
        const body = await json(`/v1/geofences?limit=${PAGE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
        fences.push(...body.geofences);
        cursor = body.next_cursor;
      } while (cursor);
      this.state = 'ready';
    } catch (e) {
      this.state = 'error';
      this.error = e.message;
      return;
    } finally {
      this.map.baseDirty = true;
    }
    for (const fence of fences) {
      fence.rings = fenceRings(fence);
      fence.label = labelPoint(fence.bbox);
    }
    fences.sort((a, b) => a.name.localeCompare(b.name));
    this.fences = fences;
    this.byId = new Map(fences.map((f) => [f.id, f]));
    if (this.selected && !this.byId.has(this.selected)) this.selected = null;
  }

  clear() {
    this.fences = [];
    this.byId.clear();
    this.selected = null;
    this.draft = null;
    this.state = 'idle';
    this.map.baseDirty = true;
  }

  /** Draw the fences, then the draft, in the base canvas's pixel space. */
  draw(ctx, map) {
    const k = map.worldPx, ox = map.width / 2 - map.cx * k, oy = map.height / 2 - map.cy * k;
    const path = (rings) => {
      ctx.beginPath();
      for (const ring of rings) {
        ctx.moveTo(ring[0] * k + ox, ring[1] * k + oy);
        for (let i = 2; i < ring.length; i += 2) ctx.lineTo(ring[i] * k + ox, ring[i + 1] * k + oy);
        ctx.closePath();
      }
    };
    ctx.font = '12px system-ui, sans-serif';
    ctx.textAlign = 'center';
    for (const fence of this.fences) {
      if (!fence.rings.length) continue;
      const selected = fence.id === this.selected;
      path(fence.rings);
      ctx.fillStyle = selected ? 'rgba(0, 137, 123, 0.28)' : 'rgba(0, 137, 123, 0.12)';
      ctx.fill('evenodd');
      ctx.strokeStyle = '#00796b';
      ctx.lineWidth = selected ? 3 : 1.5;
      ctx.stroke();
      // Names only where there is room for them.
      const [x, y] = fence.label;
      const sx = x * k + ox, sy = y * k + oy;
      if ((selected || map.zoom >= 9) && sx > -100 && sy > -20 && sx < map.width + 100 && sy < map.height + 20) {
        ctx.lineWidth = 3;
        ctx.strokeStyle = 'rgba(255, 255, 255, 0.9)';
        ctx.strokeText(fence.name, sx, sy);
        ctx.fillStyle = '#004d40';
        ctx.fillText(fence.name, sx, sy);
      }
    }
    ctx.textAlign = 'start';
    const d = this.draft;
    if (!d) return;
    const points = d.kind === 'polygon' ? d.corners : d.centre ? [d.centre] : [];
    if (d.kind === 'circle' && d.centre && d.radius > 0) {
      path([mercatorRing(circleRing(d.centre[0], d.centre[1], d.radius))]);
    } else if (points.length > 1) {
      path([mercatorRing(points)]);
    }
    if (points.length > 1 || d.radius > 0) {
      ctx.fillStyle = 'rgba(27, 79, 216, 0.15)';
      ctx.fill('evenodd');
      ctx.setLineDash([6, 4]);
      ctx.strokeStyle = '#1b4fd8';
      ctx.lineWidth = 2;
      ctx.stroke();
      ctx.setLineDash([]);
    }
    for (const [lon, lat] of points) {
      const [x, y] = map.toScreen(lon, lat);
      ctx.beginPath();
      ctx.arc(x, y, 4, 0, 2 * Math.PI);
      ctx.fillStyle = '#fff'; ctx.fill();
      ctx.strokeStyle = '#1b4fd8'; ctx.lineWidth = 2; ctx.stroke();
    }
  }

  /** The fence under a position (the smallest when several hold it), or null. */
  pick(lon, lat) {
    const [px, py] = project(lon, lat);
    let best = null, bestArea = Infinity;
    for (const fence of this.fences) {
      const [w, s, e, n] = fence.bbox;
      const area = (e < w ? e + 360 - w : e - w) * (n - s);
      if (area >= bestArea || lat < s || lat > n) continue;
      // Rings are unwrapped over the antimeridian: try the point a world to each side too.
      if ([px, px - 1, px + 1].some((x) => insideRings(fence.rings, x, py))) { best = fence; bestArea = area; }
    }
    return best;
  }

  /** A click on the map while drawing: a corner, or the circle's centre and then its edge. */
  click(lon, lat) {
    const d = this.draft;
    if (!d) return false;
    if (d.kind === 'polygon') d.corners.push([lon, lat]);
    else if (!d.centre) d.centre = [lon, lat];
    else d.radius = distanceM(d.centre[1], d.centre[0], lat, lon);
    this.map.baseDirty = true;
    return true;
  }

  /** The draft as a geometry body (`geometry`, `radius_m`), or an error naming what is missing. */
  draftGeometry() {
    const d = this.draft;
    if (d.kind === 'polygon') {
      if (d.corners.length < 3) throw new Error('a polygon needs at least 3 corners');
      return { geometry: { type: 'Polygon', coordinates: [[...d.corners, d.corners[0]]] } };
    }
    if (!d.centre) throw new Error('click the map for the centre');
    if (!(d.radius > 0)) throw new Error('click the map again for a point on the edge, or type the radius');
    return { geometry: { type: 'Point', coordinates: d.centre }, radius_m: d.radius };
  }
}

/** Where an API error's field is shown: `name`, `limit`, `groups` or `geometry`. */
function slotOf(field) {
  if (!field) return null;
  if (field === 'name') return 'name';
  if (field === 'speed_limit_mps') return 'limit';
  if (field.startsWith('groups')) return 'groups';
  if (field.startsWith('geometry') || field === 'radius_m') return 'geometry';
  return null;
}

/** A labelled input with the slot for its error (aria-describedby points at it). */
function field(label, input, id) {
  const error = h('div', { class: 'field-error', id: `${id}-error`, role: 'status' });
  input.setAttribute('aria-describedby', error.id);
  return { row: h('label', {}, label, input, error), input, error };
}

/** Show an API error next to its field (or in `status` when it names none of them). The API
 * speaks m/s: a refused limit also says what the typed value was in m/s. */
function showError(err, slots, status) {
  const typed = slots.limit && Number(slots.limit.input.value);
  if (err.field === 'speed_limit_mps' && Number.isFinite(typed)) {
    err = { field: err.field, message: `${err.message} (${formatSpeed(toMps(typed))} is ${toMps(typed).toFixed(1)} m/s)` };
  }
  for (const slot of Object.values(slots)) { fill(slot.error); slot.input && slot.input.removeAttribute('aria-invalid'); }
  const slot = slots[slotOf(err.field)];
  if (slot) {
    fill(slot.error, err.field && err.field !== 'name' && err.field !== 'speed_limit_mps' ? `${err.field}: ${err.message}` : err.message);
    if (slot.input) { slot.input.setAttribute('aria-invalid', 'true'); slot.input.focus(); }
    fill(status, 'Not saved: see the field marked.');
  } else {
    fill(status, `Not saved: ${err.message}`);
  }
}

function limitValue(input) {
  const raw = input.value.trim();
  if (!raw) return null;
  const value = Number(raw);
  // An unreadable number goes to the API as such, so that its refusal names the field.
  return Number.isFinite(value) ? toMps(value) : raw;
}

/**
 * The Geofences page into `panel`. `groups` is the caller's groups (`[{id, name}]`),
 * `changed()` is called after a write (the caller reloads and renders again).
 */
export function renderGeofences(panel, layer, groups, changed) {
  const writer = session.can('geofences:write');
  const unit = SPEED_UNITS[speedUnit()].label;
  const status = h('div', { class: 'status', id: 'fence-status', role: 'status' });
  const detail = h('div', { id: 'fence-detail' });
  const form = h('div', { id: 'fence-draft' });
  const list = h('ul', { class: 'fences', id: 'fence-list', 'aria-label': 'Geofences' });

  const groupName = new Map(groups.map((g) => [g.id, g.name]));
  const groupChecks = (chosen) => h('fieldset', { class: 'groups', id: 'fence-groups', tabindex: -1 },
    h('legend', {}, 'Applies to (no group: every device)'),
    groups.length ? groups.map((g) => h('label', { class: 'inline' },
      h('input', { type: 'checkbox', value: g.id, checked: chosen.includes(g.id) }), ` ${g.name}`)) : h('span', { class: 'note' }, 'No groups'));

  function select(id) {
    layer.selected = id;
    const fence = layer.byId.get(id);
    if (fence) {
      const [w, s, e, n] = fence.bbox;
      layer.map.fit([w, s, e < w ? e + 360 : e, n], 17);
    }
    layer.map.baseDirty = true;
    renderList();
    renderDetail();
  }

  function renderList() {
    if (layer.state === 'error') fill(status, `Could not load geofences: ${layer.error}`);
    else if (layer.state === 'loading') fill(status, 'Loading geofences…');
    else fill(status, layer.fences.length ? `${layer.fences.length} geofence${layer.fences.length === 1 ? '' : 's'}` : 'No geofences yet.');
    fill(list, layer.fences.map((f) => h('li', {},
      h('button', { type: 'button', class: f.id === layer.selected ? 'fence selected' : 'fence', dataset: { fence: f.id },
        'aria-pressed': f.id === layer.selected ? 'true' : 'false', onclick: () => select(f.id) },
      h('span', { class: 'fence-name' }, f.name),
      h('span', { class: 'note' }, `${fenceKind(f)}${Number.isFinite(f.speed_limit_mps) ? ` · limit ${formatSpeed(f.speed_limit_mps)}` : ''}`)))));
  }

  function renderDetail() {
    const fence = layer.selected && layer.byId.get(layer.selected);
    if (!fence) { fill(detail); return; }
    const groupsText = fence.groups.length ? fence.groups.map((g) => groupName.get(g) || g).join(', ') : 'every device';
    const facts = h('dl', {},
      h('dt', {}, 'Name'), h('dd', {}, fence.name),
      h('dt', {}, 'Shape'), h('dd', {}, fenceKind(fence)),
      h('dt', {}, 'Speed limit'), h('dd', {}, Number.isFinite(fence.speed_limit_mps) ? formatSpeed(fence.speed_limit_mps) : 'none'),
      h('dt', {}, 'Applies to'), h('dd', {}, groupsText),
      fence.schedule ? [h('dt', {}, 'Schedule'), h('dd', {}, `${fence.schedule.windows.length} window(s)`)] : null);
    if (!writer) { fill(detail, h('h3', {}, fence.name), facts); return; }
    const name = field('Name', h('input', { id: 'fence-edit-name', value: fence.name, maxlength: 200, required: true }), 'fence-edit-name');
    const limit = field(`Speed limit (${unit}, empty: none)`, h('input', { id: 'fence-edit-limit', inputmode: 'decimal',
      value: Number.isFinite(fence.speed_limit_mps) ? String(fromMps(fence.speed_limit_mps)) : '' }), 'fence-edit-limit');
    const editStatus = h('div', { class: 'status', id: 'fence-edit-status', role: 'status' });
    const confirmBox = h('div', { id: 'fence-confirm' });
    const save = async (e) => {
      e.preventDefault();
      fill(editStatus, 'Saving…');
      // PUT replaces every field: the stored ones, with the new name and limit.
      const body = { name: name.input.value, geometry: fence.geometry, groups: fence.groups, speed_limit_mps: limitValue(limit.input) };
      if (fence.radius_m !== null && fence.radius_m !== undefined) body.radius_m = fence.radius_m;
      if (fence.schedule) body.schedule = fence.schedule;
      try {
        await json(`/v1/geofences/${fence.id}`, { method: 'PUT', body });
        fill(editStatus, 'Saved.');
        await changed(fence.id);
      } catch (err) {
        showError(err, { name, limit }, editStatus);
      }
    };
    const askDelete = () => fill(confirmBox,
      h('p', { class: 'warning', id: 'fence-confirm-text' }, `Delete the geofence “${fence.name}”? Its events stay; it raises no more.`),
      h('div', { class: 'row' },
        h('button', { type: 'button', class: 'danger', id: 'fence-delete-confirm', onclick: async () => {
          try {
            await call(`/v1/geofences/${fence.id}`, { method: 'DELETE' });
            layer.selected = null;
            await changed(null);
          } catch (err) {
            fill(editStatus, `Not deleted: ${err.message}`);
          }
        } }, 'Delete'),
        h('button', { type: 'button', class: 'secondary', id: 'fence-delete-cancel', onclick: () => { fill(confirmBox); $del.focus(); } }, 'Cancel')));
    const $del = h('button', { type: 'button', class: 'secondary', id: 'fence-delete', onclick: () => { askDelete(); document.getElementById('fence-delete-confirm').focus(); } }, 'Delete…');
    fill(detail, h('h3', {}, fence.name), facts,
      h('form', { class: 'stack', id: 'fence-edit', onsubmit: save, 'aria-label': 'Edit the geofence' },
        name.row, limit.row,
        h('div', { class: 'row' }, h('button', { type: 'submit', id: 'fence-update' }, 'Save changes'), $del)),
      editStatus, confirmBox);
  }

  function startDraft(kind) {
    layer.draft = kind === 'polygon' ? { kind, corners: [] } : { kind, centre: null, radius: 0 };
    layer.selected = null;
    layer.map.drawing = true;
    layer.map.baseDirty = true;
    renderList();
    renderDetail();
    renderDraft();
  }

  function endDraft() {
    layer.draft = null;
    layer.map.drawing = false;
    layer.map.baseDirty = true;
    fill(form);
    draftSync = null;
  }

  let draftSync = null;
  function renderDraft() {
    const d = layer.draft;
    const geometryError = h('div', { class: 'field-error', id: 'fence-geometry-error', role: 'status' });
    let shapeInputs;
    if (d.kind === 'polygon') {
      const corners = h('textarea', { id: 'fence-corners', rows: 5, 'aria-describedby': 'fence-geometry-error',
        placeholder: 'lat, lon (one corner a line)', oninput: () => {
          d.corners = corners.value.split('\n').map((line) => line.split(',').map(Number))
            .filter((p) => p.length === 2 && p.every(Number.isFinite)).map(([lat, lon]) => [lon, lat]);
          layer.map.baseDirty = true;
        } });
      draftSync = () => { corners.value = d.corners.map(([lon, lat]) => `${lat.toFixed(6)}, ${lon.toFixed(6)}`).join('\n'); };
      shapeInputs = [
        h('p', { class: 'note' }, 'Click the map at each corner (at least three), or type them below.'),
        h('label', {}, 'Corners', corners),
        h('div', { class: 'row' },
          h('button', { type: 'button', class: 'small secondary', id: 'fence-undo', onclick: () => { d.corners.pop(); draftSync(); layer.map.baseDirty = true; } }, 'Undo last corner'))];
    } else {
      const num = (id, label) => h('label', {}, label, h('input', { id, inputmode: 'decimal', 'aria-describedby': 'fence-geometry-error', oninput: () => {
        const lat = Number($('fence-lat').value), lon = Number($('fence-lon').value), radius = Number($('fence-radius').value);
        d.centre = $('fence-lat').value && $('fence-lon').value && Number.isFinite(lat) && Number.isFinite(lon) ? [lon, lat] : null;
        d.radius = Number.isFinite(radius) ? radius : 0;
        layer.map.baseDirty = true;
      } }));
      const $ = (id) => form.querySelector(`#${id}`);
      draftSync = () => {
        $('fence-lat').value = d.centre ? d.centre[1].toFixed(6) : '';
        $('fence-lon').value = d.centre ? d.centre[0].toFixed(6) : '';
        $('fence-radius').value = d.radius > 0 ? String(Math.round(d.radius)) : '';
      };
      shapeInputs = [
        h('p', { class: 'note' }, 'Click the map at the centre, then at a point on the edge; or type them below.'),
        h('div', { class: 'row' }, num('fence-lat', 'Centre lat'), num('fence-lon', 'Centre lon')),
        num('fence-radius', 'Radius (m)')];
    }
    const name = field('Name', h('input', { id: 'fence-name', maxlength: 200, required: true }), 'fence-name');
    const limit = field(`Speed limit (${unit}, optional)`, h('input', { id: 'fence-limit', inputmode: 'decimal' }), 'fence-limit');
    const groupBox = groupChecks([]);
    const groupsSlot = { input: groupBox, error: h('div', { class: 'field-error', id: 'fence-groups-error', role: 'status' }) };
    const draftStatus = h('div', { class: 'status', id: 'fence-draft-status', role: 'status' });
    const slots = { name, limit, groups: groupsSlot, geometry: { input: null, error: geometryError } };
    fill(form,
      h('form', { class: 'stack', id: 'fence-form', 'aria-label': `New ${d.kind}`,
        onkeydown: (e) => { if (e.key === 'Escape') { endDraft(); renderList(); } }, onsubmit: async (e) => {
        e.preventDefault();
        let shape;
        try { shape = layer.draftGeometry(); } catch (err) { showError({ field: 'geometry', message: err.message }, slots, draftStatus); return; }
        const body = { name: name.input.value, ...shape,
          groups: [...groupBox.querySelectorAll('input:checked')].map((c) => c.value) };
        const speed = limitValue(limit.input);
        if (speed !== null) body.speed_limit_mps = speed;
        fill(draftStatus, 'Saving…');
        try {
          const created = await json('/v1/geofences', { method: 'POST', body });
          endDraft();
          await changed(created.id);
        } catch (err) {
          showError(err, slots, draftStatus);
        }
      } },
      h('h3', {}, d.kind === 'polygon' ? 'New polygon' : 'New circle'),
      ...shapeInputs, geometryError,
      name.row, limit.row, groupBox, groupsSlot.error,
      h('div', { class: 'row' },
        h('button', { type: 'submit', id: 'fence-save' }, 'Create geofence'),
        h('button', { type: 'button', class: 'secondary', id: 'fence-cancel', onclick: () => { endDraft(); renderList(); } }, 'Cancel'))),
      draftStatus);
    draftSync();
    name.input.focus();
  }

  fill(panel,
    h('h2', {}, 'Geofences'),
    writer ? h('div', { class: 'row' },
      h('button', { type: 'button', class: 'small', id: 'fence-new-polygon', onclick: () => startDraft('polygon') }, 'Draw a polygon'),
      h('button', { type: 'button', class: 'small', id: 'fence-new-circle', onclick: () => startDraft('circle') }, 'Draw a circle')) : null,
    form, status, list, detail);
  renderList();
  renderDetail();
  if (layer.draft) renderDraft();
  return {
    /** A click on the map (lon, lat): a point of the draft, or else the fence there selected. */
    click(lon, lat) {
      if (layer.click(lon, lat)) {
        if (draftSync) draftSync();
        return;
      }
      const fence = layer.pick(lon, lat);
      layer.selected = fence ? fence.id : null;
      layer.map.baseDirty = true;
      renderList();
      renderDetail();
    },
    leave() { if (layer.draft) endDraft(); },
    /** The fences were read again: the list, and the details unless the user is in them. */
    refresh() {
      renderList();
      if (!detail.contains(document.activeElement)) renderDetail();
    },
  };
}
