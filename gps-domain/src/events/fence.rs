//! Geofence geometry, pure: a GeoJSON Polygon, MultiPolygon or Point with a radius validated
//! into a [`FenceShape`] (closed rings, at least four positions, no self-intersection, a vertex
//! cap, size limits, WGS84 ranges, the antimeridian), point containment, distance to the
//! boundary (the hysteresis band of [`super::DeviceEventState::apply`]), and a fence's weekly
//! [`Schedule`].
//!
//! Edges are straight lines in longitude/latitude, as RFC 7946 §3.1.1 reads them. An edge
//! always takes the short way round: from 170° to -170° it crosses the antimeridian (20°), so a
//! fence over the date line can be written either way (one ring with longitudes of both signs,
//! or a MultiPolygon split at ±180° as RFC 7946 §3.1.9 recommends). An edge spanning exactly
//! 180° of longitude is ambiguous and refused. Inside the shape each ring's longitudes are
//! *unwrapped* (continuous, possibly beyond ±180°); a point is tested at its longitude and at
//! ±360° from it.

use crate::fix::EpochMillis;
use crate::geo::{haversine_m, BBox, EARTH_RADIUS_M};
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{RTree, AABB};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most positions a fence may have, over all its rings (a bigger shape costs every fix near it).
pub const MAX_VERTICES: usize = 10_000;
/// Most polygons of a MultiPolygon.
pub const MAX_POLYGONS: usize = 100;
/// Most rings of one polygon (its exterior and holes).
pub const MAX_RINGS: usize = 100;
/// Longest longitude span of a fence's bounding box, degrees (half the world: beyond it "the
/// short way round" stops meaning anything).
pub const MAX_SPAN_LON_DEG: f64 = 180.0;
/// Longest latitude span of a fence's bounding box, degrees.
pub const MAX_SPAN_LAT_DEG: f64 = 90.0;
/// Smallest circle radius, metres.
pub const MIN_RADIUS_M: f64 = 1.0;
/// Largest circle radius, metres.
pub const MAX_RADIUS_M: f64 = 1_000_000.0;
/// Most windows of a schedule.
pub const MAX_SCHEDULE_WINDOWS: usize = 50;

/// Metres per degree of latitude on the mean sphere.
const M_PER_DEG: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;

/// Why a geometry is not a fence: the field (a path such as `geometry.coordinates[0][3]`) and
/// the reason, for a `400` that names both.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FenceError {
    /// The offending part of the request body.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> FenceError {
    FenceError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A validated fence shape with its bounding box.
#[derive(Debug, Clone, PartialEq)]
pub struct FenceShape {
    kind: ShapeKind,
    bbox: BBox,
    /// The shorter side of the bounding box (circles: the diameter), metres: bounds the
    /// hysteresis band so that a small fence can still be entered.
    min_extent_m: f64,
}

#[derive(Debug, Clone, PartialEq)]
enum ShapeKind {
    Polygons(Vec<Polygon>),
    Circle { lat: f64, lon: f64, radius_m: f64 },
}

/// One polygon: rings of `[x, y]` = `[unwrapped longitude, latitude]`, exterior first, each
/// closed (last position = first), holes shifted by whole turns next to the exterior.
#[derive(Debug, Clone, PartialEq)]
struct Polygon {
    rings: Vec<Vec<[f64; 2]>>,
    min_x: f64,
    max_x: f64,
}

