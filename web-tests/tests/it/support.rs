//! The four services in-process on port 0 (a fresh database and fresh topics; the fanout on a
//! port of its own so that it can be restarted), seeding through the public API, and a headless
//! Chromium behind `chromedriver` with helpers that wait on the page and save screenshots.

use fantoccini::{Client, ClientBuilder, Locator};
use gps_domain::auth::Role;
use gps_runtime::shutdown::Shutdown;
use gps_runtime::testing::{kafka_topics, redis_args, wait_until_ok, TestDb};
use secrecy::SecretString;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use uuid::Uuid;

const SECRET: &str = "web-tests-secret-0123456789abcdef0123456789";
pub(crate) const PASSWORD: &str = "correct horse battery staple";

type Task<E> = JoinHandle<Result<(), E>>;

pub(crate) struct Stack {
    pub db: TestDb,
    pub api: String,
    pub ingest: String,
    pub http: reqwest::Client,
    shutdown: Shutdown,
    fanout_addr: SocketAddr,
    fanout_config: fanout::Config,
    fanout_shutdown: Shutdown,
    fanout: Option<Task<fanout::ServiceError>>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.fanout_shutdown.trigger();
        self.shutdown.trigger();
    }
}

async fn listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

impl Stack {
    pub(crate) async fn start() -> Self {
        let db = TestDb::new().await;
        let kafka = kafka_topics().await;
        let shutdown = Shutdown::new();
        let http = reqwest::Client::new();

        let ingest_http = listener().await;
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ingest = format!("http://{}", ingest_http.local_addr().unwrap());
        let mut config = ingest::Config::local();
        config.database = db.args.clone();
        config.kafka = kafka.clone();
        let mut ingest_task = tokio::spawn(ingest::run(config, ingest_http, udp, shutdown.clone()));

        let processor_listener = listener().await;
        let processor_base = format!("http://{}", processor_listener.local_addr().unwrap());
        let mut config = <processor::Config as clap::Parser>::parse_from(["processor"]);
        config.database = db.args.clone();
        config.kafka = kafka.clone();
        config.redis = redis_args();
        config.group_id = format!("web-tests-{}", gps_runtime::testing::unique_suffix());
        config.batch.max_wait_ms = 50;
        let mut processor_task =
            tokio::spawn(processor::run(config, processor_listener, shutdown.clone()));

        let api_listener = listener().await;
        let api_addr = api_listener.local_addr().unwrap();
        let fanout_listener = listener().await;
        let fanout_addr = fanout_listener.local_addr().unwrap();

        let mut fanout_config = <fanout::Config as clap::Parser>::parse_from(["fanout"]);
        fanout_config.database = db.args.clone();
        fanout_config.redis = redis_args();
        fanout_config.jwt.jwt_secret = Some(SecretString::from(SECRET));
        fanout_config.allowed_origins = vec![format!("http://{api_addr}")];
        // Tests share 127.0.0.1 and one Redis: the per-address connect budget is not under test.
        fanout_config.connect_limit_per_ip = 0;
        let fanout_shutdown = Shutdown::new();
        let mut fanout_task = tokio::spawn(fanout::run(
            fanout_config.clone(),
            fanout_listener,
            fanout_shutdown.clone(),
        ));

        let api = format!("http://{api_addr}");
        let mut config = <query_api::Config as clap::Parser>::parse_from([
            "query-api",
            "--login-rate-limit",
            "100000",
            "--api-rate-limit",
            "100000",
            "--refresh-rate-limit",
            "100000",
        ]);
        config.database = db.args.clone();
        config.redis = redis_args();
        config.jwt.jwt_secret = Some(SecretString::from(SECRET));
        config.web.live_url = Some(format!("ws://{fanout_addr}/v1/live"));
        config.web.ingest_url = Some(ingest.clone());
        let mut api_task = tokio::spawn(query_api::run(config, api_listener, shutdown.clone()));

        let wait = Duration::from_secs(60);
        wait_until_ok(&http, &format!("{api}/healthz"), &mut api_task, wait).await;
        wait_until_ok(&http, &format!("{ingest}/readyz"), &mut ingest_task, wait).await;
        wait_until_ok(
            &http,
            &format!("{processor_base}/readyz"),
            &mut processor_task,
            wait,
        )
        .await;
        wait_until_ok(
            &http,
            &format!("http://{fanout_addr}/readyz"),
            &mut fanout_task,
            wait,
        )
        .await;
        Self {
            db,
            api,
            ingest,
            http,
            shutdown,
            fanout_addr,
            fanout_config,
            fanout_shutdown,
            fanout: Some(fanout_task),
        }
    }

