//! Device identity on the report protocols (issue 14): a device with a token must present it
//! (Bearer or `token` parameter), only an opted-in device reports by uid alone, the same uid may
//! exist in two tenants, and every refusal (unknown uid, missing or wrong token, another
//! device's token, disabled device) is the same answer, byte for byte.

use crate::support::{read_fixes, Ingest};
use gps_runtime::testing::{seed_device, unique_suffix, SeededDevice};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// An ingest whose unknown-credential budget does not get in the way of many refusals.
async fn ingest() -> Ingest {
    Ingest::start_with(|c| c.auth.unknown_burst = 1_000).await
}

async fn set_device(pool: &PgPool, id: Uuid, assignment: &str) {
    sqlx::query(&format!("UPDATE devices SET {assignment} WHERE id = $1"))
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

/// A device named `uid` in a new tenant with `settings`, with a token (like [`seed_device`]).
async fn device_in_new_tenant(pool: &PgPool, uid: &str, settings: Value) -> SeededDevice {
    let mut device = seed_device(pool, &format!("identity-{}", unique_suffix())).await;
    sqlx::query("UPDATE tenants SET settings = $2 WHERE id = $1")
        .bind(device.tenant_id)
        .bind(settings)
        .execute(pool)
        .await
        .unwrap();
    set_device(pool, device.device_id, &format!("uid = '{uid}'")).await;
    device.uid = uid.to_owned();
    device
}

/// Status, content type and body of an OsmAnd GET with `query`, with a bearer token if given.
async fn osmand(ingest: &Ingest, query: &str, bearer: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut request = ingest.client.get(ingest.url(&format!("/?{query}")));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.unwrap();
    let content_type = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        r.status().as_u16(),
        content_type,
        r.bytes().await.unwrap().to_vec(),
    )
}

const FIX: &str = "lat=52.5&lon=13.4&timestamp=1700000000";

