//! History against known fixtures: pagination returns every row once, every export format
//! parses with a real parser, simplification keeps the ends within tolerance, buckets downsample,
//! the summary matches the hand-computed track, and area/latest boxes wrap across the antimeridian.

use crate::support::Api;
use gps_domain::auth::Role;
use std::collections::HashSet;

const START_MS: i64 = 1_700_000_000_000;
/// The day after [`START_MS`]: every fixture lies in it, and it is within every range cap.
const RANGE: &str = "from=1700000000000&to=1700086400000";

#[tokio::test]
async fn pagination_returns_every_row_exactly_once() {
    let api = Api::start().await;
    let tenant = api.tenant("pages").await;
    let analyst = api.user(tenant, Role::Analyst).await;
    let device = api.device(tenant).await;
    api.track(tenant, device, START_MS, 1_000).await;
    for as_of in ["fix", "received"] {
        let path = format!("/v1/devices/{device}/positions?{RANGE}&limit=137&as_of={as_of}");
        let pages = all_pages(&api, &analyst.token, &path).await;
        let rows = pages.concat();
        let seen: HashSet<&String> = rows.iter().collect();
        assert_eq!(
            seen.len(),
            rows.len(),
            "{as_of}: duplicate row across pages"
        );
        assert_eq!(seen.len(), 1_000, "{as_of}");
        assert_eq!(pages.len(), 8, "{as_of}: 1000 rows in pages of 137");
    }
    let (status, body) = api
        .call(
            "get",
            &format!("/v1/devices/{device}/positions?cursor=bogus"),
            &analyst.token,
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("cursor"))
    );
}

#[tokio::test]
async fn every_export_format_parses() {
    let api = Api::start().await;
    let tenant = api.tenant("formats").await;
    let analyst = api.user(tenant, Role::Analyst).await;
    let device = api.device(tenant).await;
    api.track(tenant, device, START_MS, 50).await;
    let base = format!("/v1/devices/{device}/positions?{RANGE}");

    let (_, geo) = api
        .call(
            "get",
            &format!("{base}&format=geojson"),
            &analyst.token,
            None,
        )
        .await;
    assert_eq!(geo["type"], "FeatureCollection");
    let features = geo["features"].as_array().unwrap();
    assert_eq!(features.len(), 50);
    assert_eq!(features[0]["geometry"]["type"], "Point");
    assert_eq!(features[0]["geometry"]["coordinates"][0], 13.0);
    let (_, line) = api
        .call(
            "get",
            &format!("{base}&format=geojson&geometry=line"),
            &analyst.token,
            None,
        )
        .await;
    assert_eq!(line["features"][0]["geometry"]["type"], "LineString");
    assert_eq!(
        line["features"][0]["geometry"]["coordinates"]
            .as_array()
            .unwrap()
            .len(),
        50
    );

    // GPX by Accept header.
    let gpx = api
        .client
        .get(api.url(&base))
        .bearer_auth(&analyst.token)
        .header("accept", "application/gpx+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(gpx.headers()["content-type"], "application/gpx+xml");
    let text = gpx.text().await.unwrap();
    let doc = roxmltree::Document::parse(&text).expect("GPX is well-formed XML");
    let points: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("trkpt"))
        .collect();
    assert_eq!(points.len(), 50);
    assert_eq!(points[0].attribute("lon"), Some("13"));
    assert!(points[0].children().any(|c| c.has_tag_name("time")));

    let csv_text = api
        .client
        .get(api.url(&format!("{base}&format=csv")))
        .bearer_auth(&analyst.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    assert_eq!(&headers[2], "lat");
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 50);
    assert_eq!(rows[0][3].parse::<f64>().unwrap(), 13.0);
    assert_eq!(rows[0][5].parse::<f64>().unwrap(), 10.0);

    let (status, body) = api
        .call("get", &format!("{base}&format=kml"), &analyst.token, None)
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("format"))
    );
}