    /// Stop the fanout (its clients see a close) and wait until it has stopped.
    pub(crate) async fn stop_fanout(&mut self) {
        self.fanout_shutdown.trigger();
        if let Some(task) = self.fanout.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }

    /// Start the fanout again on the same port.
    pub(crate) async fn start_fanout(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.fanout_addr)
            .await
            .unwrap();
        self.fanout_shutdown = Shutdown::new();
        let mut task = tokio::spawn(fanout::run(
            self.fanout_config.clone(),
            listener,
            self.fanout_shutdown.clone(),
        ));
        let url = format!("http://{}/readyz", self.fanout_addr);
        wait_until_ok(&self.http, &url, &mut task, Duration::from_secs(30)).await;
        self.fanout = Some(task);
    }

    pub(crate) async fn tenant(&self) -> Uuid {
        let name = format!("web-{}", Uuid::new_v4());
        query_api::routes::tenants::insert_tenant(&self.db.pool, &name)
            .await
            .unwrap()
    }

    /// A new tenant with an admin: (tenant, the admin's email, an access token of it).
    pub(crate) async fn tenant_admin(&self) -> (Uuid, String, String) {
        let tenant = self.tenant().await;
        let (_, email) = self.user(tenant, Role::Admin).await;
        let token = self.token(&email).await;
        (tenant, email, token)
    }

    /// A user of `role` in `tenant`; returns its email (the password is [`PASSWORD`]).
    pub(crate) async fn user(&self, tenant: Uuid, role: Role) -> (Uuid, String) {
        let email = format!("{}-{}@example.test", role.as_str(), Uuid::new_v4().simple());
        let id = query_api::routes::users::insert_user(
            &self.db.pool,
            tenant,
            &email,
            PASSWORD,
            role,
            "",
        )
        .await
        .unwrap();
        (id, email)
    }

    /// One query-API call: its status and JSON body (`null` when it has none).
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (reqwest::StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.api));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub(crate) async fn token(&self, email: &str) -> String {
        let login = json!({ "email": email, "password": PASSWORD });
        let (_, body) = self
            .call(reqwest::Method::POST, "/v1/auth/login", None, Some(login))
            .await;
        body["access_token"]
            .as_str()
            .expect("login answers")
            .to_owned()
    }

    /// A device created through the API: (id, ingest token).
    pub(crate) async fn device(&self, token: &str, uid: &str, name: &str) -> (Uuid, String) {
        let device = json!({ "uid": uid, "name": name });
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/devices",
                Some(token),
                Some(device),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["device"]["id"].as_str().unwrap().parse().unwrap(),
            body["token"].as_str().unwrap().to_owned(),
        )
    }

    pub(crate) async fn group(&self, token: &str, devices: &[Uuid], members: &[Uuid]) {
        let group = json!({ "name": format!("g-{}", Uuid::new_v4().simple()) });
        let (_, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/groups",
                Some(token),
                Some(group),
            )
            .await;
        let group = body["id"].as_str().expect("group created").to_owned();
        for (kind, ids) in [("devices", devices), ("members", members)] {
            for id in ids {
                let path = format!("/v1/groups/{group}/{kind}/{id}");
                let (status, body) = self
                    .call(reqwest::Method::PUT, &path, Some(token), None)
                    .await;
                assert!(status.is_success(), "{kind} {id}: {status} {body}");
            }
        }
    }

    /// Post fixes `(t_ms, lat, lon, heading)` of one device to ingest's JSON API; a heading
    /// below zero marks a fix standing still (speed 0, no heading), the rest move at 12 m/s.
    pub(crate) async fn post_fixes(&self, device_token: &str, fixes: &[(i64, f64, f64, f64)]) {
        let items: Vec<Value> = fixes
            .iter()
            .map(|&(t, lat, lon, hdg)| match hdg < 0.0 {
                true => json!({ "time": t, "lat": lat, "lon": lon, "speed": 0.0 }),
                false => {
                    json!({ "time": t, "lat": lat, "lon": lon, "speed": 12.0, "heading": hdg })
                }
            })
            .collect();
        let response = self
            .http
            .post(format!("{}/v1/fixes", self.ingest))
            .bearer_auth(device_token)
            .json(&items)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    }
}

