//! Redis restarted mid-stream (a private redis-server, never the shared one): clients get a
//! `gap` when the subscription is lost and another when it is back, and the stream resumes.

use crate::support::*;
use gps_domain::auth::Role;
use gps_runtime::testing::{seed_device, unique_suffix, TestDb};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    async fn start(port: u16, dir: std::path::PathBuf) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "private redis never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Not port 0's pick: see `gps_runtime::ports`.
fn free_port() -> u16 {
    gps_runtime::ports::free_loopback_port(false)
        .unwrap()
        .port()
}

#[tokio::test]
async fn clients_get_a_gap_when_redis_restarts_and_the_stream_resumes() {
    let dir = std::env::temp_dir().join(format!("fanout-redis-{}", unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut redis = PrivateRedis::start(free_port(), dir.clone()).await;
    let db = TestDb::new().await;
    let device = seed_device(&db.pool, &format!("restart-{}", unique_suffix())).await;
    let mut config = with_redis(config(&db), &redis.url());
    config.redis_backoff_max_ms = 200;
    let mut fanout = start(db, config).await;
    let (_, token) = fanout.user(device.tenant_id, Role::Manager).await;
    let mut ws = fanout.connect(&token).await;
    subscribe(
        &mut ws,
        json!({"type": "subscribe", "devices": [device.device_id]}),
    )
    .await;

    fanout
        .publish(
            device.tenant_id,
            vec![live(device.device_id, 1_000, 1.0, 1.0)],
        )
        .await;
    let fix = recv(&mut ws).await;
    assert_eq!(
        (fix["type"].as_str(), fix["seq"].as_u64()),
        (Some("fix"), Some(1))
    );

    redis.kill();
    let lost = recv(&mut ws).await;
    assert_eq!(lost["type"], "gap", "{lost}");
    assert_eq!(lost["status"], "lost");
    let since = lost["since"].as_i64().unwrap();

    let redis = PrivateRedis::start(redis.port, dir.clone()).await;
    let resumed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let message = recv(&mut ws).await;
            if message["type"] == "gap" && message["status"] == "resumed" {
                return message;
            }
        }
    })
    .await
    .expect("the subscription resumes");
    assert_eq!(resumed["since"], since);
    assert!(resumed["until"].as_i64().unwrap() >= since);

    // The stream resumes (a fresh publisher connection: the old one saw the restart too).
    let mut publisher = redis::Client::open(redis.url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    publish(
        &mut publisher,
        device.tenant_id,
        vec![live(device.device_id, 2_000, 1.0, 1.0)],
    )
    .await;
    let fix = recv(&mut ws).await;
    assert_eq!(fix["type"], "fix", "{fix}");
    assert_eq!(fix["fix_time"], 2_000);
    assert_eq!(fix["seq"], 2);
    assert!(fanout.metric("gps_fanout_redis_reconnects_total").await >= 1.0);
    fanout.stop().await;
    drop(redis);
    let _ = std::fs::remove_dir_all(dir);
}
