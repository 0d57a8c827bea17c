//! What the orchestrator's integration tests share: an orchestrator on a fresh database (Postgres,
//! or with [`start_with`] either store: [`on_both_stores!`] runs a test on each), served on an
//! ephemeral port, with a client.

#![allow(dead_code)] // each test binary uses its own part

pub mod participants;

use std::time::Duration;

use serde_json::Value;

pub struct Orch {
    pub url: String,
    pub http: reqwest::Client,
    /// The orchestrator's store, for what a test reads directly.
    pub store: orchestrator::store::Store,
    pub database_url: String,
    /// Dropped with the test's database when the test passes (kept when it fails).
    /// `None` for a second instance on another's database.
    pub databases: Option<tandem_kit::testing::TestDatabases>,
    /// A SQLite store's directory, removed when the test passes.
    pub sqlite_dir: Option<SqliteDir>,
}

/// Which store an orchestrator runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A SQLite store's data directory, removed when the test passes.
pub struct SqliteDir(pub std::path::PathBuf);

impl Drop for SqliteDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Run each test `async fn name(backend: Backend)` on both stores: `pg::name` and
/// `sqlite::name`.
#[macro_export]
macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod pg {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($crate::common::Backend::Postgres).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($crate::common::Backend::Sqlite).await
                }
            )*
        }
    };
}

/// An orchestrator whose services all point at `service_url`, on a fresh Postgres database.
pub async fn start(
    name: &str,
    service_url: &str,
    tweak: impl FnOnce(&mut orchestrator::Config),
) -> Orch {
    start_with(Backend::Postgres, name, service_url, tweak).await
}

/// [`start`] on a fresh store of `backend`.
pub async fn start_with(
    backend: Backend,
    name: &str,
    service_url: &str,
    tweak: impl FnOnce(&mut orchestrator::Config),
) -> Orch {
    match backend {
        Backend::Postgres => {
            let databases = tandem_kit::testing::fresh_database(name).await;
            let mut orch = start_on(databases.first_url(), service_url, tweak).await;
            orch.databases = Some(databases);
            orch
        }
        Backend::Sqlite => {
            let dir =
                std::env::temp_dir().join(format!("tandem-orch-{name}-{}", uuid::Uuid::now_v7()));
            let url = tandem_kit::sqlite::url(&dir.join("orchestrator.db"));
            let mut orch = start_on(url, service_url, tweak).await;
            orch.sqlite_dir = Some(SqliteDir(dir));
            orch
        }
    }
}

/// Another orchestrator instance on `database_url` (the first instance's guard owns it).
pub async fn start_on(
    database_url: String,
    service_url: &str,
    tweak: impl FnOnce(&mut orchestrator::Config),
) -> Orch {
    let mut c = orchestrator::Config::new(&database_url, service_url, service_url, service_url);
    c.listen_addr = ([127, 0, 0, 1], 0).into();
    c.db_pool_size = 4;
    tweak(&mut c);
    let app = orchestrator::build(c)
        .await
        .expect("the orchestrator builds");
    let listener = tandem_kit::http::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(app.run(listener, std::future::pending()));
    let store = orchestrator::store::Store::open(&database_url, None, 2)
        .await
        .unwrap();
    Orch {
        url,
        http: reqwest::Client::new(),
        store,
        database_url,
        databases: None,
        sqlite_dir: None,
    }
}

impl Orch {
    pub async fn post(&self, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        answer(r).await
    }

    pub async fn get(&self, path: &str) -> (reqwest::StatusCode, Value) {
        answer(
            self.http
                .get(format!("{}{path}", self.url))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// The Postgres pool (a test of what only Postgres has).
    pub fn pool(&self) -> &sqlx::PgPool {
        self.store.postgres().expect("an orchestrator on Postgres")
    }

    /// Rows in an orchestrator table.
    pub async fn count(&self, table: &str) -> i64 {
        use orchestrator::store::Store;
        assert!(table.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        let sql = format!("SELECT count(*) FROM {table}");
        match &self.store {
            Store::Postgres(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(p)
                .await
                .unwrap(),
            Store::Sqlite(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(p)
                .await
                .unwrap(),
        }
    }

    /// The saga once it settles (long poll), failing the test after `within`.
    pub async fn settled(&self, id: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (s, v) = self.get(&format!("/sagas/{id}?wait=5")).await;
            assert_eq!(s, 200, "{v}");
            if matches!(
                v["status"].as_str(),
                Some("completed" | "compensated" | "failed")
            ) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "saga did not settle: {v}"
            );
        }
    }
}

impl Orch {
    /// The transaction once it is committed or aborted, failing the test after `within`.
    pub async fn settled_txn(&self, id: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (s, v) = self.get(&format!("/transactions/{id}?wait=5")).await;
            assert_eq!(s, 200, "{v}");
            if matches!(v["state"].as_str(), Some("committed" | "aborted")) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "transaction did not settle: {v}"
            );
        }
    }
}

/// Assert that the transaction `t` settled on `decision` ("commit" or "abort"), in the state
/// that goes with it.
pub fn assert_decided(t: &Value, decision: &str) {
    let state = if decision == "commit" {
        "committed"
    } else {
        "aborted"
    };
    assert_eq!(
        (t["state"].as_str(), t["decision"].as_str()),
        (Some(state), Some(decision)),
        "{t}"
    );
}

async fn answer(r: reqwest::Response) -> (reqwest::StatusCode, Value) {
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}
