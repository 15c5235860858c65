//! Geometry on the WGS84 sphere, pure: the one bounding box ([`BBox`]) every endpoint filters by,
//! live (fanout subscriptions and snapshots) and history (query-api area and latest queries), and
//! the one great-circle distance ([`haversine_m`]) used by validation and track summaries.
//!
//! A box whose west edge lies east of its east edge (`min_lon > max_lon`) crosses the
//! antimeridian: `[170, -10, -170, 10]` covers 170°E…180° and -180°…170°W. Both the Rust check
//! ([`BBox::contains`]) and the SQL predicate (`gps_store::geo`) follow that rule.

use serde::{Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Mean Earth radius (IUGG), metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Great-circle distance between two WGS84 points (degrees), metres. The `asin` argument is
/// clamped to 1 so that rounding near antipodal points cannot produce NaN.
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// Why four numbers are not a bounding box. The messages complete "bbox must be
/// [minLon, minLat, maxLon, maxLat]: …".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BBoxError {
    /// Not four comma-separated numbers (text form only).
    #[error("needs exactly 4 numbers")]
    Shape,
    /// NaN or an infinity.
    #[error("every item must be a finite number")]
    NotFinite,
    /// A longitude outside [-180, 180].
    #[error("longitudes must lie in [-180, 180]")]
    Longitude,
    /// A latitude outside [-90, 90].
    #[error("latitudes must lie in [-90, 90]")]
    Latitude,
    /// South edge north of the north edge.
    #[error("minLat is greater than maxLat")]
    LatitudeOrder,
}

/// A validated bounding box, WGS84 degrees, edges included. `min_lon > max_lon` means the box
/// crosses the antimeridian; latitudes never wrap. Serializes as its wire form
/// `[minLon, minLat, maxLon, maxLat]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    min_lon: f64,
    min_lat: f64,
    max_lon: f64,
    max_lat: f64,
}

impl BBox {
    /// A box from its edges: every number finite, longitudes in [-180, 180], latitudes in
    /// [-90, 90], `min_lat <= max_lat`. Any longitude order is valid (see the type).
    pub fn new(min_lon: f64, min_lat: f64, max_lon: f64, max_lat: f64) -> Result<Self, BBoxError> {
        if ![min_lon, min_lat, max_lon, max_lat]
            .iter()
            .all(|v| v.is_finite())
        {
            return Err(BBoxError::NotFinite);
        }
        if !(-180.0..=180.0).contains(&min_lon) || !(-180.0..=180.0).contains(&max_lon) {
            return Err(BBoxError::Longitude);
        }
        if !(-90.0..=90.0).contains(&min_lat) || !(-90.0..=90.0).contains(&max_lat) {
            return Err(BBoxError::Latitude);
        }
        if min_lat > max_lat {
            return Err(BBoxError::LatitudeOrder);
        }
        Ok(Self {
            min_lon,
            min_lat,
            max_lon,
            max_lat,
        })
    }

    /// A box from its wire form `[minLon, minLat, maxLon, maxLat]`.
    pub fn from_array([min_lon, min_lat, max_lon, max_lat]: [f64; 4]) -> Result<Self, BBoxError> {
        Self::new(min_lon, min_lat, max_lon, max_lat)
    }

    /// West edge.
    pub fn min_lon(&self) -> f64 {
        self.min_lon
    }

    /// South edge.
    pub fn min_lat(&self) -> f64 {
        self.min_lat
    }

    /// East edge.
    pub fn max_lon(&self) -> f64 {
        self.max_lon
    }

    /// North edge.
    pub fn max_lat(&self) -> f64 {
        self.max_lat
    }

    /// Whether the box crosses the antimeridian (`min_lon > max_lon`).
    pub fn crosses_antimeridian(&self) -> bool {
        self.min_lon > self.max_lon
    }

