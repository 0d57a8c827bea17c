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
