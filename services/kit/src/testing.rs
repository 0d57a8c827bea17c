//! Test support, for tests only (production code uses [`crate::db`]):
//!
//! - [`TestDatabases`]: databases a test made, `tandem_t_<name>_<random>` on the server
//!   `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`). Dropped when
//!   the test passes; kept when it fails, and the failure output names them.
//! - [`fresh_database`]: one new empty database; [`Served`]: a service in-process on one.
//! - [`Provisioned`]: least-privilege databases with their owner and runtime roles
//!   ([`crate::provision`]), all dropped when the test ends, pass or fail (roles are
//!   cluster-wide: none is left behind).
//! - [`recorder`]: a stand-in peer that records what is posted to it.
//! - [`Store`], [`Served::start_on`], [`TempFiles`]: the same on a SQLite file, and
//!   [`crate::on_both_stores`]: one test body run on both stores (the conformance suite).
//! - [`missing_prerequisite`]: how a test reacts to a missing tool or server (skip outside CI,
//!   fail with `CI=true`).

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;

pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A new name prefix `tandem_t_<name>_<random>` (`name` made a plain lowercase identifier).
pub fn unique_prefix(name: &str) -> String {
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    format!("tandem_t_{name}_{}", &suffix[suffix.len() - 12..])
}

/// Databases a test owns, on one server (created by the test or by the processes it starts).
/// On drop: when the test passes (the thread is not panicking), each is dropped, its prepared
/// transactions rolled back first ([`crate::db::drop_database`]); when it fails, they are kept
/// and their URLs are printed with the failure — their prepared transactions rolled back all
/// the same ([`crate::db::rollback_prepared`]), pass or fail nothing is left holding locks.
#[derive(Debug)]
pub struct TestDatabases {
    pub server_url: String,
    names: Vec<String>,
}

impl TestDatabases {
    /// Take charge of databases `names` on `server_url` (they need not exist yet).
    pub fn new(server_url: impl Into<String>, names: impl IntoIterator<Item = String>) -> Self {
        TestDatabases {
            server_url: server_url.into(),
            names: names.into_iter().collect(),
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The URL of database `name` (one of [`TestDatabases::names`], or any other) on the server.
    pub fn url(&self, name: &str) -> String {
        crate::db::database_url(&self.server_url, name)
    }

    /// Keep the databases (a test that fails without panicking), saying where they are.
    pub fn keep(mut self, why: &str) {
        eprintln!(
            "{why}: databases kept for inspection: {}",
            self.urls().join(" ")
        );
        self.names.clear();
    }

    fn urls(&self) -> Vec<String> {
        self.names.iter().map(|n| self.url(n)).collect()
    }
}

impl Drop for TestDatabases {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let (server, names) = (self.server_url.clone(), std::mem::take(&mut self.names));
        if std::thread::panicking() {
            // Kept for inspection, but not with prepared transactions: those would hold their
            // locks and block vacuum on the shared server until someone finishes them.
            let urls: Vec<String> = names
                .iter()
                .map(|n| crate::db::database_url(&server, n))
                .collect();
            on_each(server, names, |server, name| async move {
                crate::db::rollback_prepared(&server, &name).await.map(drop)
            });
            eprintln!(
                "test failed: its databases are kept for inspection (their prepared transactions rolled back): {}",
                urls.join(" ")
            );
            return;
        }
        on_each(server, names, |server, name| async move {
            drop_with_retry(&server, &name).await
        });
    }
}

/// Run `op` on every database at once, blocking (for at most [`DROP_WAIT`]). Drop may run
/// inside a runtime (the end of a `#[tokio::test]`): a thread of its own with its own runtime
/// can block on the SQL without stalling that runtime.
fn on_each<F, Fut>(server: String, names: Vec<String>, op: F)
where
    F: Fn(String, String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), crate::Error>> + Send + 'static,
{
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let outcome: Result<(), String> = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| {
                // All at once: each statement completes on the server once sent, even if this
                // process ends while waiting (one after the other, the ones not yet sent when
                // the wait below ran out were left behind).
                rt.block_on(async {
                    let mut ops = tokio::task::JoinSet::new();
                    for name in names {
                        ops.spawn(op(server.clone(), name));
                    }
                    let mut errors = Vec::new();
                    while let Some(done) = ops.join_next().await {
                        match done {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => errors.push(crate::error::chain(&e)),
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                    if errors.is_empty() {
                        Ok(())
                    } else {
                        Err(errors.join("; "))
                    }
                })
            });
        if let Err(e) = &outcome {
            eprintln!("warning: cleaning up test databases: {e}");
        }
        let _ = done.send(());
    });
    // `DROP DATABASE` waits for a checkpoint, which takes seconds on a busy server. Wait for it
    // a while; after that the work goes on in the background (once sent, the server completes
    // it even if this process ends first).
    let _ = finished.recv_timeout(DROP_WAIT);
}

