//! Leases on any kind of leased work: sagas today, 2PC transactions next, any table tomorrow.
//!
//! A kind of work plugs in with a [`LeaseKind`]: its table, the columns a claim returns, the
//! names of its five lease columns ([`LeaseColumns`]: id, owner, expiry, fencing epoch, due
//! time) and the channel its hand-backs are announced on. [`Leases`] then builds, once, the SQL
//! every kind shares:
//!
//! - [`Leases::claim`]: take up to n due rows whose lease is free or expired
//!   (`FOR UPDATE SKIP LOCKED`, epoch + 1), and learn when the next one becomes claimable;
//! - [`Leases::renew`]: extend the unexpired leases this instance holds (one statement);
//! - [`Leases::release`]: hand leases back, each fenced by its epoch, with one `NOTIFY` per
//!   statement (see [`crate::wake`]);
//! - [`Leases::reclaim_own`]: at start-up, take back this instance identity's leases;
//! - [`Leases::take`]: lease one given row now (free only, or stealing a live lease), epoch + 1.
//!
//! The fence itself is part of each kind's own writes: every write of a leased row checks
//! `<epoch column> = <the epoch its lease was taken with>` ([`LeaseKind::fence`]), so a former
//! owner's write affects no row. Rows decode through [`Leased`]; a row with the standard
//! column names carries its lease as a [`RowLease`]. The background loops that
//! drive claims, renewals and wake-ups for a kind are in [`crate::worker`].
//!
//! Two backends, one behaviour ([`Store`]): on Postgres the statements above; on SQLite (one
//! instance, one writer at a time: no `SKIP LOCKED` needed) the same operations as one
//! `BEGIN IMMEDIATE` transaction each, with times as text ([`crate::store::sqlite`]), and no
//! NOTIFY: a hand-back is claimed again by this instance's claim loop (woken in-process when a
//! slot frees, else at its next pass).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use crate::store::sqlite::{now as sql_now, now_plus};
use crate::store::{PgQuery, Store, secs};

/// The names of a leased table's lease columns.
#[derive(Debug, Clone, Copy)]
pub struct LeaseColumns {
    /// `uuid` primary key.
    pub id: &'static str,
    /// `text`, NULL when free.
    pub owner: &'static str,
    /// `timestamptz` on the database clock, NULL when free.
    pub until: &'static str,
    /// `bigint` fencing epoch, bumped by every claim / take / reclaim.
    pub epoch: &'static str,
    /// `timestamptz`: when the row needs a worker next; NULL once there is nothing to do.
    pub due: &'static str,
}

impl LeaseColumns {
    /// `id`, `lease_owner`, `lease_until`, `lease_epoch`, `next_run_at`.
    pub const STANDARD: LeaseColumns = LeaseColumns {
        id: "id",
        owner: "lease_owner",
        until: "lease_until",
        epoch: "lease_epoch",
        due: "next_run_at",
    };
}

/// The lease of a row with the [`LeaseColumns::STANDARD`] names, as a row type decodes it
/// (`#[sqlx(flatten)]`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RowLease {
    /// When the row needs a worker next; None once there is nothing to do.
    pub next_run_at: Option<DateTime<Utc>>,
    #[sqlx(rename = "lease_owner")]
    pub owner: Option<String>,
    #[sqlx(rename = "lease_until")]
    pub until: Option<DateTime<Utc>>,
    #[sqlx(rename = "lease_epoch")]
    pub epoch: i64,
}

impl RowLease {
    /// What an API view shows of it: `{"owner", "until", "epoch"}`.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({"owner": self.owner, "until": self.until, "epoch": self.epoch})
    }
}

/// One kind of leased row.
#[derive(Debug, Clone, Copy)]
pub struct LeaseKind {
    /// For logs: `saga`, `transaction` …
    pub name: &'static str,
    pub table: &'static str,
    /// The select list a claim, reclaim or take returns (decoded by the row's [`sqlx::FromRow`]).
    pub columns: &'static str,
    pub lease: LeaseColumns,
    /// `NOTIFY` channel announcing hand-backs of this kind.
    pub channel: &'static str,
}

