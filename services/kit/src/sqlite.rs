//! SQLite, the embedded store: what `cargo demo` and `tandem up` run on when no Postgres URL is
//! given (zero set-up; production stays on Postgres). A component chooses SQLite only by its URL
//! (`sqlite:///path/to/file.db`, see [`is_sqlite`]): nothing is auto-detected.
//!
//! Every connection is opened the same way ([`options`]):
//!
//! - **WAL** journal: readers do not block the writer, and a commit is one append;
//! - **`synchronous = FULL`**: a commit is on disk (WAL fsynced) before it is acknowledged, so
//!   acknowledged work survives a power cut, not only a kill -9 (`NORMAL` would lose the last
//!   commits on power loss in WAL mode);
//! - a **busy timeout** ([`BUSY_TIMEOUT`]): a writer waits for the lock instead of failing at
//!   once with "database is locked";
//! - foreign keys enforced (SQLite's default is off).
//!
//! Write transactions start with **`BEGIN IMMEDIATE`** ([`begin`]): they take the write lock
//! first. A deferred transaction that reads and then writes cannot upgrade its lock while
//! another writer holds it, and fails with "database is locked" whatever the busy timeout (the
//! timeout cannot help: waiting would deadlock). SQLite has one writer at a time, which is
//! what makes a conditional `UPDATE … WHERE available >= $n` safe without row locks.
//!
//! [`Exclusive`] is a lock file beside a database file: what refuses a second orchestrator on
//! the same data directory (Postgres shares work between instances with leases; SQLite is one
//! process's store).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use crate::Error;

/// How long a writer waits for SQLite's write lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `url` names a SQLite database (`sqlite:…`).
pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// The URL of the SQLite file `path`.
pub fn url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// The options every connection to `url` is opened with (see the module docs); the file is
/// created if missing.
pub fn options(url: &str) -> Result<SqliteConnectOptions, Error> {
    let opts = SqliteConnectOptions::from_str(url).map_err(|source| Error::DatabaseUrl {
        url: url.to_string(),
        source,
    })?;
    Ok(opts
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true))
}

/// The database file `url` names (None for an in-memory database).
pub fn file(url: &str) -> Result<Option<PathBuf>, Error> {
    let opts = options(url)?;
    // sqlx names an in-memory database `file:sqlx-in-memory-<n>`, not `:memory:`: look at
    // what was asked for.
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(None);
    }
    let path = opts.get_filename();
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    Ok(Some(path.to_path_buf()))
}

/// Open a pool of at most `max_connections` on `url`, creating the file (and its directory)
/// if missing.
pub async fn open(url: &str, max_connections: u32) -> Result<SqlitePool, Error> {
    if let Some(path) = file(url)?
        && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|e| Error::Connect(Box::new(e)))?;
    }
    SqlitePoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options(url)?)
        .await
        .map_err(Error::sql(format!("opening the SQLite database {url}")))
}

/// Begin a write transaction: `BEGIN IMMEDIATE` (see the module docs).
pub async fn begin(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

/// What one connection runs with (see the module docs): read back by [`connection_settings`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `wal`.
    pub journal_mode: String,
    /// 2 is `FULL`.
    pub synchronous: i64,
    pub busy_timeout_ms: i64,
    /// 1: enforced.
    pub foreign_keys: i64,
}

/// The settings of **every** connection of `pool`, all held at once (so that none is read
/// twice): what the tests assert, since a kill -9 cannot show `synchronous = FULL`.
pub async fn connection_settings(pool: &SqlitePool) -> Result<Vec<Settings>, sqlx::Error> {
    let mut conns = Vec::new();
    for _ in 0..pool.options().get_max_connections() {
        conns.push(pool.acquire().await?);
    }
    let mut out = Vec::new();
    for c in &mut conns {
        out.push(Settings {
            journal_mode: sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut **c)
                .await?,
            synchronous: sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut **c)
                .await?,
            busy_timeout_ms: sqlx::query_scalar("PRAGMA busy_timeout")
                .fetch_one(&mut **c)
                .await?,
            foreign_keys: sqlx::query_scalar("PRAGMA foreign_keys")
                .fetch_one(&mut **c)
                .await?,
        });
    }
    Ok(out)
}

/// A lock file held for as long as this value lives: `<database file>.lock`, holding the
/// holder's process id. The operating system drops the lock when the process ends, even by
/// kill -9, so a stale file never blocks a restart.
#[derive(Debug)]
pub struct Exclusive {
    _file: File,
    pub path: PathBuf,
}

