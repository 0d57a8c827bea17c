//! Test support: a fresh, empty database per test on the real Postgres.
//!
//! The server is `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! Databases are named `tandem_t_<prefix>_<random>` and left behind for inspection; `.ci/run`
//! drops them before each run.

use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use std::str::FromStr;

pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Create a new empty database and return its URL.
pub async fn fresh_database_url(prefix: &str) -> String {
    let base = server_url();
    let opts = PgConnectOptions::from_str(&base).expect("TEST_DATABASE_URL is a valid URL");
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let prefix: String = prefix
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
    let name = format!("tandem_t_{prefix}_{}", &suffix[suffix.len() - 12..]);
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
    with_database(&base, &name)
}

/// The same server URL with another database name.
pub fn with_database(url: &str, name: &str) -> String {
    match url.find("://") {
        Some(scheme_end) => {
            let rest = &url[scheme_end + 3..];
            let (before_query, query) = match rest.find('?') {
                Some(q) => (&rest[..q], &rest[q..]),
                None => (rest, ""),
            };
            let host_part = match before_query.find('/') {
                Some(slash) => &before_query[..slash],
                None => before_query,
            };
            format!("{}://{}/{}{}", &url[..scheme_end], host_part, name, query)
        }
        None => url.to_string(),
    }
}

/// A service served in-process on an ephemeral port, on a fresh database, with an HTTP client:
/// what the services' own tests start from.
pub struct Served {
    pub url: String,
    pub http: reqwest::Client,
    pub app: crate::service::App,
}

impl Served {
    /// Build `spec` on a fresh database (`adjust` may change the configuration) and serve it
    /// until the test ends.
    pub async fn start(
        spec: &'static crate::service::Spec,
        adjust: impl FnOnce(&mut crate::service::Config),
    ) -> Served {
        let mut config = crate::service::Config::with_database(fresh_database_url(spec.name).await);
        adjust(&mut config);
        let app = crate::service::build(spec, config).await.expect("build");
        let listener = crate::http::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(app.clone().run(listener, std::future::pending()));
        Served {
            url,
            http: reqwest::Client::new(),
            app,
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
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.app.pool)
            .await
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

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            super::with_database(
                "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
                "x"
            ),
            "postgres://postgres@127.0.0.1:5432/x?sslmode=disable"
        );
        assert_eq!(
            super::with_database("postgres://h:1", "y"),
            "postgres://h:1/y"
        );
    }
}
