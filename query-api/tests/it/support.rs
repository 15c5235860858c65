//! A running query API on port 0 with its own database, and helpers to seed tenants and users.

use gps_domain::auth::Role;
use gps_runtime::shutdown::Shutdown;
use gps_runtime::testing::{redis_args, wait_until_ok, TestDb};
use secrecy::SecretString;
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

pub(crate) const SECRET: &str = "integration-test-secret-0123456789abcdef";

pub(crate) struct Api {
    pub base: String,
    pub db: TestDb,
    pub client: reqwest::Client,
    shutdown: Shutdown,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub(crate) struct User {
    pub id: Uuid,
    pub email: String,
    pub password: String,
    pub token: String,
}

impl Api {
    /// With rate limits out of the way (tests share 127.0.0.1 and one Redis).
    pub(crate) async fn start() -> Self {
        Self::start_with(&[
            "--login-rate-limit",
            "100000",
            "--api-rate-limit",
            "100000",
            "--refresh-rate-limit",
            "100000",
        ])
        .await
    }

    pub(crate) async fn start_with(extra: &[&str]) -> Self {
        let db = TestDb::new().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut args = vec!["query-api"];
        args.extend_from_slice(extra);
        let mut config = <query_api::Config as clap::Parser>::parse_from(args);
        config.database = db.args.clone();
        config.redis = redis_args();
        config.jwt.jwt_secret = Some(SecretString::from(SECRET));
        let shutdown = Shutdown::new();
        let mut server = tokio::spawn(query_api::run(config, listener, shutdown.clone()));
        let client = reqwest::Client::new();
        let base = format!("http://{addr}");
        // A failed start panics here with the service's error, not later in an unrelated call.
        wait_until_ok(
            &client,
            &format!("{base}/healthz"),
            &mut server,
            Duration::from_secs(20),
        )
        .await;
        Self {
            base,
            db,
            client,
            shutdown,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub(crate) async fn tenant(&self, name: &str) -> Uuid {
        let name = format!("{name}-{}", Uuid::new_v4());
        query_api::routes::tenants::insert_tenant(&self.db.pool, &name)
            .await
            .unwrap()
    }

    /// A user of `role` in `tenant`, not logged in.
    pub(crate) async fn bare_user(&self, tenant: Uuid, role: Role) -> Uuid {
        sqlx::query_scalar(
            "INSERT INTO users (tenant_id, email, password_hash, role) VALUES ($1, $2, 'x', $3) RETURNING id",
        )
        .bind(tenant)
        .bind(format!("bare-{}@example.test", Uuid::new_v4().simple()))
        .bind(role.as_str())
        .fetch_one(&self.db.pool)
        .await
        .unwrap()
    }

    /// A user of `role` in `tenant`, logged in.
    pub(crate) async fn user(&self, tenant: Uuid, role: Role) -> User {
        let email = format!("{}-{}@example.test", role.as_str(), Uuid::new_v4().simple());
        let password = "correct horse battery staple".to_owned();
        let id = query_api::routes::users::insert_user(
            &self.db.pool,
            tenant,
            &email,
            &password,
            role,
            "",
        )
        .await
        .unwrap();
        let token = self.login(&email, &password).await["access_token"]
            .as_str()
            .expect("login answers a token")
            .to_owned();
        User {
            id,
            email,
            password,
            token,
        }
    }

    pub(crate) async fn login(&self, email: &str, password: &str) -> Value {
        let response = self
            .client
            .post(self.url("/v1/auth/login"))
            .json(&serde_json::json!({ "email": email, "password": password }))
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }

    pub(crate) async fn device(&self, tenant: Uuid) -> Uuid {
        sqlx::query_scalar("INSERT INTO devices (tenant_id, uid) VALUES ($1, $2) RETURNING id")
            .bind(tenant)
            .bind(format!("dev-{}", Uuid::new_v4()))
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    pub(crate) async fn group_with(&self, tenant: Uuid, devices: &[Uuid], users: &[Uuid]) -> Uuid {
        let group: Uuid =
            sqlx::query_scalar("INSERT INTO groups (tenant_id, name) VALUES ($1, $2) RETURNING id")
                .bind(tenant)
                .bind(format!("g-{}", Uuid::new_v4()))
                .fetch_one(&self.db.pool)
                .await
                .unwrap();
        for d in devices {
            sqlx::query("INSERT INTO group_devices (group_id, device_id) VALUES ($1, $2)")
                .bind(group)
                .bind(d)
                .execute(&self.db.pool)
                .await
                .unwrap();
        }
        for u in users {
            sqlx::query("INSERT INTO group_members (group_id, user_id) VALUES ($1, $2)")
                .bind(group)
                .bind(u)
                .execute(&self.db.pool)
                .await
                .unwrap();
        }
        group
    }

    /// Insert `n` fixes of `device`, one per second from `start_ms`, moving north 10 m each.
    pub(crate) async fn track(&self, tenant: Uuid, device: Uuid, start_ms: i64, n: i64) {
        sqlx::query(
            "SELECT gps_ensure_position_partitions((to_timestamp($1 / 1000.0) AT TIME ZONE 'UTC')::date,
                                                   (to_timestamp(($1 + $2 * 1000) / 1000.0) AT TIME ZONE 'UTC')::date)",
        )
        .bind(start_ms)
        .bind(n)
        .execute(&self.db.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO positions (tenant_id, device_id, fix_time, received_at, lat, lon, speed_mps, protocol)
             SELECT $1, $2, to_timestamp(($3 + s * 1000) / 1000.0), to_timestamp(($3 + s * 1000) / 1000.0) + interval '2 seconds',
                    52.0 + s * (10.0 / 111195.08), 13.0, 10.0, 'json'
             FROM generate_series(0, $4 - 1) AS s",
        )
        .bind(tenant)
        .bind(device)
        .bind(start_ms)
        .bind(n)
        .execute(&self.db.pool)
        .await
        .unwrap();
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}
