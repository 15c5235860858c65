// A small canvas map: web-mercator projection, pan (drag), zoom (wheel, buttons, double click),
// the offline basemap (Natural Earth 110m land from the `world-atlas` npm package, decoded from
// TopoJSON here), a graticule, a scale bar and optional raster tiles (`tile_url` of /config.json).
// Two canvases: the base (tiles, land, graticule, the history layer) is redrawn only when the
// view or the history changes; the overlay (live devices) is redrawn at most once per animation
// frame, when something changed.

const TILE = 256;
const MAX_LAT = 85.0511;
const EARTH_M = 40075016.686;

/** Longitude/latitude to mercator units in [0, 1]. */
export function project(lon, lat) {
  const clamped = Math.max(-MAX_LAT, Math.min(MAX_LAT, lat));
  const s = Math.sin((clamped * Math.PI) / 180);
  return [(lon + 180) / 360, 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)];
}

export function unproject(x, y) {
  const lon = x * 360 - 180;
  const lat = (Math.atan(Math.sinh(Math.PI * (1 - 2 * y))) * 180) / Math.PI;
  return [lon, lat];
}

/**
 * Rings of a TopoJSON object as Float64Arrays of mercator x, y pairs. world-atlas keeps
 * spherical geometry: a ring that crosses the antimeridian (Fiji, Chukotka) is unwrapped into
 * one continuous ring and drawn twice (x and x - 1), and a ring around a pole (Antarctica) is
 * closed along the edge of the map.
 */
function topoRings(topo, name) {
  const [sx, sy] = topo.transform.scale;
  const [tx, ty] = topo.transform.translate;
  const arcs = topo.arcs.map((arc) => {
    let x = 0, y = 0;
    return arc.map(([dx, dy]) => { x += dx; y += dy; return [x * sx + tx, y * sy + ty]; });
  });
  const rings = [];
  const ring = (indices) => {
    const points = [];
    for (const i of indices) {
      const arc = i < 0 ? arcs[~i].slice().reverse() : arcs[i];
      points.push(...(points.length ? arc.slice(1) : arc));
    }
    let offset = 0, min = Infinity, max = -Infinity, latSum = 0;
    const unwrapped = points.map(([lon, lat], k) => {
      if (k > 0) {
        const previous = points[k - 1][0];
        if (lon - previous > 180) offset -= 360;
        else if (previous - lon > 180) offset += 360;
      }
      const l = lon + offset;
      min = Math.min(min, l); max = Math.max(max, l);
      latSum += lat;
      return [l, lat];
    });
    if (offset !== 0) {
      // Around a pole: close along the map's edge on that pole's side.
      const pole = latSum < 0 ? -90 : 90;
      const last = unwrapped[unwrapped.length - 1][0];
      unwrapped.push([last, pole], [unwrapped[0][0], pole]);
    }
    const copies = max > 180 ? [0, -360] : min < -180 ? [0, 360] : [0];
    for (const shift of copies) {
      rings.push(Float64Array.from(unwrapped.flatMap(([lon, lat]) => project(lon + shift, lat))));
    }
  };
  const geometry = (g) => {
    if (g.type === 'GeometryCollection') g.geometries.forEach(geometry);
    else if (g.type === 'Polygon') g.arcs.forEach(ring);
    else if (g.type === 'MultiPolygon') g.arcs.forEach((p) => p.forEach(ring));
  };
  geometry(topo.objects[name]);
  return rings;
}

export class MapView {
  constructor(container, { tileUrl } = {}) {
    this.container = container;
    this.base = container.appendChild(document.createElement('canvas'));
    this.overlay = container.appendChild(document.createElement('canvas'));
    this.scale = container.appendChild(document.createElement('div'));
    this.scale.className = 'scalebar';
    this.base.className = 'map-base';
    this.overlay.className = 'map-overlay';
    this.cx = 0.5; this.cy = 0.42; this.zoom = 0;
    this.land = [];
    this.tileUrl = tileUrl || null;
    this.tiles = new Map();
    this.baseLayers = [];   // functions(ctx, map) drawn on the base canvas, in order
    this.overlayLayers = []; // functions(ctx, map, now) drawn on the overlay canvas
    this.baseDirty = true;
    this.overlayDirty = true;
    this.frames = 0;
    this.lastFrameMs = 0;
    this.listeners = new Set();
    this.resize();
    new ResizeObserver(() => this.resize()).observe(container);
    this.bindInput();
    const loop = () => { this.frame(); requestAnimationFrame(loop); };
    requestAnimationFrame(loop);
  }

  async loadBasemap(url) {
    try {
      const response = await fetch(url);
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      this.land = topoRings(await response.json(), 'land');
      this.invalidate();
    } catch (e) {
      console.warn('basemap unavailable', e);
    }
  }