/// Where the screenshots go: `<target dir>/web-artifacts`.
pub(crate) fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let dir = target.join("web-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A headless Chromium with a fresh profile, driven by its own `chromedriver`.
pub(crate) struct Browser {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
}

impl Drop for Browser {
    /// Quit the browser through WebDriver when the runtime allows waiting (multi-threaded
    /// tests), then end what is left of chromedriver's process group (the browser and its
    /// helpers, a panicking test included).
    fn drop(&mut self) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
                let client = self.client.clone();
                tokio::task::block_in_place(|| {
                    handle.block_on(async {
                        let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
                    })
                });
            }
        }
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Not port 0's pick: see `gps_runtime::ports`.
fn free_port() -> u16 {
    gps_runtime::ports::free_loopback_port(false)
        .unwrap()
        .port()
}

impl Browser {
    pub(crate) async fn start() -> Self {
        let driver_bin = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = free_port();
        // A process group of its own (id = its pid): the browser it starts joins it, so that
        // drop can end them all.
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {driver_bin} ({e}): `dev/stack up` installs chromium and chromium-driver")
            });
        let profile = std::env::temp_dir().join(format!("web-tests-{}", Uuid::new_v4().simple()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--disable-crash-reporter", "--window-size=1400,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("chromedriver on {url} did not start a browser: {e}"),
            }
        };
        Self {
            client,
            driver,
            profile,
        }
    }

    /// Run a script in the page (`return …;`).
    pub(crate) async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Poll `script` until it returns something truthy; panics with a screenshot otherwise.
    pub(crate) async fn wait_for(&self, what: &str, script: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.client.execute(script, vec![]).await;
            match value {
                Ok(v) if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) => {
                    return v;
                }
                other => {
                    if started.elapsed() > Duration::from_secs(30) {
                        self.shot("timeout").await;
                        let errors = self.client.execute("return window.__errors", vec![]).await;
                        panic!(
                            "timed out waiting for {what}: last {other:?}; page errors {errors:?}"
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    pub(crate) async fn fill(&self, css: &str, text: &str) {
        let element = self.client.find(Locator::Css(css)).await.unwrap();
        element.clear().await.unwrap();
        element.send_keys(text).await.unwrap();
    }

    pub(crate) async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Save a screenshot as `<artifacts>/<name>.png`; returns its path.
    pub(crate) async fn shot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let path = artifacts().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Go to one of the page's routes (`#/history`, …) and wait for an element of it.
    pub(crate) async fn open(&self, base: &str, route: &str, element: &str) {
        self.client
            .goto(&format!("{base}/#/{route}"))
            .await
            .unwrap();
        let script = format!("return document.getElementById('{element}')");
        self.wait_for(route, &script).await;
    }

    /// The history page with `device` and the range `from_ms`..`to_ms` filled in (not loaded).
    pub(crate) async fn open_history(&self, base: &str, device: Uuid, from_ms: i64, to_ms: i64) {
        self.open(base, "history", "history-load").await;
        self.js(&format!(
            "const local = (ms) => new Date(ms - new Date(ms).getTimezoneOffset() * 60000).toISOString().slice(0, 16); \
             document.getElementById('history-device').value = '{device}'; \
             document.getElementById('history-from').value = local({from_ms}); \
             document.getElementById('history-to').value = local({to_ms}); return true;"
        ))
        .await;
    }

    /// The page with its login form showing.
    pub(crate) async fn open_login(&self, base: &str) {
        self.client.goto(base).await.unwrap();
        self.wait_for(
            "the login form",
            "return !document.getElementById('login').hidden",
        )
        .await;
    }

    pub(crate) async fn login(&self, base: &str, email: &str) {
        self.open_login(base).await;
        self.fill("#login-email", email).await;
        self.fill("#login-password", PASSWORD).await;
        self.click("#login-submit").await;
        self.wait_for(
            "the live connection",
            "return document.getElementById('live-state').textContent === 'live'",
        )
        .await;
    }

    pub(crate) async fn logout(&self) {
        self.click("#logout").await;
        self.wait_for(
            "the login form",
            "return !document.getElementById('login').hidden",
        )
        .await;
    }
}
