//! What the orchestrator's integration tests share: an orchestrator on a fresh database, served
//! on an ephemeral port, with a client.

#![allow(dead_code)] // each test binary uses its own part

pub mod participants;

use std::time::Duration;

use serde_json::Value;

pub struct Orch {
    pub url: String,
    pub http: reqwest::Client,
    pub pool: sqlx::PgPool,
    pub database_url: String,
    /// Dropped with the test's database when the test passes (kept when it fails).
    /// `None` for a second instance on another's database.
    pub databases: Option<tandem_kit::testing::TestDatabases>,
}

/// An orchestrator whose services all point at `service_url`, on a fresh database.
pub async fn start(
    name: &str,
    service_url: &str,
    tweak: impl FnOnce(&mut orchestrator::Config),
) -> Orch {
    let databases = tandem_kit::testing::fresh_database(name).await;
    let mut orch = start_on(databases.first_url(), service_url, tweak).await;
    orch.databases = Some(databases);
    orch
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
    let pool = tandem_kit::db::connect(&database_url, 2).await.unwrap();
    Orch {
        url,
        http: reqwest::Client::new(),
        pool,
        database_url,
        databases: None,
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

    /// Rows in an orchestrator table.
    pub async fn count(&self, table: &str) -> i64 {
        assert!(table.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.pool)
            .await
            .unwrap()
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
