//! Database connections: create the service's own database if it does not exist, then open a
//! bounded pool. Every process sizes its pool explicitly; the shared development server allows
//! 100 connections in all (see README, "Configuration").

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// Open a pool of at most `max_connections` on `url`, creating the database first if missing.
/// Retries with backoff for about 30 s while the server is not reachable (so a stack that starts
/// before Postgres does still comes up).
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let opts =
        PgConnectOptions::from_str(url).with_context(|| format!("invalid database URL {url:?}"))?;
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
        .context("connecting to the database")?;
    Ok(pool)
}

fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<sqlx::Error>()
            .is_some_and(|e| matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut))
            || c.downcast_ref::<std::io::Error>().is_some()
    }) || e.to_string().contains("the database system is starting up")
}

/// `CREATE DATABASE` if it does not exist yet (tolerating a concurrent creator).
pub async fn create_database_if_missing(opts: &PgConnectOptions) -> anyhow::Result<()> {
    let name = opts.get_database().unwrap_or("postgres").to_string();
    // Connect to the maintenance database of the same server to check / create.
    let admin = opts.clone().database("postgres");
    let mut conn = admin
        .connect()
        .await
        .context("connecting to the postgres maintenance database")?;
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
                return Err(e).with_context(|| format!("creating database {name}"));
            }
        } else {
            tracing::info!(database = %name, "created database");
        }
    }
    Ok(())
}