  resize() {
    const ratio = window.devicePixelRatio || 1;
    this.width = this.container.clientWidth;
    this.height = this.container.clientHeight;
    for (const c of [this.base, this.overlay]) {
      c.width = Math.max(1, Math.round(this.width * ratio));
      c.height = Math.max(1, Math.round(this.height * ratio));
      c.getContext('2d').setTransform(ratio, 0, 0, ratio, 0, 0);
    }
    this.clamp();
    this.invalidate();
  }

  /** Pixels per mercator unit at the current zoom. */
  get worldPx() { return TILE * 2 ** this.zoom; }

  /** Mercator units to screen pixels. */
  toScreenX(x) { return (x - this.cx) * this.worldPx + this.width / 2; }
  toScreenY(y) { return (y - this.cy) * this.worldPx + this.height / 2; }
  toScreen(lon, lat) { const [x, y] = project(lon, lat); return [this.toScreenX(x), this.toScreenY(y)]; }
  fromScreen(px, py) {
    return unproject(this.cx + (px - this.width / 2) / this.worldPx, this.cy + (py - this.height / 2) / this.worldPx);
  }

  /** Metres per screen pixel at the centre of the view. */
  metresPerPixel() {
    const [, lat] = unproject(this.cx, this.cy);
    return (EARTH_M * Math.cos((lat * Math.PI) / 180)) / this.worldPx;
  }

  /** The visible box, [minLon, minLat, maxLon, maxLat]. */
  bounds() {
    const [w, n] = this.fromScreen(0, 0);
    const [e, s] = this.fromScreen(this.width, this.height);
    return [Math.max(-180, w), Math.max(-90, s), Math.min(180, e), Math.min(90, n)];
  }

  setView(lon, lat, zoom) {
    [this.cx, this.cy] = project(lon, lat);
    if (zoom !== undefined) this.zoom = zoom;
    this.clamp();
    this.invalidate();
  }

  /** Fit [minLon, minLat, maxLon, maxLat] with some margin. */
  fit([w, s, e, n], maxZoom = 17) {
    const [x0, y1] = project(w, s);
    const [x1, y0] = project(e, n);
    const span = Math.max((x1 - x0) / (this.width * 0.8), (y1 - y0) / (this.height * 0.8), 1e-9);
    this.zoom = Math.min(maxZoom, Math.log2(1 / span / TILE));
    this.cx = (x0 + x1) / 2; this.cy = (y0 + y1) / 2;
    this.clamp();
    this.invalidate();
  }

  clamp() {
    const minZoom = Math.log2(this.width / TILE);
    this.zoom = Math.max(Math.max(0, minZoom), Math.min(19, this.zoom));
    this.cx = Math.max(0, Math.min(1, this.cx));
    this.cy = Math.max(0, Math.min(1, this.cy));
  }

  zoomAt(px, py, delta) {
    const [lon, lat] = this.fromScreen(px, py);
    this.zoom += delta;
    this.clamp();
    // Keep the point under the cursor in place.
    const [x, y] = project(lon, lat);
    this.cx = x - (px - this.width / 2) / this.worldPx;
    this.cy = y - (py - this.height / 2) / this.worldPx;
    this.clamp();
    this.invalidate();
  }

  bindInput() {
    const target = this.overlay;
    let drag = null;
    target.addEventListener('pointerdown', (e) => {
      drag = { x: e.clientX, y: e.clientY, cx: this.cx, cy: this.cy, moved: false };
      target.setPointerCapture(e.pointerId);
    });
    target.addEventListener('pointermove', (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      this.cx = drag.cx - dx / this.worldPx;
      this.cy = drag.cy - dy / this.worldPx;
      this.clamp();
      this.invalidate();
    });
    target.addEventListener('pointerup', (e) => {
      const click = drag && !drag.moved;
      drag = null;
      if (click) {
        const r = target.getBoundingClientRect();
        for (const f of this.listeners) f({ type: 'click', x: e.clientX - r.left, y: e.clientY - r.top });
      }
    });
    target.addEventListener('wheel', (e) => {
      e.preventDefault();
      const r = target.getBoundingClientRect();
      this.zoomAt(e.clientX - r.left, e.clientY - r.top, -Math.sign(e.deltaY) * 0.5);
    }, { passive: false });
    target.addEventListener('dblclick', (e) => {
      // Clicks place points while drawing: two quick ones must not zoom.
      if (this.drawing) return;
      const r = target.getBoundingClientRect();
      this.zoomAt(e.clientX - r.left, e.clientY - r.top, 1);
    });
  }

  on(f) { this.listeners.add(f); }

  /** Whether clicks draw (a geofence): no double-click zoom, a crosshair cursor. */
  get drawing() { return this.overlay.classList.contains('drawing'); }
  set drawing(on) { this.overlay.classList.toggle('drawing', Boolean(on)); }

