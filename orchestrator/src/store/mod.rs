//! The orchestrator's saga store: one interface, [`Store`], two implementations chosen once by
//! the `DATABASE_URL` ([`Store::open`]): Postgres (the default: the free functions of this
//! module, [`create`] and [`transition`]; migrations in `migrations/orchestrator/`) and SQLite
//! (the embedded store: [`sqlite`]; migrations in `migrations/sqlite/orchestrator/`). Leases
//! of sagas run on the same [`Store`] ([`crate::lease::Leases`]).
//!
//! - here: [`Store`] (dispatching each operation to its backend), the saga row ([`SagaRow`], the lease kind [`SAGAS`]), reads, definitions;
//! - [`create`]: creating a run: what sagas and transactions share (client idempotency key,
//!   business key), and a saga's row with its first transition;
//! - [`transition`]: persisting transitions, fenced by the lease epoch — one statement for any
//!   number of sagas, written through the group-commit writer ([`crate::writer`]).
//!
//! Leases of sagas (claim, renew, hand-back, take) are [`crate::lease`]'s, on [`SAGAS`].
//!
//! Commit budget on the hot path: creating a saga is one statement (or one transaction with a
//! client key); each later transition is one statement shared with the other sagas waiting.

pub mod create;
pub mod sqlite;
pub mod transition;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{FromRow, PgExecutor, Row};
use uuid::Uuid;

use crate::lease::{LeaseColumns, LeaseKind, Leased, RowLease};
use crate::saga::{SagaState, SagaStatus};

pub use create::{Created, CreatedSaga, NewRun, NewSaga, RunKind, create_saga};
pub use transition::{NextRun, TransitionBatch, persist_transitions};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/orchestrator");

/// The channel an instance NOTIFYs when it hands sagas back (the payload is its instance id).
pub const WORK_CHANNEL: &str = "tandem_work";

/// The saga columns, as a literal so queries stay `&'static str`.
macro_rules! saga_columns {
    () => {
        "id, definition, version, business_key, input, input_hash, status, state, \
         next_run_at, lease_owner, lease_until, lease_epoch, created_at, updated_at"
    };
}
pub(crate) use saga_columns;

/// Sagas as a kind of leased work.
pub const SAGAS: LeaseKind = LeaseKind {
    name: "saga",
    table: "sagas",
    columns: saga_columns!(),
    lease: LeaseColumns::STANDARD,
    channel: WORK_CHANNEL,
};

/// What a run's row (a saga, a transaction) keeps of its request: what [`NewRun`] wrote.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunColumns {
    pub definition: String,
    pub version: String,
    pub business_key: Option<String>,
    pub input: Value,
    /// SHA-256 (hex) of the canonical input: the same business key with another input is a
    /// conflict.
    pub input_hash: String,
}

/// A saga as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SagaRow {
    pub id: Uuid,
    #[sqlx(flatten)]
    pub run: RunColumns,
    #[sqlx(try_from = "String")]
    pub status: SagaStatus,
    #[sqlx(json)]
    pub state: SagaState,
    #[sqlx(flatten)]
    pub lease: RowLease,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn decode_error(what: &str, e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(format!("{what}: {e}").into())
}