#[tokio::test]
async fn simplification_keeps_endpoints_and_buckets_downsample() {
    let api = Api::start().await;
    let tenant = api.tenant("simplify").await;
    let analyst = api.user(tenant, Role::Analyst).await;
    let device = api.device(tenant).await;
    // A straight line north: everything between the ends is within any tolerance.
    api.track(tenant, device, START_MS, 600).await;
    let (_, simple) = api
        .call(
            "get",
            &format!("/v1/devices/{device}/positions?{RANGE}&limit=100000&simplify=5"),
            &analyst.token,
            None,
        )
        .await;
    let kept = simple["positions"].as_array().unwrap();
    assert_eq!(kept.len(), 2, "a straight line simplifies to its ends");
    let (_, all) = api
        .call(
            "get",
            &format!("/v1/devices/{device}/positions?{RANGE}&limit=100000"),
            &analyst.token,
            None,
        )
        .await;
    let all = all["positions"].as_array().unwrap();
    assert_eq!(kept[0]["fix_time"], all[0]["fix_time"]);
    assert_eq!(kept[1]["fix_time"], all[599]["fix_time"]);
    // 600 fixes at 1 Hz in 1-minute buckets: 10 (or 11 if the start is mid-minute) rows.
    let (_, buckets) = api
        .call(
            "get",
            &format!("/v1/devices/{device}/positions?{RANGE}&bucket=1m"),
            &analyst.token,
            None,
        )
        .await;
    let n = buckets["positions"].as_array().unwrap().len();
    assert!((10..=11).contains(&n), "{n}");
}

#[tokio::test]
async fn summary_matches_the_hand_computed_track() {
    let api = Api::start().await;
    let tenant = api.tenant("summary").await;
    let analyst = api.user(tenant, Role::Analyst).await;
    let device = api.device(tenant).await;
    // 101 fixes, 1 s apart, 10 m apart: 1000 m in 100 s at 10 m/s.
    api.track(tenant, device, START_MS, 101).await;
    let (status, body) = api
        .call(
            "get",
            &format!("/v1/devices/{device}/summary?{RANGE}"),
            &analyst.token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let s = &body["summary"];
    assert_eq!(s["fix_count"], 101);
    assert!(
        (s["distance_m"].as_f64().unwrap() - 1000.0).abs() < 0.5,
        "{s}"
    );
    assert!(
        (s["moving_time_s"].as_f64().unwrap() - 100.0).abs() < 1e-6,
        "{s}"
    );
    assert!(
        (s["max_speed_mps"].as_f64().unwrap() - 10.0).abs() < 1e-6,
        "{s}"
    );
    assert!(
        (s["avg_speed_mps"].as_f64().unwrap() - 10.0).abs() < 0.01,
        "{s}"
    );
    assert_eq!(s["trips"].as_array().unwrap().len(), 1);
    // The read is audited: who read whose track.
    let admin = api.user(tenant, Role::Admin).await;
    let (_, audit) = api.call("get", "/v1/audit", &admin.token, None).await;
    assert!(audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "positions.summary"
            && e["object_id"] == device.to_string()
            && e["actor_id"] == analyst.id.to_string()));
}