#[tokio::test]
async fn a_token_device_is_not_written_by_uid_alone_and_every_refusal_is_identical() {
    let ingest = ingest().await;
    let dev = &ingest.device;
    let other = seed_device(&ingest.db.pool, "identity-other").await;
    let disabled = seed_device(&ingest.db.pool, "identity-disabled").await;
    set_device(&ingest.db.pool, disabled.device_id, "disabled = true").await;

    let uid = &dev.uid;
    let refusals = [
        (
            "uid alone",
            osmand(&ingest, &format!("id={uid}&{FIX}"), None).await,
        ),
        (
            "unknown uid",
            osmand(
                &ingest,
                &format!("id=nobody-{}&{FIX}", unique_suffix()),
                None,
            )
            .await,
        ),
        (
            "wrong token parameter",
            osmand(&ingest, &format!("id={uid}&{FIX}&token=gpsd_wrong"), None).await,
        ),
        (
            "wrong bearer",
            osmand(&ingest, &format!("id={uid}&{FIX}"), Some("gpsd_wrong")).await,
        ),
        (
            "another device's token",
            osmand(
                &ingest,
                &format!("id={uid}&{FIX}&token={}", other.token),
                None,
            )
            .await,
        ),
        (
            "a valid token for an unknown uid",
            osmand(
                &ingest,
                &format!("id=nobody&{FIX}&token={}", dev.token),
                None,
            )
            .await,
        ),
        (
            "disabled device with its token",
            osmand(
                &ingest,
                &format!("id={}&{FIX}&token={}", disabled.uid, disabled.token),
                None,
            )
            .await,
        ),
    ];
    let (status, content_type, body) = &refusals[0].1;
    assert_eq!(*status, 400);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let parsed: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(parsed["error"]["code"], "unknown_device", "{parsed}");
    assert_eq!(
        parsed["error"]["message"],
        "unknown device or wrong credentials"
    );
    for (case, answer) in &refusals {
        assert_eq!(
            answer, &refusals[0].1,
            "{case}: the same answer, byte for byte"
        );
    }
    // The same answer a second time, from the cache.
    assert_eq!(
        osmand(&ingest, &format!("id={uid}&{FIX}"), None).await,
        refusals[0].1
    );

    // With its token (parameter or bearer) the device is accepted.
    let (status, _, _) = osmand(
        &ingest,
        &format!("id={uid}&{FIX}&token={}", dev.token),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = osmand(&ingest, &format!("id={uid}&{FIX}"), Some(&dev.token)).await;
    assert_eq!(status, 200);
    let envelopes = read_fixes(&ingest.kafka, 2).await;
    assert_eq!(envelopes.len(), 2, "only the two authenticated reports");
    assert!(envelopes.iter().all(|e| e.device == dev.device_id));
    ingest.stop().await;
}

#[tokio::test]
async fn uid_only_is_an_opt_in_of_the_device_or_its_tenant_and_must_be_unambiguous() {
    let ingest = ingest().await;
    let pool = &ingest.db.pool;
    // Explicitly opted-in device: its uid alone is enough.
    let dev = &ingest.device;
    set_device(pool, dev.device_id, "uid_only = true").await;
    let (status, _, _) = osmand(&ingest, &format!("id={}&{FIX}", dev.uid), None).await;
    assert_eq!(status, 200);
    // A token still works for it.
    let (status, _, _) = osmand(
        &ingest,
        &format!("id={}&{FIX}&token={}", dev.uid, dev.token),
        None,
    )
    .await;
    assert_eq!(status, 200);

    // Tenant default: every device of the tenant without its own setting.
    let legacy = format!("legacy-{}", unique_suffix());
    let by_tenant = device_in_new_tenant(pool, &legacy, json!({"uid_only_devices": true})).await;
    let (status, _, _) = osmand(&ingest, &format!("id={legacy}&{FIX}"), None).await;
    assert_eq!(status, 200);
    // A device of an opted-in tenant may opt out.
    let opted_out = seed_device(pool, &format!("identity-{}", unique_suffix())).await;
    sqlx::query("UPDATE tenants SET settings = '{\"uid_only_devices\": true}' WHERE id = $1")
        .bind(opted_out.tenant_id)
        .execute(pool)
        .await
        .unwrap();
    set_device(pool, opted_out.device_id, "uid_only = false").await;
    let (status, _, body) = osmand(&ingest, &format!("id={}&{FIX}", opted_out.uid), None).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

    // Two tenants opting the same uid in: neither is written by uid alone.
    let twin = format!("twin-{}", unique_suffix());
    let first = device_in_new_tenant(pool, &twin, json!({"uid_only_devices": true})).await;
    let second = device_in_new_tenant(pool, &twin, json!({})).await;
    set_device(pool, second.device_id, "uid_only = true").await;
    let (status, _, _) = osmand(&ingest, &format!("id={twin}&{FIX}"), None).await;
    assert_eq!(status, 400, "an ambiguous uid names no device");
    // Each still reports with its own token, into its own tenant.
    for device in [&first, &second] {
        let (status, _, _) = osmand(
            &ingest,
            &format!("id={twin}&{FIX}&token={}", device.token),
            None,
        )
        .await;
        assert_eq!(status, 200);
    }

    let envelopes = read_fixes(&ingest.kafka, 5).await;
    let mut seen: Vec<(Uuid, Uuid)> = envelopes.iter().map(|e| (e.tenant, e.device)).collect();
    seen.sort();
    let mut want = vec![
        (dev.tenant_id, dev.device_id),
        (dev.tenant_id, dev.device_id),
        (by_tenant.tenant_id, by_tenant.device_id),
        (first.tenant_id, first.device_id),
        (second.tenant_id, second.device_id),
    ];
    want.sort();
    assert_eq!(seen, want);
    ingest.stop().await;
}

#[tokio::test]
async fn owntracks_follows_the_same_rule_with_one_answer() {
    let ingest = ingest().await;
    let pool = &ingest.db.pool;
    let dev = &ingest.device;
    let location = json!({"_type": "location", "tst": 1_700_000_000, "lat": 1.0, "lon": 2.0});
    let post = |user: Option<(&str, &str)>, limit_user: Option<&str>| {
        let mut request = ingest.client.post(ingest.url("/owntracks")).json(&location);
        if let Some((user, password)) = user {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(name) = limit_user {
            request = request
                .header("X-Limit-U", name)
                .header("X-Limit-D", "phone");
        }
        async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            let challenge = r.headers().get("www-authenticate").cloned();
            (status, challenge, r.bytes().await.unwrap().to_vec())
        }
    };
    let refusals = [
        ("empty password", post(Some((&dev.uid, "")), None).await),
        ("no authorization", post(None, Some(&dev.uid)).await),
        ("nothing at all", post(None, None).await),
        (
            "wrong password",
            post(Some((&dev.uid, "gpsd_wrong")), None).await,
        ),
        ("unknown user", post(Some(("nobody", "")), None).await),
    ];
    assert_eq!(refusals[0].1 .0, 401);
    assert!(refusals[0].1 .1.is_some(), "asks for Basic credentials");
    for (case, answer) in &refusals {
        assert_eq!(answer, &refusals[0].1, "{case}: the same answer");
    }
    assert_eq!(post(Some((&dev.uid, &dev.token)), None).await.0, 200);

    // Opted in: the uid alone, as the Basic user or the app's user name.
    let legacy = format!("ot-{}", unique_suffix());
    let by_tenant = device_in_new_tenant(pool, &legacy, json!({"uid_only_devices": true})).await;
    assert_eq!(post(Some((&legacy, "")), None).await.0, 200);
    assert_eq!(post(None, Some(&legacy)).await.0, 200);

    let envelopes = read_fixes(&ingest.kafka, 3).await;
    let mut devices: Vec<Uuid> = envelopes.iter().map(|e| e.device).collect();
    devices.sort();
    let mut want = vec![dev.device_id, by_tenant.device_id, by_tenant.device_id];
    want.sort();
    assert_eq!(devices, want);
    ingest.stop().await;
}