/// How long a passing test waits for its databases to be dropped.
const DROP_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A database in use may get a new prepared transaction between the roll-back and the drop
/// (a server of the test still running): try a few times.
async fn drop_with_retry(server: &str, name: &str) -> Result<(), crate::Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match crate::db::drop_database(server, name).await {
            Err(e) if attempt < 3 => {
                tracing::debug!(error = %e, "dropping {name}, retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            r => return r,
        }
    }
}

/// Create a new empty database `tandem_t_<prefix>_<random>`, owned by the returned guard.
pub async fn fresh_database(prefix: &str) -> TestDatabases {
    let base = server_url();
    let opts = PgConnectOptions::from_str(&base).expect("TEST_DATABASE_URL is a valid URL");
    let name = unique_prefix(prefix);
    let mut conn = opts
        .clone()
        .database("postgres")
        .connect()
        .await
        .expect("the test Postgres server is reachable (see README: Running the tests)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let _ = conn.close().await;
    TestDatabases::new(base, [name])
}

impl TestDatabases {
    /// The URL of the first database (a [`fresh_database`]'s only one).
    pub fn first_url(&self) -> String {
        self.url(&self.names[0])
    }
}

/// Least-privilege databases a test made with [`crate::provision`]: one per name given, each
/// `tandem_t_<name>_<random>` with roles `<database>_owner` and `<database>_app` (no
/// passwords: the test server trusts local connections). On drop, pass or fail, the databases
/// are dropped (their prepared transactions rolled back first) and then the roles: roles
/// belong to the whole cluster, so unlike [`TestDatabases`] nothing is kept for inspection.
#[derive(Debug)]
pub struct Provisioned {
    pub server_url: String,
    pub components: Vec<crate::provision::Component>,
}

impl Provisioned {
    /// Provision one database per entry of `names` on the test server.
    pub async fn new(names: &[&str]) -> Provisioned {
        let provisioned = Provisioned {
            server_url: server_url(),
            components: names
                .iter()
                .map(|n| {
                    use crate::provision::{Component, Password};
                    Component::named(&unique_prefix(n), (Password::None, Password::None))
                })
                .collect(),
        };
        for c in &provisioned.components {
            crate::provision::run(&provisioned.server_url, c)
                .await
                .unwrap_or_else(|e| {
                    panic!("provisioning {}: {}", c.database, crate::error::chain(&e))
                });
        }
        provisioned
    }

    /// `DATABASE_URL` (runtime role) and `DATABASE_OWNER_URL` of component `i`.
    pub fn urls(&self, i: usize) -> (String, String) {
        self.components[i].urls(&self.server_url)
    }

    /// The URL of component `i`'s database as the server's (superuser) role.
    pub fn admin_url(&self, i: usize) -> String {
        crate::db::database_url(&self.server_url, &self.components[i].database)
    }
}

impl Drop for Provisioned {
    fn drop(&mut self) {
        let server = self.server_url.clone();
        let components = std::mem::take(&mut self.components);
        let done = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut roles = Vec::new();
                for c in components {
                    drop_with_retry(&server, &c.database)
                        .await
                        .map_err(|e| crate::error::chain(&e))?;
                    roles.extend([c.runtime.name, c.owner.name]);
                }
                crate::provision::drop_roles(&server, &roles)
                    .await
                    .map_err(|e| crate::error::chain(&e))
            })
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: dropping provisioned test databases and roles: {e}"),
            Err(_) => eprintln!("warning: the provisioning cleanup thread panicked"),
        }
    }
}

