//! Bad client messages get an `error` (or, for an oversized frame, a close), never a crash.

use crate::support::*;
use futures::{SinkExt, StreamExt};
use gps_domain::auth::Role;
use gps_runtime::testing::{seed_device, unique_suffix, TestDb};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn bad_messages_get_errors_and_oversized_frames_a_close() {
    let db = TestDb::new().await;
    let mine = seed_device(&db.pool, &format!("bad-{}", unique_suffix())).await;
    let foreign = seed_device(&db.pool, &format!("other-{}", unique_suffix())).await;
    let mut config = config(&db);
    config.max_message_bytes = 4096;
    let fanout = start(db, config).await;
    let (_, token) = fanout.user(mine.tenant_id, Role::Admin).await;
    let mut ws = fanout.connect(&token).await;

    let cases: Vec<(Message, &str)> = vec![
        (Message::Text("{not json".into()), "invalid_json"),
        (Message::Text("42".into()), "invalid_message"),
        (
            Message::Text(r#"{"type":"teleport"}"#.into()),
            "unknown_type",
        ),
        (
            Message::Text(r#"{"type":"subscribe"}"#.into()),
            "invalid_message",
        ),
        (
            Message::Text(r#"{"type":"subscribe","devices":"all"}"#.into()),
            "invalid_field",
        ),
        (
            Message::Text(r#"{"type":"subscribe","bbox":[200,0,10,10]}"#.into()),
            "invalid_field",
        ),
        (
            Message::Binary(vec![1, 2, 3].into()),
            "binary_not_supported",
        ),
    ];
    for (message, code) in cases {
        ws.send(message).await.unwrap();
        let error = recv(&mut ws).await;
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["code"], code, "{error}");
        assert!(error["message"].as_str().unwrap().len() > 5);
    }

    // A foreign device is named in the error, exactly like a missing one.
    let (before, snapshot) = subscribe(
        &mut ws,
        json!({"type": "subscribe", "id": "x", "devices": [foreign.device_id]}),
    )
    .await;
    assert_eq!(before[0]["code"], "not_found");
    assert_eq!(before[0]["id"], "x");
    assert_eq!(before[0]["devices"], json!([foreign.device_id]));
    assert_eq!(snapshot["count"], 0);

    // Still alive.
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");

    // An oversized frame closes with 1009.
    ws.send(Message::Text("x".repeat(64 * 1024).into()))
        .await
        .unwrap();
    let code = loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("expected a close frame, got {e}"),
            None => panic!("stream ended without a close frame"),
        }
    };
    assert_eq!(code, Some(1009));

    // The service is unharmed.
    let mut again = fanout.connect(&token).await;
    send(&mut again, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut again).await["type"], "pong");
    assert_eq!(
        fanout
            .metric("gps_fanout_closes_total{reason=\"message_too_big\"}")
            .await,
        1.0
    );
    fanout.stop().await;
}
