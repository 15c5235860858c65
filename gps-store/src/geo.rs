//! The SQL form of the domain geometry ([`gps_domain::geo`]): the one bounding-box predicate,
//! used by fanout's snapshot of last positions and by the query API's latest and area queries,
//! so that a box means the same on the live and the history side.

use gps_domain::geo::BBox;

/// An SQL condition, true when the point in columns `lat`/`lon` lies inside the box bound as
/// `param`, a `float8[]` in the wire order `[minLon, minLat, maxLon, maxLat]` ([`bbox_param`]).
/// Same semantics as [`BBox::contains`]: edges included, and a box with `minLon > maxLon`
/// crosses the antimeridian (`lon >= minLon OR lon <= maxLon`). NULL when `param` is NULL.
///
/// `lat`, `lon` and `param` are spliced into the statement: pass column names and a placeholder
/// (`"$4"`), never input.
pub fn bbox_condition(lat: &str, lon: &str, param: &str) -> String {
    format!(
        "({lat} BETWEEN {param}[2] AND {param}[4]
          AND CASE WHEN {param}[1] <= {param}[3] THEN {lon} BETWEEN {param}[1] AND {param}[3]
                   ELSE {lon} >= {param}[1] OR {lon} <= {param}[3] END)"
    )
}

/// The value to bind for [`bbox_condition`]'s `param`.
pub fn bbox_param(bbox: &BBox) -> Vec<f64> {
    bbox.to_array().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_names_each_edge_by_its_wire_position() {
        let sql = bbox_condition("p.lat", "p.lon", "$3");
        assert!(sql.contains("p.lat BETWEEN $3[2] AND $3[4]"), "{sql}");
        assert!(sql.contains("p.lon BETWEEN $3[1] AND $3[3]"), "{sql}");
        assert!(sql.contains("p.lon >= $3[1] OR p.lon <= $3[3]"), "{sql}");
        let bbox = BBox::new(170.0, -10.0, -170.0, 10.0).unwrap();
        assert_eq!(bbox_param(&bbox), vec![170.0, -10.0, -170.0, 10.0]);
    }
}