    /// Whether the point lies inside (edges included). A NaN coordinate is never inside.
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        let lon_in = if self.crosses_antimeridian() {
            lon >= self.min_lon || lon <= self.max_lon
        } else {
            lon >= self.min_lon && lon <= self.max_lon
        };
        lon_in && lat >= self.min_lat && lat <= self.max_lat
    }

    /// `[minLon, minLat, maxLon, maxLat]`, the wire form (and the SQL `float8[]` parameter).
    pub fn to_array(self) -> [f64; 4] {
        [self.min_lon, self.min_lat, self.max_lon, self.max_lat]
    }
}

impl FromStr for BBox {
    type Err = BBoxError;

    /// The query-string form `minLon,minLat,maxLon,maxLat` (spaces around numbers allowed).
    fn from_str(s: &str) -> Result<Self, BBoxError> {
        let numbers: Vec<f64> = s
            .split(',')
            .map(|part| part.trim().parse::<f64>().map_err(|_| BBoxError::Shape))
            .collect::<Result<_, _>>()?;
        let array: [f64; 4] = numbers.try_into().map_err(|_| BBoxError::Shape)?;
        Self::from_array(array)
    }
}

impl fmt::Display for BBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{},{}",
            self.min_lon, self.min_lat, self.max_lon, self.max_lat
        )
    }
}

impl Serialize for BBox {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_array().serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn haversine_matches_known_distances() {
        // One degree of latitude is ~111.2 km on the mean sphere.
        let d = haversine_m(0.0, 0.0, 1.0, 0.0);
        assert!((d - 111_195.08).abs() < 1.0, "{d}");
        // Berlin TV tower to Brandenburg Gate: ~2.1 km (checked against a map).
        let d = haversine_m(52.520817, 13.409414, 52.516275, 13.377704);
        assert!((2100.0..2250.0).contains(&d), "{d}");
        assert_eq!(haversine_m(10.0, 10.0, 10.0, 10.0), 0.0);
        // Across the antimeridian the short way: 1° of longitude at the equator.
        let d = haversine_m(0.0, 179.5, 0.0, -179.5);
        assert!((d - 111_195.08).abs() < 1.0, "{d}");
    }

    #[test]
    fn haversine_is_finite_at_antipodes() {
        // Rounding can push the asin argument just above 1 here; the clamp keeps it finite.
        let d = haversine_m(0.0, 0.0, 0.0, 180.0);
        assert!(d.is_finite());
        assert!(
            (d - std::f64::consts::PI * EARTH_RADIUS_M).abs() < 1.0,
            "{d}"
        );
        assert!(haversine_m(90.0, 0.0, -90.0, 0.0).is_finite());
    }

    #[test]
    fn boxes_are_validated_at_their_edges() {
        assert!(BBox::new(-180.0, -90.0, 180.0, 90.0).is_ok());
        assert!(BBox::new(10.0, 5.0, 10.0, 5.0).is_ok(), "a point is a box");
        assert!(BBox::new(170.0, -10.0, -170.0, 10.0).is_ok(), "wraps");
        assert_eq!(BBox::new(-180.1, 0.0, 10.0, 1.0), Err(BBoxError::Longitude));
        assert_eq!(BBox::new(0.0, 0.0, 180.1, 1.0), Err(BBoxError::Longitude));
        assert_eq!(BBox::new(0.0, -90.5, 1.0, 1.0), Err(BBoxError::Latitude));
        assert_eq!(BBox::new(0.0, 0.0, 1.0, 91.0), Err(BBoxError::Latitude));
        assert_eq!(BBox::new(0.0, 2.0, 1.0, 1.0), Err(BBoxError::LatitudeOrder));
        assert_eq!(
            BBox::new(f64::NAN, 0.0, 1.0, 1.0),
            Err(BBoxError::NotFinite)
        );
        assert_eq!(
            BBox::new(0.0, 0.0, f64::INFINITY, 1.0),
            Err(BBoxError::NotFinite)
        );
    }