impl LeaseKind {
    /// The fencing predicate of a write by the holder of epoch `$n`:
    /// `"<epoch> = $n"`.
    pub fn fence(&self, param: usize) -> String {
        format!("{} = ${param}", self.lease.epoch)
    }
}

/// A leased row as a claim returns it (decoded with its [`sqlx::FromRow`]).
pub trait Leased:
    for<'r> sqlx::FromRow<'r, PgRow> + for<'r> sqlx::FromRow<'r, SqliteRow> + Send + Unpin + 'static
{
    fn id(&self) -> Uuid;
    /// The epoch this instance's lease was taken with (fences its writes).
    fn epoch(&self) -> i64;
}

/// What a claim pass found.
#[derive(Debug)]
pub struct Claimed<R> {
    /// The rows now leased to the claimer (new epoch).
    pub rows: Vec<R>,
    /// How long until the next row not claimed now becomes claimable (database clock): the later
    /// of its due time and its lease expiry. None: nothing is waiting.
    pub next_due_in: Option<Duration>,
}

/// Whether [`Leases::take`] may take a row whose lease is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Only a free or expired lease.
    IfFree,
    /// Any lease: the holder is fenced by the new epoch.
    Steal,
}

/// The SQL texts of one kind, built once.
#[derive(Debug)]
struct Sql {
    claim: Arc<str>,
    renew: Arc<str>,
    release: Arc<str>,
    reclaim: Arc<str>,
}

/// The lease operations of one kind for one instance (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Leases {
    pub kind: LeaseKind,
    store: Store,
    owner: Arc<str>,
    ttl: Duration,
    sql: Arc<Sql>,
}

impl Leases {
    /// The leases of `kind` held by `owner` for `ttl` on `store` (a [`Store`], or a `PgPool`).
    pub fn new(kind: LeaseKind, store: impl Into<Store>, owner: &str, ttl: Duration) -> Self {
        let sql = Sql {
            claim: fill(&kind, CLAIM).into(),
            renew: fill(&kind, RENEW).into(),
            release: fill(&kind, RELEASE).into(),
            reclaim: fill(&kind, RECLAIM).into(),
        };
        Leases {
            kind,
            store: store.into(),
            owner: owner.into(),
            ttl,
            sql: Arc::new(sql),
        }
    }

    /// The store the leased rows live in.
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn owner(&self) -> &str {
        &self.owner
    }
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Claim up to `limit` due rows whose lease is free or expired (database clock), one commit.
    /// The same statement tells when the next one becomes claimable, so an idle instance can
    /// sleep until then (an orphan is taken as its lease expires) instead of a poll interval.
    pub async fn claim<R: Leased>(&self, limit: i64) -> Result<Claimed<R>, sqlx::Error> {
        let pool = match &self.store {
            Store::Postgres(p) => p,
            Store::Sqlite(p) => return self.claim_sqlite(p, limit).await,
        };
        let rows = sqlx::query(AssertSqlSafe(self.sql.claim.clone()))
            .bind(&*self.owner)
            .bind(secs(self.ttl))
            .bind(limit)
            .fetch_all(pool)
            .await?;
        tandem_kit::stats::write_committed(pool);
        let mut claimed = Claimed {
            rows: Vec::new(),
            next_due_in: None,
        };
        let mut taken_over = 0;
        for row in &rows {
            taken_over = row.try_get::<i64, _>("taken_over")? as u64;
            let next: Option<f64> = row.try_get("next_due_in")?;
            claimed.next_due_in = next.map(|s| Duration::from_secs_f64(s.max(0.0)));
            if row.try_get::<Option<Uuid>, _>("claimed_id")?.is_some() {
                claimed.rows.push(R::from_row(row)?);
            }
        }
        crate::metrics::claimed(self.kind.table, claimed.rows.len(), taken_over);
        Ok(claimed)
    }