  invalidate() {
    this.baseDirty = true;
    this.overlayDirty = true;
    for (const f of this.listeners) f({ type: 'view' });
  }

  frame() {
    const started = performance.now();
    if (this.baseDirty) {
      this.baseDirty = false;
      this.drawBase();
      // First load, measured: navigation start to the basemap on screen (docs/dashboard.md).
      if (this.land.length && !this.basemapShown) { this.basemapShown = true; performance.mark('gps:basemap-drawn'); }
    }
    if (this.overlayDirty) {
      this.overlayDirty = false;
      const ctx = this.overlay.getContext('2d');
      ctx.clearRect(0, 0, this.width, this.height);
      for (const layer of this.overlayLayers) layer(ctx, this, Date.now());
      this.frames += 1;
      this.lastFrameMs = performance.now() - started;
    }
  }

  drawBase() {
    const ctx = this.base.getContext('2d');
    ctx.fillStyle = '#dfe9f3';
    ctx.fillRect(0, 0, this.width, this.height);
    const tiles = this.tileUrl && this.drawTiles(ctx);
    this.drawLand(ctx, !tiles);
    this.drawGraticule(ctx);
    for (const layer of this.baseLayers) layer(ctx, this);
    this.drawScale();
  }

  drawLand(ctx, filled) {
    ctx.beginPath();
    const k = this.worldPx, ox = this.width / 2 - this.cx * k, oy = this.height / 2 - this.cy * k;
    for (const ring of this.land) {
      ctx.moveTo(ring[0] * k + ox, ring[1] * k + oy);
      for (let i = 2; i < ring.length; i += 2) ctx.lineTo(ring[i] * k + ox, ring[i + 1] * k + oy);
      ctx.closePath();
    }
    if (filled) { ctx.fillStyle = '#f6f3ea'; ctx.fill(); }
    ctx.strokeStyle = '#9fb0a0';
    ctx.lineWidth = 0.8;
    ctx.stroke();
  }

  drawGraticule(ctx) {
    const [w, s, e, n] = this.bounds();
    const span = Math.max(e - w, n - s);
    const step = [90, 30, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001].find((d) => span / d >= 3) || 0.001;
    ctx.beginPath();
    for (let lon = Math.ceil(w / step) * step; lon <= e; lon += step) {
      const x = this.toScreen(lon, 0)[0];
      ctx.moveTo(x, 0); ctx.lineTo(x, this.height);
    }
    for (let lat = Math.ceil(s / step) * step; lat <= n; lat += step) {
      const y = this.toScreen(0, lat)[1];
      ctx.moveTo(0, y); ctx.lineTo(this.width, y);
    }
    ctx.strokeStyle = 'rgba(60, 90, 130, 0.18)';
    ctx.lineWidth = 1;
    ctx.stroke();
  }

  drawTiles(ctx) {
    const z = Math.max(0, Math.min(19, Math.round(this.zoom)));
    const n = 2 ** z, size = this.worldPx / n;
    const x0 = Math.floor((this.cx - this.width / 2 / this.worldPx) * n);
    const x1 = Math.floor((this.cx + this.width / 2 / this.worldPx) * n);
    const y0 = Math.max(0, Math.floor((this.cy - this.height / 2 / this.worldPx) * n));
    const y1 = Math.min(n - 1, Math.floor((this.cy + this.height / 2 / this.worldPx) * n));
    let any = false;
    for (let ty = y0; ty <= y1; ty++) {
      for (let tx = x0; tx <= x1; tx++) {
        if (tx < 0 || tx >= n) continue;
        const key = `${z}/${tx}/${ty}`;
        let img = this.tiles.get(key);
        if (!img) {
          if (this.tiles.size > 400) this.tiles.delete(this.tiles.keys().next().value);
          img = new Image();
          img.onload = () => { this.baseDirty = true; };
          img.src = this.tileUrl.replace('{z}', z).replace('{x}', tx).replace('{y}', ty);
          this.tiles.set(key, img);
        }
        if (img.complete && img.naturalWidth) {
          any = true;
          ctx.drawImage(img, this.toScreenX(tx / n), this.toScreenY(ty / n), size + 0.5, size + 0.5);
        }
      }
    }
    return any;
  }

  drawScale() {
    const mpp = this.metresPerPixel();
    const target = mpp * 100;
    const p = 10 ** Math.floor(Math.log10(target));
    const nice = [5, 2, 1].map((m) => m * p).find((d) => d <= target) || p;
    this.scale.style.width = `${Math.round(nice / mpp)}px`;
    this.scale.textContent = nice >= 1000 ? `${nice / 1000} km` : `${nice} m`;
  }
}