    #[test]
    fn the_text_form_parses_back() {
        let b: BBox = "13,52,14,53".parse().unwrap();
        assert_eq!(b.to_array(), [13.0, 52.0, 14.0, 53.0]);
        assert_eq!(b.to_string().parse::<BBox>().unwrap(), b);
        let wrapping: BBox = " 170, -10 ,-170,10".parse().unwrap();
        assert!(wrapping.crosses_antimeridian());
        assert_eq!("1,2,3".parse::<BBox>(), Err(BBoxError::Shape));
        assert_eq!("1,2,3,4,5".parse::<BBox>(), Err(BBoxError::Shape));
        assert_eq!("a,2,3,4".parse::<BBox>(), Err(BBoxError::Shape));
        assert_eq!("NaN,1,2,3".parse::<BBox>(), Err(BBoxError::NotFinite));
        assert_eq!(
            serde_json::to_value(b).unwrap(),
            serde_json::json!([13.0, 52.0, 14.0, 53.0])
        );
    }

    #[test]
    fn a_box_crossing_the_antimeridian_wraps() {
        let b = BBox::new(170.0, -10.0, -170.0, 10.0).unwrap();
        assert!(b.contains(0.0, 179.5));
        assert!(b.contains(0.0, -179.5));
        assert!(b.contains(0.0, 180.0));
        assert!(b.contains(0.0, -180.0));
        assert!(b.contains(10.0, 170.0), "edges included");
        assert!(!b.contains(0.0, 0.0));
        assert!(!b.contains(0.0, 169.9));
        assert!(!b.contains(0.0, -169.9));
        assert!(!b.contains(20.0, 175.0));
        assert!(!b.contains(f64::NAN, 175.0));
    }

    fn lon() -> impl Strategy<Value = f64> {
        -180.0f64..=180.0
    }

    fn lat() -> impl Strategy<Value = f64> {
        -90.0f64..=90.0
    }

    proptest! {
        /// A crossing box is exactly the union of its two halves on either side of ±180°.
        #[test]
        fn crossing_boxes_are_the_union_of_their_halves(
            west in lon(), east in lon(), (a, b) in (lat(), lat()), plat in lat(), plon in lon()
        ) {
            prop_assume!(west > east);
            let (south, north) = (a.min(b), a.max(b));
            let wrapping = BBox::new(west, south, east, north).unwrap();
            let eastern = BBox::new(west, south, 180.0, north).unwrap();
            let western = BBox::new(-180.0, south, east, north).unwrap();
            prop_assert_eq!(
                wrapping.contains(plat, plon),
                eastern.contains(plat, plon) || western.contains(plat, plon)
            );
        }

        /// A box contains its corners, and a point off the ±180° meridian is inside exactly when
        /// it lies in the latitude band and on the arc from the west edge eastwards to the east
        /// edge, whichever way round the edges are.
        #[test]
        fn contains_matches_the_eastward_arc(
            west in lon(), east in lon(), (a, b) in (lat(), lat()), plat in lat(),
            plon in -179.999f64..179.999
        ) {
            // The whole world, where the eastward arc from -180 to 180 has length 0 mod 360.
            prop_assume!(!(west == -180.0 && east == 180.0));
            let (south, north) = (a.min(b), a.max(b));
            let bbox = BBox::new(west, south, east, north).unwrap();
            prop_assert!(bbox.contains(south, west) && bbox.contains(north, east));
            // Degrees travelled eastwards from the west edge, in [0, 360).
            let arc = |to: f64| (to - west).rem_euclid(360.0);
            let expected = arc(plon) <= arc(east) && (south..=north).contains(&plat);
            prop_assert_eq!(bbox.contains(plat, plon), expected);
        }

        /// Validation accepts exactly the in-range, latitude-ordered, finite boxes.
        #[test]
        fn new_accepts_exactly_valid_edges(
            w in -200.0f64..200.0, s in -100.0f64..100.0, e in -200.0f64..200.0, n in -100.0f64..100.0
        ) {
            let valid = w.abs() <= 180.0 && e.abs() <= 180.0 && s.abs() <= 90.0 && n.abs() <= 90.0 && s <= n;
            prop_assert_eq!(BBox::new(w, s, e, n).is_ok(), valid);
        }
    }
}