impl FenceShape {
    /// Parse and validate a GeoJSON geometry object (`Polygon`, `MultiPolygon`, or `Point`
    /// with `radius_m`). Every error names its field.
    pub fn from_geojson(geometry: &Value, radius_m: Option<f64>) -> Result<Self, FenceError> {
        let object = geometry
            .as_object()
            .ok_or_else(|| err("geometry", "must be a GeoJSON geometry object"))?;
        let kind = object
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| err("geometry.type", "must be Polygon, MultiPolygon or Point"))?;
        let coordinates = object
            .get("coordinates")
            .ok_or_else(|| err("geometry.coordinates", "is required"))?;
        match (kind, radius_m) {
            ("Point", Some(radius_m)) => Self::circle(coordinates, radius_m),
            ("Point", None) => Err(err("radius_m", "a Point fence needs a radius in metres")),
            ("Polygon" | "MultiPolygon", Some(_)) => {
                Err(err("radius_m", "only a Point fence has a radius"))
            }
            ("Polygon", None) => {
                let polygon = parse_polygon(coordinates, "geometry.coordinates", &mut 0)?;
                Self::polygons(vec![polygon])
            }
            ("MultiPolygon", None) => {
                let parts = coordinates
                    .as_array()
                    .ok_or_else(|| err("geometry.coordinates", "must be an array of polygons"))?;
                if parts.is_empty() || parts.len() > MAX_POLYGONS {
                    return Err(err(
                        "geometry.coordinates",
                        format!("must hold 1 to {MAX_POLYGONS} polygons"),
                    ));
                }
                let mut vertices = 0;
                let polygons = parts
                    .iter()
                    .enumerate()
                    .map(|(i, part)| {
                        parse_polygon(part, &format!("geometry.coordinates[{i}]"), &mut vertices)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Self::polygons(polygons)
            }
            _ => Err(err(
                "geometry.type",
                "must be Polygon, MultiPolygon or Point",
            )),
        }
    }

    fn circle(coordinates: &Value, radius_m: f64) -> Result<Self, FenceError> {
        let [lon, lat] = parse_position(coordinates, "geometry.coordinates")?;
        if !radius_m.is_finite() || !(MIN_RADIUS_M..=MAX_RADIUS_M).contains(&radius_m) {
            return Err(err(
                "radius_m",
                format!("must be between {MIN_RADIUS_M} and {MAX_RADIUS_M} metres"),
            ));
        }
        let dlat = radius_m / M_PER_DEG;
        if lat.abs() + dlat >= 89.0 {
            return Err(err(
                "radius_m",
                "the circle reaches within 1° of a pole; draw a polygon instead",
            ));
        }
        // The widest longitude of the circle is at its centre's latitude band's poleward edge.
        let dlon = dlat / (lat.abs() + dlat).to_radians().cos();
        let bbox = wrapped_bbox(lon - dlon, lat - dlat, lon + dlon, lat + dlat)?;
        Ok(Self {
            kind: ShapeKind::Circle { lat, lon, radius_m },
            bbox,
            min_extent_m: 2.0 * radius_m,
        })
    }

    fn polygons(mut polygons: Vec<Polygon>) -> Result<Self, FenceError> {
        // Each part centred into [-180, 180); the bounding arc is the complement of the widest
        // longitude gap between the parts.
        for p in &mut polygons {
            let turns = ((p.min_x + p.max_x) / 2.0 / 360.0).round();
            if turns != 0.0 {
                p.shift(-turns * 360.0);
            }
        }
        let (min_x, max_x) = covering_arc(polygons.iter().map(|p| (p.min_x, p.max_x)).collect());
        let (min_y, max_y) = polygons
            .iter()
            .flat_map(|p| p.rings[0].iter())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v[1]), hi.max(v[1]))
            });
        if max_x - min_x > MAX_SPAN_LON_DEG || max_y - min_y > MAX_SPAN_LAT_DEG {
            return Err(err(
                "geometry",
                format!(
                    "a fence spans at most {MAX_SPAN_LON_DEG}° of longitude and {MAX_SPAN_LAT_DEG}° of latitude"
                ),
            ));
        }
        let bbox = wrapped_bbox(min_x, min_y, max_x, max_y)?;
        let mid_lat = ((min_y + max_y) / 2.0).to_radians().cos();
        let min_extent_m = ((max_y - min_y) * M_PER_DEG).min((max_x - min_x) * M_PER_DEG * mid_lat);
        Ok(Self {
            kind: ShapeKind::Polygons(polygons),
            bbox,
            min_extent_m,
        })
    }

    /// The bounding box (crossing the antimeridian when `min_lon > max_lon`).
    pub fn bbox(&self) -> BBox {
        self.bbox
    }

    /// Whether the point lies inside (a polygon's boundary counts as inside only where the
    /// even-odd ray test says so; the hysteresis band makes the boundary itself irrelevant).
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        if !self.bbox.contains(lat, lon) {
            return false;
        }
        match &self.kind {
            ShapeKind::Circle {
                lat: clat,
                lon: clon,
                radius_m,
            } => haversine_m(*clat, *clon, lat, lon) <= *radius_m,
            ShapeKind::Polygons(polygons) => polygons.iter().any(|p| p.contains(lat, lon)),
        }
    }

    /// Whether the point lies within `margin_m` metres of the boundary (either side).
    pub fn near_boundary(&self, lat: f64, lon: f64, margin_m: f64) -> bool {
        match &self.kind {
            ShapeKind::Circle {
                lat: clat,
                lon: clon,
                radius_m,
            } => (haversine_m(*clat, *clon, lat, lon) - radius_m).abs() < margin_m,
            ShapeKind::Polygons(polygons) => {
                polygons.iter().any(|p| p.near_boundary(lat, lon, margin_m))
            }
        }
    }

    /// The hysteresis band of this fence: `margin_m`, but at most a quarter of the fence's
    /// smaller extent, so that a fence smaller than the band can still be entered.
    pub fn band_m(&self, margin_m: f64) -> f64 {
        margin_m.min(self.min_extent_m / 4.0).max(0.0)
    }

    /// Positions over all rings (each ring's closing position counted).
    pub fn vertex_count(&self) -> usize {
        match &self.kind {
            ShapeKind::Circle { .. } => 1,
            ShapeKind::Polygons(ps) => ps.iter().flat_map(|p| &p.rings).map(Vec::len).sum(),
        }
    }
}

