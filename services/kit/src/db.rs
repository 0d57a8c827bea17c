//! Database connections: create the service's own database if it does not exist, then open a
//! bounded pool. Every process sizes its pool explicitly; the shared development server allows
//! 100 connections in all (see README, "Configuration"). Also the database URL of a name on a
//! server ([`database_url`]) and [`drop_database`] (its prepared transactions rolled back first),
//! which the stack launcher, the bench and the tests' cleanup share.

use std::str::FromStr;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use crate::Error;

type Result<T> = std::result::Result<T, Error>;

fn parse_url(url: &str) -> Result<PgConnectOptions> {
    PgConnectOptions::from_str(url).map_err(|source| Error::DatabaseUrl {
        url: url.to_string(),
        source,
    })
}

/// Open a pool of at most `max_connections` on `url`, creating the database first if missing.
/// Retries with backoff for about 30 s while the server is not reachable (so a stack that starts
/// before Postgres does still comes up).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    let opts = parse_url(url)?;
    let opts = opts.log_statements(tracing::log::LevelFilter::Trace);
    let retry = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(20);
    (|| async { create_database_if_missing(&opts).await })
        .retry(retry)
        .when(is_transient)
        .notify(|e, d| tracing::warn!(error = %e, retry_in = ?d, "database not reachable yet"))
        .await?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(Error::sql("connecting to the database"))?;
    Ok(pool)
}

/// Worth retrying: the server is not reachable yet, or still starting up.
fn is_transient(e: &Error) -> bool {
    e.as_sqlx().is_some_and(|e| {
        matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)
            || e.to_string().contains("the database system is starting up")
    })
}

/// The same server URL with another database name (user, host, port and query kept).
pub fn database_url(server_url: &str, name: &str) -> String {
    let Some(scheme_end) = server_url.find("://") else {
        return server_url.to_string();
    };
    let rest = &server_url[scheme_end + 3..];
    let (before_query, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
    let host_part = before_query.split('/').next().unwrap_or(before_query);
    format!("{}://{host_part}/{name}{query}", &server_url[..scheme_end])
}

/// Connect to the maintenance database `postgres` of the server of `url`.
pub async fn admin_connection(url: &str) -> Result<sqlx::PgConnection> {
    parse_url(url)?
        .database("postgres")
        .connect()
        .await
        .map_err(Error::sql(
            "connecting to the postgres maintenance database",
        ))
}

/// Drop database `name` on the server of `server_url`, if it exists. Its prepared transactions
/// (two-phase commit) would make `DROP DATABASE` fail, and only a session in that database may
/// finish them: they are rolled back from there first. Open sessions are ended (`FORCE`).
pub async fn drop_database(server_url: &str, name: &str) -> Result<()> {
    rollback_prepared(server_url, name).await?;
    let mut admin = admin_connection(server_url).await?;
    let sql = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin)
        .await
        .map_err(Error::sql(format!("dropping database {name}")))?;
    Ok(())
}

/// Roll back every prepared transaction of database `name` (from a session in it, the only
/// place that may finish them); returns how many there were.
pub async fn rollback_prepared(server_url: &str, name: &str) -> Result<usize> {
    let mut admin = admin_connection(server_url).await?;
    let gids: Vec<String> =
        sqlx::query_scalar("SELECT gid FROM pg_prepared_xacts WHERE database = $1")
            .bind(name)
            .fetch_all(&mut admin)
            .await?;
    admin.close().await?;
    let n = gids.len();
    if !gids.is_empty() {
        let opts = parse_url(&database_url(server_url, name))?;
        let mut own = opts
            .connect()
            .await
            .map_err(Error::sql(format!("connecting to {name}")))?;
        for gid in gids {
            let sql = format!("ROLLBACK PREPARED '{}'", gid.replace('\'', "''"));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut own)
                .await?;
        }
        own.close().await?;
    }
    Ok(n)
}

/// `CREATE DATABASE` if it does not exist yet (tolerating a concurrent creator).
pub async fn create_database_if_missing(opts: &PgConnectOptions) -> Result<()> {
    let name = opts.get_database().unwrap_or("postgres").to_string();
    // Connect to the maintenance database of the same server to check / create.
    let mut conn = opts
        .clone()
        .database("postgres")
        .connect()
        .await
        .map_err(Error::sql(
            "connecting to the postgres maintenance database",
        ))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut conn)
            .await
        {
            let dup = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04" || c == "23505");
            if !dup {
                return Err(Error::sql(format!("creating database {name}"))(e));
            }
        } else {
            tracing::info!(database = %name, "created database");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            super::database_url(
                "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
                "x"
            ),
            "postgres://postgres@127.0.0.1:5432/x?sslmode=disable"
        );
        assert_eq!(
            super::database_url("postgres://h:1", "y"),
            "postgres://h:1/y"
        );
        assert_eq!(
            super::database_url("postgres://h:1?a=b", "y"),
            "postgres://h:1/y?a=b"
        );
    }
}