impl Leased for SagaRow {
    fn id(&self) -> Uuid {
        self.id
    }
    fn epoch(&self) -> i64 {
        self.lease.epoch
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EventRow {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub step: Option<String>,
    pub detail: Value,
}

/// The events of a saga as one JSON array (`jsonb_agg` over `saga_events` aliased `e`).
macro_rules! events_json {
    () => {
        "coalesce(jsonb_agg(jsonb_build_object('seq', e.seq, 'at', e.at, 'kind', e.kind, \
         'step', e.step, 'detail', e.detail) ORDER BY e.seq), '[]'::jsonb)"
    };
}
pub(crate) use events_json;

/// The `events` column of a row that selected [`events_json`] as `events`.
fn events_from_json(row: &PgRow) -> Result<Vec<EventRow>, sqlx::Error> {
    let v: Value = row.try_get("events")?;
    serde_json::from_value(v).map_err(|e| decode_error("saga events", e))
}

/// A row with the saga columns and its `events`.
fn saga_and_events(row: &PgRow) -> Result<(SagaRow, Vec<EventRow>), sqlx::Error> {
    Ok((SagaRow::from_row(row)?, events_from_json(row)?))
}

/// A query, bound and not yet run.
pub(crate) type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Run an `INSERT … ON CONFLICT DO NOTHING` of one row: whether it inserted it.
pub(crate) async fn inserted(db: impl PgExecutor<'_>, q: PgQuery<'_>) -> Result<bool, sqlx::Error> {
    Ok(q.execute(db).await?.rows_affected() == 1)
}

/// The rows `q` selects, decoded; counted as a committed read.
pub(crate) async fn read_rows<R>(pool: &PgPool, q: PgQuery<'_>) -> Result<Vec<R>, sqlx::Error>
where
    R: for<'r> FromRow<'r, PgRow>,
{
    let rows = q.fetch_all(pool).await?;
    tandem_kit::stats::read_committed(pool);
    rows.iter().map(R::from_row).collect()
}

pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ---------- definitions ----------

/// Store a definition version; returns true if it was new.
pub async fn insert_definition(
    pool: &PgPool,
    name: &str,
    version: &str,
    body: &Value,
) -> Result<bool, sqlx::Error> {
    let q = sqlx::query(
        "INSERT INTO definitions (name, version, body) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    );
    let new = inserted(pool, q.bind(name).bind(version).bind(body)).await?;
    tandem_kit::stats::write_committed(pool);
    Ok(new)
}

/// Every stored definition version: (name, version, body), oldest first.
pub async fn all_definitions(pool: &PgPool) -> Result<Vec<(String, String, Value)>, sqlx::Error> {
    let rows = sqlx::query("SELECT name, version, body FROM definitions ORDER BY seq")
        .fetch_all(pool)
        .await?;
    tandem_kit::stats::read_committed(pool);
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("name")?,
                r.try_get("version")?,
                r.try_get("body")?,
            ))
        })
        .collect()
}

/// The stored versions of `name`, newest first, at most `limit`: (version, body, created_at).
pub async fn definition_versions(
    pool: &PgPool,
    name: &str,
    limit: i64,
) -> Result<Vec<(String, Value, DateTime<Utc>)>, sqlx::Error> {
    let rows = sqlx::query_as(
        "SELECT version, body, created_at FROM definitions WHERE name = $1 \
         ORDER BY seq DESC LIMIT $2",
    )
    .bind(name)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    tandem_kit::stats::read_committed(pool);
    Ok(rows)
}

pub async fn definition(
    pool: &PgPool,
    name: &str,
    version: &str,
) -> Result<Option<Value>, sqlx::Error> {
    sqlx::query_scalar("SELECT body FROM definitions WHERE name = $1 AND version = $2")
        .bind(name)
        .bind(version)
        .fetch_optional(pool)
        .await
}

// ---------- reads ----------

pub async fn saga(pool: &PgPool, id: Uuid) -> Result<Option<SagaRow>, sqlx::Error> {
    Ok(saga_with_events(pool, id).await?.map(|(row, _)| row))
}

/// A saga and its event log in one query.
pub async fn saga_with_events(
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<(SagaRow, Vec<EventRow>)>, sqlx::Error> {
    let sql = concat!(
        "SELECT ",
        saga_columns!(),
        ", (SELECT ",
        events_json!(),
        " FROM saga_events e WHERE e.saga_id = s.id) AS events FROM sagas s WHERE s.id = $1"
    );
    one_by_id(pool, sql, id, saga_and_events).await
}

/// The row `sql` selects by id (`$1`), decoded with `decode`; counted as a committed read.
pub(crate) async fn one_by_id<T>(
    pool: &PgPool,
    sql: &'static str,
    id: Uuid,
    decode: impl FnOnce(&PgRow) -> Result<T, sqlx::Error>,
) -> Result<Option<T>, sqlx::Error> {
    let row = sqlx::query(sql).bind(id).fetch_optional(pool).await?;
    tandem_kit::stats::read_committed(pool);
    row.as_ref().map(decode).transpose()
}

/// What `GET /sagas` filters on (every field optional).
#[derive(Debug, Default, Clone)]
pub struct SagaFilter<'a> {
    pub status: Option<SagaStatus>,
    pub definition: Option<&'a str>,
    /// Exactly this business key (index `sagas_business_key_search`).
    pub business_key: Option<&'a str>,
    /// Exactly this saga.
    pub id: Option<Uuid>,
    /// Ids (UUIDv7, so creation times) at or after this one …
    pub from: Option<Uuid>,
    /// … and before this one (a page's cursor, or the end of a time range).
    pub before: Option<Uuid>,
}