    /// Extend the leases this instance holds on `ids` (one statement): only unexpired leases it
    /// still owns, so a lease that lapsed (a paused process) stays free for another instance.
    pub async fn renew(&self, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
        let pool = match &self.store {
            Store::Postgres(p) => p,
            Store::Sqlite(p) => {
                let sql = fill_sqlite(&self.kind, SQLITE_RENEW);
                let args = ids.iter().map(|id| (*id, 0));
                return self.each_sqlite(p, &sql, args).await;
            }
        };
        let r = sqlx::query(AssertSqlSafe(self.sql.renew.clone()))
            .bind(&*self.owner)
            .bind(ids)
            .bind(secs(self.ttl))
            .execute(pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// Hand leases back without changing anything else, each fenced by its epoch, in **one
    /// statement**: the rows are due again at once. If any row was released, the same statement
    /// NOTIFYs the kind's channel once (delivered at commit) with `notifier` as payload. One
    /// NOTIFY per batch, never per row: NOTIFY takes a cluster-wide lock at commit.
    pub async fn release(
        &self,
        ids: &[Uuid],
        epochs: &[i64],
        notifier: &str,
    ) -> Result<u64, sqlx::Error> {
        let pool = match &self.store {
            Store::Postgres(p) => p,
            Store::Sqlite(p) => {
                let sql = fill_sqlite(&self.kind, SQLITE_RELEASE);
                let args = ids.iter().copied().zip(epochs.iter().copied());
                return self.each_sqlite(p, &sql, args).await;
            }
        };
        let row = sqlx::query(AssertSqlSafe(self.sql.release.clone()))
            .bind(ids)
            .bind(epochs)
            .bind(self.kind.channel)
            .bind(notifier)
            .fetch_one(pool)
            .await?;
        tandem_kit::stats::write_committed(pool);
        let released: i64 = row.try_get("released")?;
        Ok(released as u64)
    }

    /// At start-up: take back the leases this instance identity held before a restart (new
    /// epoch, so anything the previous incarnation still had in flight is fenced).
    pub async fn reclaim_own<R: Leased>(&self) -> Result<Vec<R>, sqlx::Error> {
        if let Store::Sqlite(p) = &self.store {
            let sql = fill_sqlite(&self.kind, SQLITE_RECLAIM);
            return self.leased_rows_sqlite(p, sql, None).await;
        }
        let q = sqlx::query(AssertSqlSafe(self.sql.reclaim.clone()));
        self.leased_rows(q.bind(&*self.owner).bind(secs(self.ttl)))
            .await
    }

    /// Lease row `id` now (epoch + 1) if `also` (an SQL predicate over the row, e.g.
    /// `"status = 'failed'"`; `"true"` for none) holds and, with [`Take::IfFree`], its lease is
    /// free or expired. None: no such row, or the condition does not hold.
    pub async fn take<R: Leased>(
        &self,
        id: Uuid,
        mode: Take,
        also: &'static str,
    ) -> Result<Option<R>, sqlx::Error> {
        let free = match mode {
            Take::IfFree => "({u} IS NULL OR {u} < now())",
            Take::Steal => "true",
        };
        if let Store::Sqlite(p) = &self.store {
            let free = free.replace("now()", sql_now());
            let template = SQLITE_TAKE.replace("{free}", &free).replace("{also}", also);
            let sql = fill_sqlite(&self.kind, &template);
            let rows = self.leased_rows_sqlite(p, sql, Some(id)).await?;
            return Ok(rows.into_iter().next());
        }
        let sql = fill(
            &self.kind,
            &TAKE.replace("{free}", free).replace("{also}", also),
        );
        let q = sqlx::query(AssertSqlSafe(sql)).bind(id);
        let rows = self
            .leased_rows(q.bind(&*self.owner).bind(secs(self.ttl)))
            .await?;
        Ok(rows.into_iter().next())
    }

    /// The rows a leasing statement `q` returns (one commit), decoded.
    async fn leased_rows<R: Leased>(&self, q: PgQuery<'_>) -> Result<Vec<R>, sqlx::Error> {
        let pool = self.pg();
        let rows = q.fetch_all(pool).await?;
        tandem_kit::stats::write_committed(pool);
        rows.iter().map(R::from_row).collect()
    }

    fn pg(&self) -> &PgPool {
        match &self.store {
            Store::Postgres(p) => p,
            Store::Sqlite(_) => unreachable!("a Postgres lease statement on SQLite"),
        }
    }

    /// SQLite: a claim in one `BEGIN IMMEDIATE` transaction (one writer at a time: the rows
    /// read are the rows updated).
    async fn claim_sqlite<R: Leased>(
        &self,
        pool: &SqlitePool,
        limit: i64,
    ) -> Result<Claimed<R>, sqlx::Error> {
        let mut tx = tandem_kit::sqlite::begin(pool).await?;
        let due: Vec<(Uuid, Option<String>)> =
            sqlx::query_as(AssertSqlSafe(fill_sqlite(&self.kind, SQLITE_DUE)))
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
        // Before the update: the rows claimed now are not waiting.
        let next: Option<f64> =
            sqlx::query_scalar(AssertSqlSafe(fill_sqlite(&self.kind, SQLITE_NEXT)))
                .fetch_one(&mut *tx)
                .await?;
        let take = fill_sqlite(&self.kind, SQLITE_CLAIM);
        let mut rows = Vec::with_capacity(due.len());
        let mut taken_over = 0;
        for (id, prev) in &due {
            let row = sqlx::query(AssertSqlSafe(take.as_str()))
                .bind(id)
                .bind(&*self.owner)
                .bind(secs(self.ttl))
                .fetch_one(&mut *tx)
                .await?;
            rows.push(R::from_row(&row)?);
            if prev.as_deref().is_some_and(|p| p != &*self.owner) {
                taken_over += 1;
            }
        }
        tx.commit().await?;
        crate::metrics::claimed(self.kind.table, rows.len(), taken_over);
        Ok(Claimed {
            rows,
            next_due_in: next.map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }

    /// SQLite: `sql` once per (id, epoch) (`?1`, `?2`; owner `?3`, TTL `?4`; SQLite ignores
    /// arguments a statement does not use) in one
    /// transaction; the rows changed.
    async fn each_sqlite(
        &self,
        pool: &SqlitePool,
        sql: &str,
        args: impl Iterator<Item = (Uuid, i64)>,
    ) -> Result<u64, sqlx::Error> {
        let mut tx = tandem_kit::sqlite::begin(pool).await?;
        let mut n = 0;
        for (id, epoch) in args {
            n += sqlx::query(AssertSqlSafe(sql))
                .bind(id)
                .bind(epoch)
                .bind(&*self.owner)
                .bind(secs(self.ttl))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    /// SQLite: the rows a leasing statement returns (id `?1` if any; owner `?2`, TTL `?3`).
    async fn leased_rows_sqlite<R: Leased>(
        &self,
        pool: &SqlitePool,
        sql: String,
        id: Option<Uuid>,
    ) -> Result<Vec<R>, sqlx::Error> {
        let mut tx = tandem_kit::sqlite::begin(pool).await?;
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .bind(&*self.owner)
            .bind(secs(self.ttl))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(R::from_row).collect()
    }
}

/// [`fill`] for the SQLite templates: also `{now}` (the database clock as stored) and
/// `{until}` (now + the TTL bound as `?{ttl}`: `{until3}` / `{until4}`).
fn fill_sqlite(k: &LeaseKind, template: &str) -> String {
    fill(
        k,
        &template
            .replace("{until3}", &now_plus("?3"))
            .replace("{until4}", &now_plus("?4"))
            .replace("{now}", sql_now()),
    )
}

/// `template` with the kind's names filled in: `{t}` table, `{cols}` claim columns, `{id}`,
/// `{o}` owner, `{u}` expiry, `{e}` epoch, `{due}` due time.
fn fill(k: &LeaseKind, template: &str) -> String {
    let c = &k.lease;
    template
        .replace("{t}", k.table)
        .replace("{cols}", k.columns)
        .replace("{id}", c.id)
        .replace("{o}", c.owner)
        .replace("{u}", c.until)
        .replace("{e}", c.epoch)
        .replace("{due}", c.due)
}

// The claim locks due rows with SKIP LOCKED, so instances polling together never block on each
// other or claim the same row. `nxt` reads the snapshot before the update: the rows claimed here
// had a free or expired lease, so they are not counted as waiting.
const CLAIM: &str = "WITH due AS (SELECT {id}, {o} AS prev_owner FROM {t} \
       WHERE {due} <= now() AND ({u} IS NULL OR {u} < now()) \
       ORDER BY {due} LIMIT $3 FOR UPDATE SKIP LOCKED), \
 upd AS (UPDATE {t} SET {o} = $1, {u} = now() + make_interval(secs => $2), {e} = {e} + 1 \
     WHERE {id} IN (SELECT {id} FROM due) \
     RETURNING {id} AS claimed_id, {cols}), \
 nxt AS (SELECT extract(epoch FROM min(greatest({due}, {u})) - now())::float8 AS next_due_in \
         FROM {t} WHERE {due} IS NOT NULL AND greatest({due}, {u}) > now()) \
 SELECT upd.*, nxt.next_due_in, \
   (SELECT count(*) FROM due WHERE due.prev_owner IS NOT NULL AND due.prev_owner <> $1) AS taken_over \
 FROM nxt LEFT JOIN upd ON true";

const RENEW: &str = "UPDATE {t} SET {u} = now() + make_interval(secs => $3) \
 WHERE {id} = ANY($2) AND {o} = $1 AND {u} > now()";

const RELEASE: &str = "WITH r AS ( \
    UPDATE {t} x SET {o} = NULL, {u} = NULL, {due} = LEAST(x.{due}, now()) \
    FROM unnest($1::uuid[], $2::bigint[]) AS r(id, epoch) \
    WHERE x.{id} = r.id AND x.{e} = r.epoch AND x.{due} IS NOT NULL \
    RETURNING x.{id}), \
 n AS (SELECT pg_notify($3, $4) FROM (SELECT 1 FROM r LIMIT 1) AS any_released) \
 SELECT (SELECT count(*) FROM r) AS released, (SELECT count(*) FROM n) AS notified";

const RECLAIM: &str = "UPDATE {t} SET {u} = now() + make_interval(secs => $2), {e} = {e} + 1 \
 WHERE {o} = $1 AND {due} IS NOT NULL RETURNING {cols}";

/// `also` and `free` are filled in per call.
const TAKE: &str = "UPDATE {t} SET {o} = $2, {u} = now() + make_interval(secs => $3), {e} = {e} + 1 \
 WHERE {id} = $1 AND {free} AND ({also}) RETURNING {cols}";

// SQLite (see the module docs). Times are text in one format, so they compare as text; SQLite's
// two-argument max() is NULL if either is, hence the coalesce.
const SQLITE_DUE: &str = "SELECT {id}, {o} FROM {t} \
 WHERE {due} <= {now} AND ({u} IS NULL OR {u} < {now}) ORDER BY {due} LIMIT ?1";

const SQLITE_NEXT: &str = "SELECT (julianday(min(max({due}, coalesce({u}, {due})))) - julianday('now')) * 86400.0 \
 FROM {t} WHERE {due} IS NOT NULL AND max({due}, coalesce({u}, {due})) > {now}";

const SQLITE_CLAIM: &str = "UPDATE {t} SET {o} = ?2, {u} = {until3}, {e} = {e} + 1 \
 WHERE {id} = ?1 RETURNING {cols}";

const SQLITE_RENEW: &str = "UPDATE {t} SET {u} = {until4} \
 WHERE {id} = ?1 AND {o} = ?3 AND {u} > {now}";

const SQLITE_RELEASE: &str = "UPDATE {t} SET {o} = NULL, {u} = NULL, {due} = min({due}, {now}) \
 WHERE {id} = ?1 AND {e} = ?2 AND {due} IS NOT NULL";

const SQLITE_RECLAIM: &str = "UPDATE {t} SET {u} = {until3}, {e} = {e} + 1 \
 WHERE {o} = ?2 AND {due} IS NOT NULL RETURNING {cols}";

/// `also` and `free` are filled in per call.
const SQLITE_TAKE: &str = "UPDATE {t} SET {o} = ?2, {u} = {until3}, {e} = {e} + 1 \
 WHERE {id} = ?1 AND {free} AND ({also}) RETURNING {cols}";
