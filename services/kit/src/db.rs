//! Database connections: create the service's own database if it does not exist, then open a
//! bounded pool; [`migrate`] applies a component's migrations, as its owner role when an owner
//! URL is configured (least privilege, see docs/security.md) or privileged as today otherwise;
//! [`provision`] makes the roles and databases for the least-privilege set-up. Every process sizes its pool explicitly; the shared development server allows
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
    (|| async { create_database_if_missing(&opts).await })
        .retry(startup_retry())
        .when(is_transient)
        .notify(|e, d| tracing::warn!(error = %e, retry_in = ?d, "database not reachable yet"))
        .await?;
    open(url, max_connections).await
}

/// Retries while the server is not reachable yet: about 30 s.
fn startup_retry() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(20)
}

/// Open a pool of at most `max_connections` on `url`, an existing database (nothing is
/// created): the runtime pool of a least-privilege set-up. Retries like [`connect`] while the
/// server is not reachable.
pub async fn open(url: &str, max_connections: u32) -> Result<PgPool> {
    let opts = parse_url(url)?.log_statements(tracing::log::LevelFilter::Trace);
    let first = (|| async {
        opts.connect()
            .await
            .map_err(Error::sql("connecting to the database"))
    })
    .retry(startup_retry())
    .when(is_transient)
    .notify(|e, d| tracing::warn!(error = %e, retry_in = ?d, "database not reachable yet"))
    .await?;
    first.close().await.ok();
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(Error::sql("connecting to the database"))?;
    Ok(pool)
}

/// Apply `migrator` to the database of `runtime_url`.
///
/// - With `owner_url` (`DATABASE_OWNER_URL`): one connection as the owner role runs the
///   migrations and is closed; the database must exist (`tandem db provision` makes it). The
///   runtime role then only reads and writes rows (see [`provision`]).
/// - Without: the zero-setup path — the database is created if missing and the migrations run
///   as `runtime_url`'s own role, which therefore may change the schema; a warning says so (and
///   whether that role is a superuser).
pub async fn migrate(
    runtime_url: &str,
    owner_url: Option<&str>,
    migrator: &sqlx::migrate::Migrator,
) -> std::result::Result<(), MigrateFailed> {
    let url = match owner_url.filter(|u| !u.is_empty()) {
        Some(owner) => {
            let (runtime, owner_opts) = (parse_url(runtime_url)?, parse_url(owner)?);
            if runtime.get_database() != owner_opts.get_database() {
                return Err(MigrateFailed::Mismatch {
                    runtime: runtime.get_database().unwrap_or("postgres").to_string(),
                    owner: owner_opts.get_database().unwrap_or("postgres").to_string(),
                });
            }
            owner
        }
        None => {
            let opts = parse_url(runtime_url)?;
            (|| async { create_database_if_missing(&opts).await })
                .retry(startup_retry())
                .when(is_transient)
                .notify(
                    |e, d| tracing::warn!(error = %e, retry_in = ?d, "database not reachable yet"),
                )
                .await?;
            runtime_url
        }
    };
    let pool = open(url, 1).await?;
    if owner_url.is_none_or(str::is_empty) {
        let (user, superuser): (String, bool) = sqlx::query_as(
            "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&pool)
        .await?;
        if superuser {
            tracing::warn!(
                role = %user,
                "running privileged: DATABASE_OWNER_URL is not set and this role is a superuser; \
                 it creates the database if missing and applies the migrations itself. For least \
                 privilege see docs/security.md (`tandem db provision`)"
            );
        } else {
            tracing::info!(
                role = %user,
                "DATABASE_OWNER_URL is not set: the runtime role applies the migrations itself"
            );
        }
    }
    let run = migrator.run(&pool).await;
    pool.close().await;
    run.map_err(MigrateFailed::Migrate)
}

/// [`migrate`] then [`open`] a pool of `max_connections` as the runtime role: the start-up of
/// a component with one pool (`service` names it in errors).
pub async fn migrate_and_open(
    service: &'static str,
    runtime_url: &str,
    owner_url: Option<&str>,
    migrator: &sqlx::migrate::Migrator,
    max_connections: u32,
) -> Result<PgPool> {
    migrate(runtime_url, owner_url, migrator)
        .await
        .map_err(|source| Error::Migrate {
            service,
            source: Box::new(source),
        })?;
    open(runtime_url, max_connections).await
}

/// Why [`migrate`] failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateFailed {
    #[error(transparent)]
    Db(#[from] Error),
    #[error("applying the migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error(
        "DATABASE_OWNER_URL names database {owner:?} but DATABASE_URL names {runtime:?}: both must name the component's own database"
    )]
    Mismatch { runtime: String, owner: String },
}

impl From<sqlx::Error> for MigrateFailed {
    fn from(e: sqlx::Error) -> Self {
        MigrateFailed::Db(Error::Database(e))
    }
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