/// One page of a newest-first list of runs (by id, a UUIDv7: creation order).
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// The cursor: only runs older than this one (the last of the previous page).
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// Sagas newest first (by id: UUIDv7 ids sort by creation time), at most `limit`.
pub async fn list(
    pool: &PgPool,
    f: &SagaFilter<'_>,
    limit: i64,
) -> Result<Vec<SagaRow>, sqlx::Error> {
    let q = sqlx::query(concat!(
        "SELECT ",
        saga_columns!(),
        " FROM sagas \
         WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR definition = $2) \
           AND ($3::uuid IS NULL OR id < $3) AND ($5::uuid IS NULL OR id >= $5) \
           AND ($6::text IS NULL OR business_key = $6) AND ($7::uuid IS NULL OR id = $7) \
         ORDER BY id DESC LIMIT $4"
    ))
    .bind(f.status.map(|s| s.as_str()))
    .bind(f.definition)
    .bind(f.before)
    .bind(limit)
    .bind(f.from)
    .bind(f.business_key)
    .bind(f.id);
    read_rows(pool, q).await
}

/// Drop at most `batch` client idempotency keys older than the retention (keys another
/// transaction holds are skipped); the number dropped.
pub async fn purge_idempotency_keys(
    pool: &PgPool,
    retention: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM idempotency_keys WHERE key IN ( \
             SELECT key FROM idempotency_keys \
             WHERE created_at < now() - make_interval(secs => $1) \
             LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(secs(retention))
    .bind(batch.max(1))
    .execute(pool)
    .await?;
    if r.rows_affected() > 0 {
        tandem_kit::stats::write_committed(pool);
    }
    Ok(r.rows_affected())
}

/// Hand saga leases back (see [`crate::lease::Leases::release`]); kept for callers that knew it
/// by this name.
pub async fn release_leases(
    pool: &PgPool,
    ids: &[Uuid],
    epochs: &[i64],
    notifier: &str,
) -> Result<u64, sqlx::Error> {
    crate::lease::Leases::new(SAGAS, pool.clone(), notifier, Duration::ZERO)
        .release(ids, epochs, notifier)
        .await
}

// ---------- the interface ----------

/// The saga store: every operation the saga side of the orchestrator needs (definitions,
/// creating a saga, transitions, reads, lists, retention; leases are
/// [`crate::lease::Leases`]'s on the same store), on Postgres or SQLite. Chosen once, by the
/// URL ([`Store::open`]); nothing above it asks which one it is. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Store {
    /// Production: several instances may share it (leases with `SKIP LOCKED`, NOTIFY).
    Postgres(PgPool),
    /// The embedded store: one instance (a lock file refuses a second one).
    Sqlite(sqlx::SqlitePool),
}

impl From<PgPool> for Store {
    fn from(p: PgPool) -> Self {
        Store::Postgres(p)
    }
}

impl From<sqlx::SqlitePool> for Store {
    fn from(p: sqlx::SqlitePool) -> Self {
        Store::Sqlite(p)
    }
}

/// Whether `url` names the embedded SQLite store (the one place the choice is read).
pub fn is_sqlite(url: &str) -> bool {
    tandem_kit::sqlite::is_sqlite(url)
}

/// A SQLite store must be a file: an in-memory database would lose every saga at exit (and be
/// one database per pooled connection).
pub fn check_sqlite_url(url: &str) -> Result<(), crate::Error> {
    let memory = url.contains(":memory:") || url.contains("mode=memory");
    let file = tandem_kit::sqlite::file(url).map_err(|e| crate::Error::Config(e.to_string()))?;
    if memory || file.is_none() {
        return Err(crate::Error::Config(format!(
            "DATABASE_URL {url} is an in-memory SQLite database: sagas must outlive the \
             process; give a file (sqlite:///path/orchestrator.db)"
        )));
    }
    Ok(())
}