/// Why [`Exclusive::take`] refused.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{path} is locked: another {what} is running on this data directory (process {holder}). \
         Several instances sharing work need Postgres (DATABASE_URL=postgres://…); on SQLite, \
         run one, or give each its own data directory"
    )]
    Held {
        path: PathBuf,
        what: String,
        holder: String,
    },
    #[error("lock file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Exclusive {
    /// Take the lock beside the database file of `url` for `what` (e.g. "orchestrator"), or
    /// say who holds it. An in-memory database needs no lock (None).
    pub fn take(
        url: &str,
        what: &str,
    ) -> Result<Option<Exclusive>, Box<dyn std::error::Error + Send + Sync>> {
        let Some(db) = file(url)? else {
            return Ok(None);
        };
        let mut name = db.clone().into_os_string();
        name.push(".lock");
        let path = PathBuf::from(name);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| LockError::Io {
                path: path.clone(),
                source,
            })?;
        }
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path)
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default();
                return Err(LockError::Held {
                    path,
                    what: what.to_string(),
                    holder: if holder.is_empty() {
                        "unknown".into()
                    } else {
                        holder
                    },
                }
                .into());
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e).into()),
        }
        file.set_len(0).map_err(io)?;
        std::fs::write(&path, std::process::id().to_string()).map_err(io)?;
        Ok(Some(Exclusive { _file: file, path }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_url(name: &str) -> (PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("tandem-sqlite-{}", uuid::Uuid::now_v7()));
        let path = dir.join(name);
        let url = url(&path);
        (dir, url)
    }

    #[tokio::test]
    async fn every_connection_has_wal_full_sync_busy_timeout_and_foreign_keys() {
        let (dir, url) = temp_url("a.db");
        let pool = open(&url, 3).await.unwrap();
        let settings = connection_settings(&pool).await.unwrap();
        assert_eq!(settings.len(), 3, "every connection of the pool");
        for c in settings {
            assert_eq!(c.journal_mode, "wal");
            assert_eq!(c.synchronous, 2, "synchronous = FULL is 2");
            assert_eq!(c.busy_timeout_ms, BUSY_TIMEOUT.as_millis() as i64);
            assert_eq!(c.foreign_keys, 1);
        }
        pool.close().await;
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn immediate_transactions_serialise_read_then_write() {
        // Two transactions that each read a counter and then write it: deferred ones would fail
        // with "database is locked" (neither can upgrade); IMMEDIATE ones take turns.
        let (dir, url) = temp_url("b.db");
        let pool = open(&url, 8).await.unwrap();
        sqlx::query("CREATE TABLE c (n INTEGER NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO c VALUES (0)")
            .execute(&pool)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    let mut tx = begin(&pool).await.unwrap();
                    let n: i64 = sqlx::query_scalar("SELECT n FROM c")
                        .fetch_one(&mut *tx)
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                    sqlx::query("UPDATE c SET n = $1")
                        .bind(n + 1)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let n: i64 = sqlx::query_scalar("SELECT n FROM c")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 80, "no lost update");
        pool.close().await;
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_second_holder_of_the_lock_file_is_refused_and_named() {
        let (dir, url) = temp_url("c.db");
        let first = Exclusive::take(&url, "orchestrator").unwrap().unwrap();
        let err = Exclusive::take(&url, "orchestrator")
            .unwrap_err()
            .to_string();
        assert!(err.contains("another orchestrator"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        assert!(err.contains("Postgres"), "{err}");
        drop(first);
        assert!(Exclusive::take(&url, "orchestrator").unwrap().is_some());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn an_in_memory_database_has_no_file_and_takes_no_lock() {
        assert_eq!(file("sqlite::memory:").unwrap(), None);
        assert_eq!(file("sqlite://x.db?mode=memory").unwrap(), None);
        assert!(
            Exclusive::take("sqlite::memory:", "orchestrator")
                .unwrap()
                .is_none()
        );
        assert_eq!(
            file("sqlite:///tmp/d/x.db").unwrap(),
            Some(PathBuf::from("/tmp/d/x.db"))
        );
    }

    #[test]
    fn only_sqlite_urls_are_sqlite() {
        assert!(is_sqlite("sqlite:///tmp/x.db"));
        assert!(is_sqlite("sqlite::memory:"));
        assert!(!is_sqlite("postgres://postgres@127.0.0.1/x"));
    }
}