/// A bbox from unwrapped edges (`min_x` may be below -180 or `max_x` above 180 by less than a
/// turn), normalised into a [`BBox`] that crosses the antimeridian when it has to.
fn wrapped_bbox(min_x: f64, min_y: f64, max_x: f64, max_y: f64) -> Result<BBox, FenceError> {
    let normalise = |x: f64| {
        if x > 180.0 {
            x - 360.0
        } else if x < -180.0 {
            x + 360.0
        } else {
            x
        }
    };
    let (west, east) = if max_x - min_x >= 360.0 {
        (-180.0, 180.0)
    } else {
        (normalise(min_x), normalise(max_x))
    };
    BBox::new(west, min_y, east, max_y).map_err(|e| err("geometry", e.to_string()))
}

/// The shortest longitude arc covering every `(min, max)` interval (each within one turn of
/// [-180, 180)), as unwrapped `(start, end)` with `end - start <= 360`.
fn covering_arc(mut intervals: Vec<(f64, f64)>) -> (f64, f64) {
    // Bring each interval's start into [-180, 180) and sort by start.
    for iv in &mut intervals {
        let turns = ((iv.0 + 180.0) / 360.0).floor();
        iv.0 -= turns * 360.0;
        iv.1 -= turns * 360.0;
    }
    intervals.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Merge, then the widest gap between consecutive merged intervals (circularly) is the
    // part of the world the arc leaves out.
    let mut merged: Vec<(f64, f64)> = Vec::new();
    for (s, e) in intervals {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let n = merged.len();
    let mut best = (0.0, merged[0].0, merged[n - 1].1);
    for i in 0..n {
        let end = merged[i].1;
        let next_start = if i + 1 < n {
            merged[i + 1].0
        } else {
            merged[0].0 + 360.0
        };
        let gap = next_start - end;
        if gap > best.0 {
            // The arc starts after the gap and ends where the gap starts, one turn later.
            let start = if i + 1 < n {
                merged[i + 1].0
            } else {
                merged[0].0
            };
            let finish = if i + 1 < n { end + 360.0 } else { end };
            best = (gap, start, finish);
        }
    }
    if best.0 <= 0.0 {
        return (merged[0].0, merged[0].0 + 360.0);
    }
    (best.1, best.2)
}

fn parse_position(value: &Value, field: &str) -> Result<[f64; 2], FenceError> {
    let items = value
        .as_array()
        .filter(|a| a.len() == 2 || a.len() == 3)
        .ok_or_else(|| err(field, "a position is [longitude, latitude]"))?;
    let number = |v: &Value| v.as_f64().filter(|n| n.is_finite());
    let (Some(lon), Some(lat)) = (number(&items[0]), number(&items[1])) else {
        return Err(err(field, "longitude and latitude must be finite numbers"));
    };
    if !(-180.0..=180.0).contains(&lon) {
        return Err(err(field, "longitude must lie in [-180, 180]"));
    }
    if !(-90.0..=90.0).contains(&lat) {
        return Err(err(field, "latitude must lie in [-90, 90]"));
    }
    Ok([lon, lat])
}

/// A polygon's rings, validated; `vertices` counts positions across a whole MultiPolygon.
fn parse_polygon(value: &Value, field: &str, vertices: &mut usize) -> Result<Polygon, FenceError> {
    let rings = value
        .as_array()
        .ok_or_else(|| err(field, "a polygon is an array of linear rings"))?;
    if rings.is_empty() || rings.len() > MAX_RINGS {
        return Err(err(
            field,
            format!("a polygon has 1 to {MAX_RINGS} rings (exterior first, then holes)"),
        ));
    }
    let mut parsed = Vec::with_capacity(rings.len());
    for (r, ring) in rings.iter().enumerate() {
        let ring_field = format!("{field}[{r}]");
        let positions = ring
            .as_array()
            .ok_or_else(|| err(&ring_field, "a linear ring is an array of positions"))?;
        *vertices += positions.len();
        if *vertices > MAX_VERTICES {
            return Err(err(
                "geometry.coordinates",
                format!("a fence has at most {MAX_VERTICES} positions"),
            ));
        }
        parsed.push(parse_ring(positions, &ring_field)?);
    }
    let exterior_x = (
        parsed[0].iter().map(|v| v[0]).fold(f64::INFINITY, f64::min),
        parsed[0]
            .iter()
            .map(|v| v[0])
            .fold(f64::NEG_INFINITY, f64::max),
    );
    // A hole written with the other sign of longitude sits one turn away: bring it next to the
    // exterior.
    for hole in parsed.iter_mut().skip(1) {
        let centre = (exterior_x.0 + exterior_x.1) / 2.0;
        let turns = ((hole[0][0] - centre) / 360.0).round();
        if turns != 0.0 {
            hole.iter_mut().for_each(|v| v[0] -= turns * 360.0);
        }
    }
    let polygon = Polygon {
        rings: parsed,
        min_x: exterior_x.0,
        max_x: exterior_x.1,
    };
    polygon.check_simple(field)?;
    for (r, ring) in polygon.rings.iter().enumerate() {
        // A simple ring without area is a line walked there and back.
        let twice_area: f64 = ring
            .windows(2)
            .map(|w| w[0][0] * w[1][1] - w[1][0] * w[0][1])
            .sum();
        if twice_area == 0.0 {
            return Err(err(format!("{field}[{r}]"), "the ring has no area"));
        }
    }
    for (r, hole) in polygon.rings.iter().enumerate().skip(1) {
        if !ring_contains(&polygon.rings[0], hole[0][0], hole[0][1]) {
            return Err(err(
                format!("{field}[{r}]"),
                "a hole must lie inside the exterior ring",
            ));
        }
    }
    Ok(polygon)
}

/// One ring: positions parsed, closed, longitudes unwrapped, repeated positions dropped, at
/// least three distinct positions.
fn parse_ring(positions: &[Value], field: &str) -> Result<Vec<[f64; 2]>, FenceError> {
    if positions.len() < 4 {
        return Err(err(
            field,
            "a linear ring needs at least 4 positions (the last repeating the first)",
        ));
    }
    let raw = positions
        .iter()
        .enumerate()
        .map(|(i, p)| parse_position(p, &format!("{field}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    if raw[0] != raw[raw.len() - 1] {
        return Err(err(
            field,
            "the ring is not closed: its last position must repeat the first",
        ));
    }
    let mut ring: Vec<[f64; 2]> = Vec::with_capacity(raw.len());
    for (i, [lon, lat]) in raw.into_iter().enumerate() {
        let x = match ring.last() {
            None => lon,
            Some(prev) => {
                let mut step = lon - prev[0];
                // The short way round; modulo 360 so an unwrapped previous x works too.
                step = (step + 180.0).rem_euclid(360.0) - 180.0;
                if step == -180.0 {
                    return Err(err(
                        format!("{field}[{i}]"),
                        "an edge spans exactly 180° of longitude; add a position on it",
                    ));
                }
                // Whole turns added to the given longitude, so that it stays exact.
                lon + 360.0 * ((prev[0] + step - lon) / 360.0).round()
            }
        };
        if ring.last() != Some(&[x, lat]) {
            ring.push([x, lat]);
        }
    }
    if ring[0][0] != ring[ring.len() - 1][0] {
        // Unwrapping ended a turn away from the start: the ring goes round a pole.
        return Err(err(
            field,
            "the ring goes round the world (encloses a pole); fences cannot",
        ));
    }
    if ring.len() < 4 {
        return Err(err(
            field,
            "a linear ring needs at least 3 distinct positions",
        ));
    }
    Ok(ring)
}

impl Polygon {
    fn shift(&mut self, dx: f64) {
        for ring in &mut self.rings {
            ring.iter_mut().for_each(|v| v[0] += dx);
        }
        self.min_x += dx;
        self.max_x += dx;
    }

    /// The unwrapped x at which to test `lon`: itself or a turn away, inside `[min_x, max_x]`.
    fn x_of(&self, lon: f64) -> Option<f64> {
        [lon, lon + 360.0, lon - 360.0]
            .into_iter()
            .find(|x| (self.min_x..=self.max_x).contains(x))
    }

    fn contains(&self, lat: f64, lon: f64) -> bool {
        let Some(x) = self.x_of(lon) else {
            return false;
        };
        // Even-odd over all rings: a hole flips the exterior's answer.
        self.rings
            .iter()
            .filter(|ring| ring_contains(ring, x, lat))
            .count()
            % 2
            == 1
    }

    fn near_boundary(&self, lat: f64, lon: f64, margin_m: f64) -> bool {
        let dlat = margin_m / M_PER_DEG;
        let cos = lat.to_radians().cos().max(1e-6);
        let dlon = dlat / cos;
        let xs = [lon, lon + 360.0, lon - 360.0];
        let Some(x) = xs
            .into_iter()
            .find(|x| (self.min_x - dlon..=self.max_x + dlon).contains(x))
        else {
            return false;
        };
        self.rings.iter().any(|ring| {
            ring.windows(2).any(|w| {
                let (a, b) = (w[0], w[1]);
                // Cheap rejection: the segment's box grown by the margin misses the point.
                if x < a[0].min(b[0]) - dlon
                    || x > a[0].max(b[0]) + dlon
                    || lat < a[1].min(b[1]) - dlat
                    || lat > a[1].max(b[1]) + dlat
                {
                    return false;
                }
                // Distance in a local plane around the point (metres).
                let to_local =
                    |v: [f64; 2]| [(v[0] - x) * M_PER_DEG * cos, (v[1] - lat) * M_PER_DEG];
                segment_distance_to_origin(to_local(a), to_local(b)) < margin_m
            })
        })
    }

    /// No ring crosses or touches itself or another ring of the polygon (adjacent edges share
    /// only their common position). Segments are indexed in an R-tree, so the check costs about
    /// `n log n` for `n` positions.
    fn check_simple(&self, field: &str) -> Result<(), FenceError> {
        type Seg = GeomWithData<Rectangle<[f64; 2]>, (usize, usize)>;
        let segments: Vec<Seg> = self
            .rings
            .iter()
            .enumerate()
            .flat_map(|(r, ring)| {
                ring.windows(2).enumerate().map(move |(i, w)| {
                    GeomWithData::new(Rectangle::from_corners(w[0], w[1]), (r, i))
                })
            })
            .collect();
        let tree = RTree::bulk_load(segments.clone());
        for seg in &segments {
            let (r, i) = seg.data;
            let ring = &self.rings[r];
            let (a, b) = (ring[i], ring[i + 1]);
            let edges = ring.len() - 1;
            let envelope = AABB::from_corners(
                [a[0].min(b[0]), a[1].min(b[1])],
                [a[0].max(b[0]), a[1].max(b[1])],
            );
            for other in tree.locate_in_envelope_intersecting(&envelope) {
                let (r2, j) = other.data;
                if (r2, j) <= (r, i) {
                    continue;
                }
                let other_ring = &self.rings[r2];
                let (c, d) = (other_ring[j], other_ring[j + 1]);
                let adjacent = r == r2 && (j == i + 1 || (i == 0 && j == edges - 1));
                let bad = if adjacent {
                    // They share one position; they must not fold back over each other.
                    let (shared, p, q) = if j == i + 1 { (b, a, d) } else { (a, b, c) };
                    folds_back(shared, p, q)
                } else {
                    segments_touch(a, b, c, d)
                };
                if bad {
                    let what = if r == r2 {
                        format!("ring {r} intersects itself")
                    } else {
                        format!("rings {r} and {r2} intersect")
                    };
                    return Err(err(
                        format!("{field}[{r}]"),
                        format!(
                            "self-intersection: {what} near [{}, {}]",
                            wrap_lon(a[0]),
                            a[1]
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn wrap_lon(x: f64) -> f64 {
    (x + 180.0).rem_euclid(360.0) - 180.0
}

/// Even-odd ray test of `(x, y)` against a closed ring.
fn ring_contains(ring: &[[f64; 2]], x: f64, y: f64) -> bool {
    let mut inside = false;
    for w in ring.windows(2) {
        let ([xi, yi], [xj, yj]) = (w[0], w[1]);
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
    }
    inside
}

fn cross(o: [f64; 2], a: [f64; 2], b: [f64; 2]) -> f64 {
    (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
}

fn on_segment(p: [f64; 2], q: [f64; 2], r: [f64; 2]) -> bool {
    // r collinear with p-q: within its box.
    r[0] >= p[0].min(q[0])
        && r[0] <= p[0].max(q[0])
        && r[1] >= p[1].min(q[1])
        && r[1] <= p[1].max(q[1])
}

/// Whether segments `ab` and `cd` share any point (crossing, touching or overlapping).
fn segments_touch(a: [f64; 2], b: [f64; 2], c: [f64; 2], d: [f64; 2]) -> bool {
    let (d1, d2) = (cross(c, d, a), cross(c, d, b));
    let (d3, d4) = (cross(a, b, c), cross(a, b, d));
    if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0))
    {
        return true;
    }
    (d1 == 0.0 && on_segment(c, d, a))
        || (d2 == 0.0 && on_segment(c, d, b))
        || (d3 == 0.0 && on_segment(a, b, c))
        || (d4 == 0.0 && on_segment(a, b, d))
}

/// Whether edges `shared→p` and `shared→q` overlap (collinear, same direction from `shared`).
fn folds_back(shared: [f64; 2], p: [f64; 2], q: [f64; 2]) -> bool {
    let u = [p[0] - shared[0], p[1] - shared[1]];
    let v = [q[0] - shared[0], q[1] - shared[1]];
    u[0] * v[1] - u[1] * v[0] == 0.0 && u[0] * v[0] + u[1] * v[1] > 0.0
}

/// Distance from the origin to segment `ab` (plane).
fn segment_distance_to_origin(a: [f64; 2], b: [f64; 2]) -> f64 {
    let ab = [b[0] - a[0], b[1] - a[1]];
    let len2 = ab[0] * ab[0] + ab[1] * ab[1];
    let t = if len2 == 0.0 {
        0.0
    } else {
        (-(a[0] * ab[0] + a[1] * ab[1]) / len2).clamp(0.0, 1.0)
    };
    let p = [a[0] + t * ab[0], a[1] + t * ab[1]];
    (p[0] * p[0] + p[1] * p[1]).sqrt()
}

/// When a fence is active: weekly windows in local time (a fixed UTC offset). Outside every
/// window the fence is not evaluated at all (no events, its inside/outside state kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Local time = UTC + this many minutes (-840..=840).
    #[serde(default)]
    pub utc_offset_minutes: i32,
    /// The windows; the fence is active inside any of them.
    pub windows: Vec<Window>,
}

/// One weekly window: the days it applies on and the minutes of the day, `start` inclusive,
/// `end` exclusive (`"24:00"` for the end of the day). A window does not cross midnight; use
/// two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// `mon`..`sun`.
    pub days: Vec<String>,
    /// `HH:MM`.
    pub start: String,
    /// `HH:MM` (up to `24:00`).
    pub end: String,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn minutes_of(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    let total = h * 60 + m;
    (m < 60 && total <= 24 * 60).then_some(total)
}

impl Schedule {
    /// Parse and validate the `schedule` field of a fence.
    pub fn from_json(value: &Value) -> Result<Self, FenceError> {
        let schedule: Schedule =
            serde_json::from_value(value.clone()).map_err(|e| err("schedule", e.to_string()))?;
        if !(-840..=840).contains(&schedule.utc_offset_minutes) {
            return Err(err(
                "schedule.utc_offset_minutes",
                "must lie between -840 and 840",
            ));
        }
        if schedule.windows.is_empty() || schedule.windows.len() > MAX_SCHEDULE_WINDOWS {
            return Err(err(
                "schedule.windows",
                format!("must hold 1 to {MAX_SCHEDULE_WINDOWS} windows"),
            ));
        }
        for (i, w) in schedule.windows.iter().enumerate() {
            let field = format!("schedule.windows[{i}]");
            if w.days.is_empty() || w.days.iter().any(|d| !DAYS.contains(&d.as_str())) {
                return Err(err(
                    format!("{field}.days"),
                    "must name days among mon, tue, wed, thu, fri, sat, sun",
                ));
            }
            let (Some(start), Some(end)) = (minutes_of(&w.start), minutes_of(&w.end)) else {
                return Err(err(&field, "start and end are HH:MM, 00:00 to 24:00"));
            };
            if start >= end {
                return Err(err(
                    &field,
                    "start must be before end (split a window that crosses midnight)",
                ));
            }
        }
        Ok(schedule)
    }

    /// Whether `t` falls in a window.
    pub fn active_at(&self, t: EpochMillis) -> bool {
        const DAY_MS: i64 = 86_400_000;
        let local = t.saturating_add(i64::from(self.utc_offset_minutes) * 60_000);
        // 1970-01-01 was a Thursday (index 3 from Monday).
        let weekday = DAYS[(local.div_euclid(DAY_MS) + 3).rem_euclid(7) as usize];
        let minute = (local.rem_euclid(DAY_MS) / 60_000) as u32;
        self.windows.iter().any(|w| {
            w.days.iter().any(|d| d == weekday)
                && minutes_of(&w.start).is_some_and(|s| minute >= s)
                && minutes_of(&w.end).is_some_and(|e| minute < e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn polygon(ring: &[[f64; 2]]) -> Value {
        json!({ "type": "Polygon", "coordinates": [ring] })
    }

    fn square(lon: f64, lat: f64, side: f64) -> Vec<[f64; 2]> {
        vec![
            [lon, lat],
            [lon + side, lat],
            [lon + side, lat + side],
            [lon, lat + side],
            [lon, lat],
        ]
    }

    fn field_of(result: Result<FenceShape, FenceError>) -> String {
        result.expect_err("invalid").field
    }

    #[test]
    fn a_square_contains_its_inside_only() {
        let s = FenceShape::from_geojson(&polygon(&square(13.0, 52.0, 0.01)), None).unwrap();
        assert!(s.contains(52.005, 13.005));
        assert!(!s.contains(52.02, 13.005));
        assert!(!s.contains(52.005, 12.99));
        assert_eq!(s.bbox().to_array(), [13.0, 52.0, 13.01, 52.01]);
        assert_eq!(s.vertex_count(), 5);
    }

    #[test]
    fn rings_must_be_closed_long_enough_and_in_range() {
        let mut open = square(13.0, 52.0, 0.01);
        open.pop();
        open.push([13.0, 52.001]);
        assert_eq!(
            field_of(FenceShape::from_geojson(&polygon(&open), None)),
            "geometry.coordinates[0]"
        );
        let short = [[13.0, 52.0], [13.1, 52.0], [13.0, 52.0]];
        assert_eq!(
            field_of(FenceShape::from_geojson(&polygon(&short), None)),
            "geometry.coordinates[0]"
        );
        let degenerate = [[13.0, 52.0], [13.1, 52.0], [13.1, 52.0], [13.0, 52.0]];
        assert!(FenceShape::from_geojson(&polygon(&degenerate), None).is_err());
        let line = [[13.0, 52.0], [13.1, 52.0], [13.2, 52.0], [13.0, 52.0]];
        assert!(FenceShape::from_geojson(&polygon(&line), None).is_err());
        let far = [[13.0, 52.0], [13.1, 95.0], [13.2, 52.0], [13.0, 52.0]];
        let e = FenceShape::from_geojson(&polygon(&far), None).unwrap_err();
        assert_eq!(e.field, "geometry.coordinates[0][1]");
        assert!(e.reason.contains("latitude"), "{e}");
        let bad = json!({ "type": "Polygon", "coordinates": [[[13.0, "x"], [1, 2], [3, 4], [13.0, "x"]]] });
        assert!(FenceShape::from_geojson(&bad, None).is_err());
        assert_eq!(
            field_of(FenceShape::from_geojson(
                &json!({ "type": "LineString", "coordinates": [] }),
                None
            )),
            "geometry.type"
        );
        assert_eq!(
            field_of(FenceShape::from_geojson(&json!([1, 2]), None)),
            "geometry"
        );
    }

    #[test]
    fn self_intersections_are_refused_naming_the_ring() {
        let bowtie = [[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]];
        let e = FenceShape::from_geojson(&polygon(&bowtie), None).unwrap_err();
        assert_eq!(e.field, "geometry.coordinates[0]");
        assert!(e.reason.contains("self-intersection"), "{e}");
        // Touching at a vertex (figure eight) is refused too.
        let eight = [
            [0.0, 0.0],
            [1.0, 0.0],
            [0.5, 0.5],
            [1.0, 1.0],
            [0.0, 1.0],
            [0.5, 0.5],
            [0.0, 0.0],
        ];
        assert!(FenceShape::from_geojson(&polygon(&eight), None).is_err());
        // A spike folding back over its own edge.
        let spike = [[0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]];
        assert!(FenceShape::from_geojson(&polygon(&spike), None).is_err());
        // A hole crossing the exterior.
        let crossing = json!({ "type": "Polygon", "coordinates": [
            square(0.0, 0.0, 1.0), square(0.5, 0.5, 1.0)
        ]});
        let e = FenceShape::from_geojson(&crossing, None).unwrap_err();
        assert!(e.reason.contains("rings 0 and 1"), "{e}");
        let outside = json!({ "type": "Polygon", "coordinates": [
            square(0.0, 0.0, 1.0), square(2.0, 2.0, 0.5)
        ]});
        assert_eq!(
            field_of(FenceShape::from_geojson(&outside, None)),
            "geometry.coordinates[1]"
        );
    }

    #[test]
    fn holes_are_outside_and_repeated_positions_are_dropped() {
        let with_hole = json!({ "type": "Polygon", "coordinates": [
            square(0.0, 0.0, 1.0), square(0.25, 0.25, 0.5)
        ]});
        let s = FenceShape::from_geojson(&with_hole, None).unwrap();
        assert!(s.contains(0.1, 0.1));
        assert!(!s.contains(0.5, 0.5), "inside the hole");
        let repeated = [
            [0.0, 0.0],
            [1.0, 0.0],
            [1.0, 0.0],
            [1.0, 1.0],
            [0.0, 1.0],
            [0.0, 0.0],
        ];
        assert!(FenceShape::from_geojson(&polygon(&repeated), None).is_ok());
    }

    #[test]
    fn the_vertex_cap_and_size_limits_hold() {
        let n = MAX_VERTICES;
        let mut ring: Vec<[f64; 2]> = (0..n)
            .map(|i| {
                let a = i as f64 / n as f64 * std::f64::consts::TAU;
                [a.cos() * 0.1, a.sin() * 0.1]
            })
            .collect();
        ring.push(ring[0]);
        let e = FenceShape::from_geojson(&polygon(&ring), None).unwrap_err();
        assert!(e.reason.contains("10000"), "{e}");
        ring.truncate(n - 1);
        ring.push(ring[0]);
        let s = FenceShape::from_geojson(&polygon(&ring), None).expect("10,000 positions pass");
        assert!(s.contains(0.0, 0.0));
        let huge = square(-100.0, -10.0, 100.0);
        assert_eq!(
            field_of(FenceShape::from_geojson(&polygon(&huge), None)),
            "geometry",
            "an edge of 100° is fine, but the square is taller than 90°"
        );
        let wide = [
            [-100.0, 0.0],
            [-5.0, 0.0],
            [90.0, 0.0],
            [90.0, 1.0],
            [-5.0, 1.0],
            [-100.0, 1.0],
            [-100.0, 0.0],
        ];
        assert_eq!(
            field_of(FenceShape::from_geojson(&polygon(&wide), None)),
            "geometry"
        );
    }

    #[test]
    fn a_ring_over_the_antimeridian_takes_the_short_way() {
        let ring = [
            [170.0, -10.0],
            [-170.0, -10.0],
            [-170.0, 10.0],
            [170.0, 10.0],
            [170.0, -10.0],
        ];
        let s = FenceShape::from_geojson(&polygon(&ring), None).unwrap();
        assert!(s.bbox().crosses_antimeridian());
        assert_eq!(s.bbox().to_array(), [170.0, -10.0, -170.0, 10.0]);
        for lon in [175.0, 180.0, -180.0, -175.0] {
            assert!(s.contains(0.0, lon), "{lon}");
        }
        assert!(!s.contains(0.0, 0.0));
        assert!(!s.contains(0.0, 169.0));
        assert!(!s.contains(0.0, -169.0));
        // The same area split at ±180° (RFC 7946) is the same fence.
        let split = json!({ "type": "MultiPolygon", "coordinates": [
            [[[170.0, -10.0], [180.0, -10.0], [180.0, 10.0], [170.0, 10.0], [170.0, -10.0]]],
            [[[-180.0, -10.0], [-170.0, -10.0], [-170.0, 10.0], [-180.0, 10.0], [-180.0, -10.0]]]
        ]});
        let m = FenceShape::from_geojson(&split, None).unwrap();
        assert_eq!(m.bbox().to_array(), [170.0, -10.0, -170.0, 10.0]);
        for lon in [175.0, 180.0, -180.0, -175.0] {
            assert!(m.contains(0.0, lon), "{lon}");
        }
        assert!(!m.contains(0.0, 0.0));
        // Distance to the boundary works across the line too.
        assert!(s.near_boundary(0.0, -170.00001, 10.0));
        assert!(!s.near_boundary(0.0, 180.0, 10.0));
        // An edge of exactly 180° is ambiguous.
        let ambiguous = [[0.0, 0.0], [180.0, 0.0], [180.0, 1.0], [0.0, 0.0]];
        assert!(FenceShape::from_geojson(&polygon(&ambiguous), None).is_err());
    }

    #[test]
    fn circles_have_a_radius_and_stay_off_the_poles() {
        let centre = json!({ "type": "Point", "coordinates": [13.0, 52.0] });
        let c = FenceShape::from_geojson(&centre, Some(100.0)).unwrap();
        assert!(c.contains(52.0, 13.0));
        assert!(c.contains(52.0 + 90.0 / M_PER_DEG, 13.0));
        assert!(!c.contains(52.0 + 110.0 / M_PER_DEG, 13.0));
        assert!(c.near_boundary(52.0 + 95.0 / M_PER_DEG, 13.0, 10.0));
        assert!(!c.near_boundary(52.0, 13.0, 10.0));
        assert_eq!(
            field_of(FenceShape::from_geojson(&centre, None)),
            "radius_m"
        );
        assert_eq!(
            field_of(FenceShape::from_geojson(&centre, Some(0.0))),
            "radius_m"
        );
        assert_eq!(
            field_of(FenceShape::from_geojson(&centre, Some(f64::NAN))),
            "radius_m"
        );
        let polar = json!({ "type": "Point", "coordinates": [0.0, 88.5] });
        assert_eq!(
            field_of(FenceShape::from_geojson(&polar, Some(100_000.0))),
            "radius_m"
        );
        let dateline = json!({ "type": "Point", "coordinates": [179.9999, 0.0] });
        let d = FenceShape::from_geojson(&dateline, Some(1000.0)).unwrap();
        assert!(d.bbox().crosses_antimeridian());
        assert!(d.contains(0.0, -179.9999));
        assert_eq!(c.band_m(10.0), 10.0);
        assert_eq!(
            FenceShape::from_geojson(&centre, Some(8.0))
                .unwrap()
                .band_m(10.0),
            4.0,
            "a small fence has a narrower band"
        );
    }

    #[test]
    fn covering_arcs_find_the_short_way() {
        assert_eq!(covering_arc(vec![(10.0, 20.0)]), (10.0, 20.0));
        assert_eq!(
            covering_arc(vec![(170.0, 180.0), (-180.0, -170.0)]),
            (170.0, 190.0)
        );
        assert_eq!(covering_arc(vec![(-10.0, 0.0), (5.0, 10.0)]), (-10.0, 10.0));
    }

    #[test]
    fn schedules_are_weekly_windows_in_local_time() {
        let s = Schedule::from_json(&json!({
            "utc_offset_minutes": 60,
            "windows": [{ "days": ["mon", "tue"], "start": "08:00", "end": "18:00" }]
        }))
        .unwrap();
        // 2026-11-30 is a Monday; 07:30 UTC is 08:30 local.
        let monday_0730_utc = 1_796_023_800_000;
        assert!(s.active_at(monday_0730_utc));
        assert!(
            !s.active_at(monday_0730_utc - 3_600_000),
            "06:30 UTC = 07:30 local"
        );
        assert!(!s.active_at(monday_0730_utc + 2 * 86_400_000), "wednesday");
        for bad in [
            json!({ "windows": [] }),
            json!({ "windows": [{ "days": ["moon"], "start": "08:00", "end": "09:00" }] }),
            json!({ "windows": [{ "days": ["mon"], "start": "18:00", "end": "08:00" }] }),
            json!({ "windows": [{ "days": ["mon"], "start": "8:00", "end": "09:00" }] }),
            json!({ "utc_offset_minutes": 900, "windows": [{ "days": ["mon"], "start": "08:00", "end": "09:00" }] }),
            json!({ "extra": 1, "windows": [{ "days": ["mon"], "start": "08:00", "end": "09:00" }] }),
        ] {
            let e = Schedule::from_json(&bad).unwrap_err();
            assert!(e.field.starts_with("schedule"), "{e}");
        }
    }
}