impl Store {
    /// Migrate and open the store `url` names: Postgres (migrating as `owner_url`'s role when
    /// given, see `tandem_kit::db::migrate`) or SQLite (`sqlite:///path/orchestrator.db`; the
    /// file is created if missing; `owner_url` is refused: SQLite has no roles).
    pub async fn open(
        url: &str,
        owner_url: Option<&str>,
        pool_size: u32,
    ) -> Result<Store, crate::Error> {
        use crate::Error;
        if is_sqlite(url) {
            if owner_url.is_some() {
                return Err(Error::Config(
                    "DATABASE_OWNER_URL (a least-privilege Postgres role for migrations) does not \
                     apply to a SQLite DATABASE_URL: SQLite has no roles; unset it, or use \
                     Postgres"
                        .into(),
                ));
            }
            check_sqlite_url(url)?;
            let pool = tandem_kit::sqlite::open(url, pool_size)
                .await
                .map_err(|e| Error::Connect(e.into()))?;
            sqlite::MIGRATOR.run(&pool).await?;
            return Ok(Store::Sqlite(pool));
        }
        tandem_kit::db::migrate(url, owner_url, &MIGRATOR)
            .await
            .map_err(|e| match e {
                tandem_kit::db::MigrateFailed::Migrate(e) => Error::Migrate(e),
                other => Error::Connect(other.into()),
            })?;
        let pool = tandem_kit::db::open(url, pool_size)
            .await
            .map_err(|e| Error::Connect(e.into()))?;
        Ok(Store::Postgres(pool))
    }