#[tokio::test]
async fn area_and_latest_accept_a_bbox_across_the_antimeridian() {
    let api = Api::start().await;
    let tenant = api.tenant("antimeridian").await;
    let analyst = api.user(tenant, Role::Analyst).await;
    let mut at = Vec::new();
    for lon in [179.5, -179.5, 0.0] {
        let device = api.device(tenant).await;
        api.track(tenant, device, START_MS, 1).await;
        sqlx::query("UPDATE positions SET lat = 0.5, lon = $2 WHERE device_id = $1")
            .bind(device)
            .bind(lon)
            .execute(&api.db.pool)
            .await
            .unwrap();
        at.push(device.to_string());
    }
    let (east, west) = (&at[0], &at[1]);
    sqlx::query(&format!("INSERT INTO last_positions ({COLUMNS}) SELECT DISTINCT ON (device_id) {COLUMNS} FROM positions ORDER BY device_id, fix_time DESC", COLUMNS = gps_store::positions::COLUMNS))
        .execute(&api.db.pool)
        .await
        .unwrap();
    let devices = |body: &serde_json::Value| {
        let mut ids: Vec<String> = body["positions"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .iter()
            .map(|p| p["device_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let mut both = vec![east.clone(), west.clone()];
    both.sort();

    // 179°E eastwards to 179°W: both sides of 180°, not Greenwich; the same on both endpoints.
    for (bbox, expected) in [
        ("179,-1,-179,1", both.clone()),
        ("179,-1,180,1", vec![east.clone()]),
        ("-180,-1,-179,1", vec![west.clone()]),
    ] {
        for path in [
            format!("/v1/positions?bbox={bbox}&{RANGE}"),
            format!("/v1/positions/latest?bbox={bbox}"),
        ] {
            let (status, body) = api.call("get", &path, &analyst.token, None).await;
            assert_eq!(status, 200, "{path}: {body}");
            assert_eq!(devices(&body), expected, "{path}");
        }
    }
    // Latitudes never wrap: minLat > maxLat is still refused, naming the field.
    let (status, body) = api
        .call(
            "get",
            &format!("/v1/positions?bbox=179,1,-179,-1&{RANGE}"),
            &analyst.token,
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("bbox")),
        "{body}"
    );
}

/// The fix times of a JSON history page.
fn fix_times(page: &serde_json::Value) -> Vec<String> {
    page["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["fix_time"].as_str().unwrap().to_owned())
        .collect()
}

/// Every page of `path` (which ends with its query), following `next_cursor`.
async fn all_pages(api: &Api, token: &str, path: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_owned(),
        };
        let (status, page) = api.call("get", &url, token, None).await;
        assert_eq!(status, 200, "{url}: {page}");
        pages.push(fix_times(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return pages,
        }
    }
}

#[tokio::test]
async fn bucketed_pages_hold_the_first_fix_of_each_bucket_once() {
    let api = Api::start().await;
    let tenant = api.tenant("buckets").await;
    let analyst = api.user(tenant, Role::Analyst).await;
    let device = api.device(tenant).await;
    // Ten minutes at 1 Hz from 22:13:20, silence, then 100 s from an hour later: empty buckets
    // between the two stretches must be skipped, not returned or stopped at.
    api.track(tenant, device, START_MS, 600).await;
    api.track(tenant, device, START_MS + 3_600_000, 100).await;
    let (_, raw) = api
        .call(
            "get",
            &format!("/v1/devices/{device}/positions?{RANGE}&limit=100000"),
            &analyst.token,
            None,
        )
        .await;
    let raw = fix_times(&raw);
    assert_eq!(raw.len(), 700);
    for (bucket, secs) in [("1m", 60_000_i64), ("7s", 7_000), ("1h", 3_600_000)] {
        // What bucketing has always meant: of the rows in fix-time order, the first of each
        // bucket of `secs`, buckets aligned on the Unix epoch.
        let mut last_bucket = None;
        let expected: Vec<String> = raw
            .iter()
            .filter(|t| {
                let ms = chrono::DateTime::parse_from_rfc3339(t)
                    .unwrap()
                    .timestamp_millis();
                let bucket = ms.div_euclid(secs);
                last_bucket.replace(bucket) != Some(bucket)
            })
            .cloned()
            .collect();
        let base = format!("/v1/devices/{device}/positions?{RANGE}&bucket={bucket}");
        let whole = all_pages(&api, &analyst.token, &format!("{base}&limit=100000")).await;
        assert_eq!(whole, vec![expected.clone()], "bucket={bucket}, one page");
        // `limit` counts buckets, and a bucket is never split over two pages.
        let pages = all_pages(&api, &analyst.token, &format!("{base}&limit=3")).await;
        assert!(pages.iter().all(|p| p.len() <= 3), "bucket={bucket}");
        assert_eq!(pages.len(), expected.len().div_ceil(3), "bucket={bucket}");
        assert_eq!(pages.concat(), expected, "bucket={bucket}, pages of 3");
        // The whole-page path (a line) buckets the same way.
        let (_, line) = api
            .call(
                "get",
                &format!("{base}&limit=100000&format=geojson&geometry=line"),
                &analyst.token,
                None,
            )
            .await;
        assert_eq!(
            line["features"][0]["properties"]["fixes"],
            expected.len(),
            "bucket={bucket}, line"
        );
    }
}

#[tokio::test]
async fn a_summary_longer_than_a_page_counts_every_fix_once() {
    let api = Api::start().await;
    let tenant = api.tenant("summary-pages").await;
    let analyst = api.user(tenant, Role::Analyst).await;
    let device = api.device(tenant).await;
    // 200,001 fixes 1 s and 10 m apart (2.3 days): more than two pages of the summary's keyset
    // read, so a row lost or repeated at a page boundary changes the count and the distance.
    let fixes = 200_001_i64;
    api.track(tenant, device, START_MS, fixes).await;
    let to = START_MS + 3 * 86_400_000;
    let (status, body) = api
        .call(
            "get",
            &format!("/v1/devices/{device}/summary?from={START_MS}&to={to}"),
            &analyst.token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let s = &body["summary"];
    assert_eq!(s["fix_count"], fixes);
    let steps = (fixes - 1) as f64;
    assert!(
        (s["distance_m"].as_f64().unwrap() - 10.0 * steps).abs() < 200.0,
        "{s}"
    );
    assert!(
        (s["moving_time_s"].as_f64().unwrap() - steps).abs() < 1e-6,
        "{s}"
    );
    assert_eq!(s["trips"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s["stops"].as_array().unwrap().len(), 0, "{s}");
}