/// A stand-in peer on an ephemeral port: it records the JSON body of every `POST route` (an
/// axum path such as `/paxos/phase2a` or `/transactions/{id}/paxos`) and answers `answer`.
/// Its URL and what it recorded, in arrival order.
pub async fn recorder(
    route: &str,
    answer: serde_json::Value,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    let router = axum::Router::new().route(
        route,
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let (g, answer) = (g.clone(), answer.clone());
            async move {
                g.lock().expect("recorder lock").push(v);
                axum::Json(answer)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a recorder");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, got)
}

/// A prerequisite of a test is missing (`what`: a tool, a server, a setting; `how`: how to get
/// it). Outside CI the test says so and skips (the caller returns); with `CI=true` the test
/// fails here, naming what is missing, so CI never passes by skipping.
pub fn missing_prerequisite(what: &str, how: &str) {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    missing(in_ci, what, how);
}

fn missing(in_ci: bool, what: &str, how: &str) {
    assert!(!in_ci, "missing prerequisite in CI: {what} — {how}");
    eprintln!("SKIPPED: missing prerequisite: {what} — {how}");
}

/// A service served in-process on an ephemeral port, on a fresh database, with an HTTP client:
/// what the services' own tests start from.
pub struct Served {
    pub url: String,
    pub http: reqwest::Client,
    pub app: crate::service::App,
    /// The service's database: dropped when the test passes, kept when it fails.
    pub database: TestDatabases,
    /// On SQLite, its file's directory (removed when the test passes, kept when it fails).
    pub files: Option<TempFiles>,
}

/// Which store a test runs a service on ([`Served::start_on`], [`crate::on_both_stores`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// A fresh Postgres database ([`fresh_database`]).
    Postgres,
    /// A fresh SQLite file in a temporary directory ([`TempFiles`]).
    Sqlite,
}

/// A temporary directory for a test's SQLite files: removed when the test passes, kept (and
/// named) when it fails.
#[derive(Debug)]
pub struct TempFiles {
    pub dir: std::path::PathBuf,
}

impl TempFiles {
    /// A new empty directory `tandem_t_<name>_<random>` under the system's temporary one.
    pub fn new(name: &str) -> TempFiles {
        let dir = std::env::temp_dir().join(unique_prefix(name));
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        TempFiles { dir }
    }

    /// The URL of SQLite file `file` in this directory.
    pub fn sqlite_url(&self, file: &str) -> String {
        crate::sqlite::url(&self.dir.join(file))
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test failed: its SQLite files are kept for inspection: {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Served {
    /// Build `spec` on a fresh database (`adjust` may change the configuration) and serve it
    /// until the test ends.
    pub async fn start(
        spec: &'static crate::service::Spec,
        adjust: impl FnOnce(&mut crate::service::Config),
    ) -> Served {
        let database = fresh_database(spec.name).await;
        // Fault injection keeps its production default (off); `Served::with_faults` (or
        // `adjust`) turns it on for the tests that use the `/faults` endpoints.
        let mut config = crate::service::Config::with_database(database.first_url());
        adjust(&mut config);
        Served::serve(spec, config, database).await
    }

    /// [`Served::start`] on `store`: a fresh Postgres database, or a fresh SQLite file.
    pub async fn start_on(
        store: Store,
        spec: &'static crate::service::Spec,
        adjust: impl FnOnce(&mut crate::service::Config),
    ) -> Served {
        match store {
            Store::Postgres => Served::start(spec, adjust).await,
            Store::Sqlite => {
                let files = TempFiles::new(spec.name);
                let mut config =
                    crate::service::Config::with_database(files.sqlite_url("service.db"));
                adjust(&mut config);
                let mut served =
                    Served::serve(spec, config, TestDatabases::new(server_url(), [])).await;
                served.files = Some(files);
                served
            }
        }
    }

    /// Build `spec` with `config` and serve it until the test ends; `database` is the guard of
    /// its databases (empty when another guard, such as [`Provisioned`], owns them).
    pub async fn serve(
        spec: &'static crate::service::Spec,
        config: crate::service::Config,
        database: TestDatabases,
    ) -> Served {
        let app = crate::service::build(spec, config).await.expect("build");
        let listener = crate::http::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(app.clone().run(listener, std::future::pending()));
        Served {
            url,
            http: reqwest::Client::new(),
            app,
            database,
            files: None,
        }
    }

    /// `POST path` with a JSON body and an optional `Idempotency-Key`: status and JSON body
    /// (`null` if the body is not JSON).
    pub async fn post(
        &self,
        path: &str,
        key: Option<&str>,
        body: serde_json::Value,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut req = self.http.post(format!("{}{path}", self.url)).json(&body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        Self::answer(req.send().await.unwrap()).await
    }

    /// `GET path`: status and JSON body.
    pub async fn get(&self, path: &str) -> (reqwest::StatusCode, serde_json::Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        Self::answer(resp).await
    }

    async fn answer(resp: reqwest::Response) -> (reqwest::StatusCode, serde_json::Value) {
        let status = resp.status();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Rows in `table` of the service's database (a plain identifier).
    pub async fn count(&self, table: &str) -> i64 {
        assert!(
            table.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{table:?} is not a plain table name"
        );
        let sql = format!("SELECT count(*) FROM {table}");
        match &self.app.db {
            crate::store::Db::Postgres(pool) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
            }
            crate::store::Db::Sqlite(pool) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
            }
        }
        .unwrap()
    }

    /// Install a fault (`POST /faults`), which must be accepted.
    pub async fn fault(&self, spec: serde_json::Value) {
        let (s, b) = self.post("/faults", None, spec).await;
        assert_eq!(s, reqwest::StatusCode::CREATED, "{b}");
    }
}

/// Assert that an answer is the problem `urn:tandem:problem:{slug}` with status `want`.
pub fn assert_problem(
    status: reqwest::StatusCode,
    body: &serde_json::Value,
    want: reqwest::StatusCode,
    slug: &str,
) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["type"], format!("urn:tandem:problem:{slug}"), "{body}");
    assert_eq!(body["status"], want.as_u16(), "{body}");
}

/// `field` of each item of the JSON array `list`, as strings (panics where `list` is not an
/// array or a `field` is not a string).
pub fn strings<'a>(list: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    let items = list
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"));
    items
        .iter()
        .map(|item| {
            item[field]
                .as_str()
                .unwrap_or_else(|| panic!("no string `{field}` in {item}"))
        })
        .collect()
}

/// The methods a route table can serve ([`crate::api`]), as OpenAPI names them.
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// The server at `base` and its `GET /openapi.json` agree, seen from outside: every documented
/// operation is routed (its answer is not the router's 404 "no such route" or 405 fallback, and
/// its status is one the operation documents), and every other method on a documented path is
/// that 405. Routes exist only through [`crate::api::Api`], which documents each as it routes
/// it; this catches the two drifting apart (a path template or method documented but routed
/// otherwise, a method routed outside the table). Requests carry no `Idempotency-Key` and an
/// empty object as body, so they are refused before any effect. Returns the operations
/// checked.
pub async fn assert_documented(base: &str) -> usize {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let doc: serde_json::Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0", "{doc}");
    let paths = doc["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (template, item) in paths {
        let path = concrete_path(template, item);
        for method in METHODS {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut req = http.request(m, format!("{base}{path}"));
            let op = item.get(method);
            if op.and_then(|o| o.get("requestBody")).is_some() {
                req = req.json(&serde_json::json!({}));
            }
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            let fallback_404 =
                status == reqwest::StatusCode::NOT_FOUND && body["detail"] == "no such route";
            let fallback_405 = body["type"] == "urn:tandem:problem:method-not-allowed";
            match op {
                Some(op) => {
                    assert!(
                        !fallback_404 && !fallback_405,
                        "{} {template} is documented but not routed: {status} {body}",
                        method.to_uppercase()
                    );
                    assert!(
                        op["responses"].get(status.as_str()).is_some(),
                        "{} {template} answered {status}, which it does not document: {body}",
                        method.to_uppercase()
                    );
                    checked += 1;
                }
                None => assert!(
                    fallback_405,
                    "{} {template} is routed but not documented: {status} {body}",
                    method.to_uppercase()
                ),
            }
        }
    }
    checked
}

/// `template` with each path parameter filled: a fresh UUID where the document says so,
/// `x1` otherwise.
fn concrete_path(template: &str, item: &serde_json::Value) -> String {
    let uuid_params: Vec<&str> = METHODS
        .iter()
        .filter_map(|m| item.get(*m)?.get("parameters")?.as_array())
        .flatten()
        .filter(|p| p["in"] == "path" && p["schema"]["format"] == "uuid")
        .filter_map(|p| p["name"].as_str())
        .collect();
    template
        .split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) if uuid_params.contains(&name) => uuid::Uuid::now_v7().to_string(),
                Some(_) => "x1".to_string(),
                None => seg.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// Run each named test on both stores: `on_both_stores!(a, b)` where each is an `async fn
/// a(store: Store)` in scope makes the tests `pg::a`, `sqlite::a`, `pg::b`, `sqlite::b` (a
/// store-specific test is an ordinary `#[tokio::test]` beside them).
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        /// The conformance tests on Postgres.
        mod pg {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::testing::Store::Postgres).await
                }
            )*
        }
        /// The conformance tests on SQLite.
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::testing::Store::Sqlite).await
                }
            )*
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exists(name: &str) -> bool {
        let mut c = crate::db::admin_connection(&server_url()).await.unwrap();
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut c)
            .await
            .unwrap()
    }

    async fn max_prepared_transactions(url: &str) -> i64 {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let v: String = sqlx::query_scalar("SHOW max_prepared_transactions")
            .fetch_one(&mut c)
            .await
            .unwrap();
        v.parse().unwrap()
    }

    #[tokio::test]
    async fn a_passing_test_drops_its_database_even_with_a_prepared_transaction() {
        let db = fresh_database("dropcheck").await;
        let (name, url) = (db.names()[0].clone(), db.first_url());
        assert!(exists(&name).await);
        if max_prepared_transactions(&url).await > 0 {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            // Prepared transaction ids are server-wide: this database's name makes it unique.
            let sql = format!(
                "CREATE TABLE t (x int); BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION '{name}'"
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut c)
                .await
                .unwrap();
            let _ = c.close().await;
        } else {
            missing_prerequisite(
                "prepared transactions (max_prepared_transactions > 0)",
                "ALTER SYSTEM SET max_prepared_transactions = 256 and restart Postgres (.ci/steps/10-postgres.sh does)",
            );
        }
        drop(db);
        // Dropped in the background after DROP_WAIT at the latest (checkpoints are slow on a
        // busy server): wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while exists(&name).await {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} was not dropped"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    #[tokio::test]
    async fn a_failing_test_keeps_its_database() {
        let db = fresh_database("keepcheck").await;
        let name = db.names()[0].clone();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _db = db;
            panic!("a failing test (on purpose)");
        }));
        assert!(panicked.is_err());
        assert!(exists(&name).await, "{name} is kept after a failure");
        crate::db::drop_database(&server_url(), &name)
            .await
            .unwrap();
        assert!(!exists(&name).await);
    }

    #[test]
    #[should_panic(expected = "missing prerequisite in CI: initdb")]
    fn in_ci_a_missing_prerequisite_fails() {
        missing(true, "initdb", "apt-get install postgresql");
    }

    #[test]
    fn outside_ci_a_missing_prerequisite_skips() {
        missing(false, "initdb", "apt-get install postgresql");
    }
}