    /// For logs: `postgres` or `sqlite`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// The Postgres pool, for what only Postgres offers (2PC / 3PC / Paxos Commit, LISTEN,
    /// pool metrics): None on SQLite.
    pub fn postgres(&self) -> Option<&PgPool> {
        match self {
            Store::Postgres(p) => Some(p),
            Store::Sqlite(_) => None,
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Store::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ()),
            Store::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(|_| ()),
        }
    }

    /// Store a definition version; true if it was new.
    pub async fn insert_definition(
        &self,
        name: &str,
        version: &str,
        body: &Value,
    ) -> Result<bool, sqlx::Error> {
        match self {
            Store::Postgres(p) => insert_definition(p, name, version, body).await,
            Store::Sqlite(p) => sqlite::insert_definition(p, name, version, body).await,
        }
    }

    /// Every stored definition version: (name, version, body), oldest first.
    pub async fn all_definitions(&self) -> Result<Vec<(String, String, Value)>, sqlx::Error> {
        match self {
            Store::Postgres(p) => all_definitions(p).await,
            Store::Sqlite(p) => sqlite::all_definitions(p).await,
        }
    }

    /// The stored versions of `name`, newest first, at most `limit`.
    pub async fn definition_versions(
        &self,
        name: &str,
        limit: i64,
    ) -> Result<Vec<(String, Value, DateTime<Utc>)>, sqlx::Error> {
        match self {
            Store::Postgres(p) => definition_versions(p, name, limit).await,
            Store::Sqlite(p) => sqlite::definition_versions(p, name, limit).await,
        }
    }

    pub async fn definition(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<Value>, sqlx::Error> {
        match self {
            Store::Postgres(p) => definition(p, name, version).await,
            Store::Sqlite(p) => sqlite::definition(p, name, version).await,
        }
    }

    pub async fn saga(&self, id: Uuid) -> Result<Option<SagaRow>, sqlx::Error> {
        Ok(self.saga_with_events(id).await?.map(|(row, _)| row))
    }

    /// A saga and its event log (ordered by sequence).
    pub async fn saga_with_events(
        &self,
        id: Uuid,
    ) -> Result<Option<(SagaRow, Vec<EventRow>)>, sqlx::Error> {
        match self {
            Store::Postgres(p) => saga_with_events(p, id).await,
            Store::Sqlite(p) => sqlite::saga_with_events(p, id).await,
        }
    }

    /// Sagas newest first (by id), at most `limit`.
    pub async fn list(&self, f: &SagaFilter<'_>, limit: i64) -> Result<Vec<SagaRow>, sqlx::Error> {
        match self {
            Store::Postgres(p) => list(p, f, limit).await,
            Store::Sqlite(p) => sqlite::list(p, f, limit).await,
        }
    }

    /// Create a saga (see [`create`]).
    pub async fn create_saga(&self, new: &NewSaga<'_>) -> Result<CreatedSaga, sqlx::Error> {
        match self {
            Store::Postgres(p) => create_saga(p, new).await,
            Store::Sqlite(p) => sqlite::create_saga(p, new).await,
        }
    }

    /// Persist a batch of transitions in one commit, each fenced by its epoch: the ids whose
    /// write applied (see [`transition`]).
    pub async fn persist_transitions(
        &self,
        b: &TransitionBatch,
        lease_ttl: Duration,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        match self {
            Store::Postgres(p) => persist_transitions(p, b, lease_ttl).await,
            Store::Sqlite(p) => sqlite::persist_transitions(p, b, lease_ttl).await,
        }
    }

    /// Drop at most `batch` client idempotency keys (of sagas and, on Postgres, of
    /// transactions) older than `retention`: the number dropped of each.
    pub async fn purge_keys(
        &self,
        retention: Duration,
        batch: i64,
    ) -> Result<(u64, u64), sqlx::Error> {
        match self {
            Store::Postgres(p) => Ok((
                purge_idempotency_keys(p, retention, batch).await?,
                crate::commit::store::purge_keys(p, retention, batch).await?,
            )),
            Store::Sqlite(p) => Ok((
                sqlite::purge_idempotency_keys(p, retention, batch).await?,
                0,
            )),
        }
    }

    /// One batch of finished sagas (`statuses`, untouched for `retention`, not leased): `forget`
    /// them (in every service), then delete them with their keys and events. None: another
    /// instance is purging (Postgres: an advisory lock; SQLite has one instance). The ids
    /// stay until `forget` succeeded.
    pub async fn purge_finished_sagas<E: From<sqlx::Error>>(
        &self,
        statuses: &[&str],
        retention: Duration,
        batch: i64,
        lock_key: i64,
        forget: impl AsyncFnOnce(&[Uuid]) -> Result<(), E>,
    ) -> Result<Option<u64>, E> {
        match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                    .bind(lock_key)
                    .fetch_one(&mut *tx)
                    .await?;
                if !locked {
                    return Ok(None);
                }
                let ids: Vec<Uuid> = sqlx::query_scalar(
                    "SELECT id FROM sagas \
                     WHERE status = ANY($1) AND updated_at < now() - make_interval(secs => $2) \
                       AND (lease_until IS NULL OR lease_until < now()) \
                     ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
                )
                .bind(statuses)
                .bind(secs(retention))
                .bind(batch.max(1))
                .fetch_all(&mut *tx)
                .await?;
                if ids.is_empty() {
                    return Ok(Some(0));
                }
                forget(&ids).await?;
                tandem_kit::crash::point("orchestrator.retention.after_forget");
                let deleted = delete_sagas(&mut tx, &ids, statuses).await?;
                tx.commit().await?;
                tandem_kit::stats::write_committed(pool);
                Ok(Some(deleted))
            }
            Store::Sqlite(pool) => {
                // No transaction is held across the calls (it would stop every write): the
                // delete re-checks that each saga is still finished.
                let ids = sqlite::finished_sagas(pool, statuses, retention, batch).await?;
                if ids.is_empty() {
                    return Ok(Some(0));
                }
                forget(&ids).await?;
                tandem_kit::crash::point("orchestrator.retention.after_forget");
                Ok(Some(sqlite::delete_sagas(pool, &ids, statuses).await?))
            }
        }
    }
}

/// Delete `ids` (still final) with their client keys, business keys and events; the number of
/// sagas deleted.
async fn delete_sagas(
    conn: &mut sqlx::PgConnection,
    ids: &[Uuid],
    statuses: &[&str],
) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "WITH gone AS ( \
            DELETE FROM sagas WHERE id = ANY($1) AND status = ANY($2) RETURNING id), \
         keys AS (DELETE FROM idempotency_keys WHERE saga_id IN (SELECT id FROM gone)), \
         bkeys AS (DELETE FROM business_keys WHERE kind = 'saga' AND id IN (SELECT id FROM gone)), \
         events AS (DELETE FROM saga_events WHERE saga_id IN (SELECT id FROM gone)) \
         SELECT count(*) FROM gone",
    )
    .bind(ids)
    .bind(statuses)
    .fetch_one(conn)
    .await?;
    Ok(n as u64)
}
