//! The orchestrator's Postgres store: definitions, sagas (state + lease), the event log and
//! client idempotency keys. Every state write is fenced by the lease epoch.
//!
//! Commit budget on the hot path: creating a saga is one transaction (idempotency key, saga row
//! with the first step's decision, its events); each later transition is one single-statement
//! write (state + lease renewal + events in one CTE).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use crate::saga::{EventRecord, SagaState, SagaStatus};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/orchestrator");

/// A saga as stored.
#[derive(Debug, Clone)]
pub struct SagaRow {
    pub id: Uuid,
    pub definition: String,
    pub version: String,
    pub business_key: Option<String>,
    pub input: Value,
    pub input_hash: String,
    pub status: String,
    pub state: SagaState,
    pub next_run_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub lease_epoch: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The saga columns, as a literal so queries stay `&'static str` (sqlx refuses dynamic SQL).
macro_rules! saga_columns {
    () => {
        "id, definition, version, business_key, input, input_hash, status, state, \
         next_run_at, lease_owner, lease_until, lease_epoch, created_at, updated_at"
    };
}

fn saga_from_row(row: &PgRow) -> Result<SagaRow, sqlx::Error> {
    let state: Value = row.try_get("state")?;
    let state: SagaState =
        serde_json::from_value(state).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(SagaRow {
        id: row.try_get("id")?,
        definition: row.try_get("definition")?,
        version: row.try_get("version")?,
        business_key: row.try_get("business_key")?,
        input: row.try_get("input")?,
        input_hash: row.try_get("input_hash")?,
        status: row.try_get("status")?,
        state,
        next_run_at: row.try_get("next_run_at")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until: row.try_get("lease_until")?,
        lease_epoch: row.try_get("lease_epoch")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EventRow {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub step: Option<String>,
    pub detail: Value,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn event_kind(e: &EventRecord) -> String {
    match serde_json::to_value(e.kind) {
        Ok(Value::String(s)) => s,
        _ => format!("{:?}", e.kind),
    }
}

// ---------- definitions ----------

/// Store a definition version; returns true if it was new.
pub async fn insert_definition(
    pool: &PgPool,
    name: &str,
    version: &str,
    body: &Value,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO definitions (name, version, body) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(name)
    .bind(version)
    .bind(body)
    .execute(pool)
    .await?;
    tandem_kit::stats::write_committed(pool);
    Ok(r.rows_affected() == 1)
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

// ---------- creating sagas ----------

pub struct NewSaga<'a> {
    pub id: Uuid,
    pub definition: &'a str,
    pub version: &'a str,
    pub business_key: Option<&'a str>,
    pub input: &'a Value,
    pub input_hash: &'a str,
    /// Hash of the whole request (for the client's Idempotency-Key).
    pub request_hash: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub state: &'a SagaState,
    pub events: &'a [EventRecord],
    pub owner: &'a str,
    pub lease_ttl: Duration,
}

#[derive(Debug)]
pub enum Created {
    /// A new saga, leased to the creator (epoch in the row).
    New(Box<SagaRow>),
    /// The Idempotency-Key was seen with the same request: that saga.
    Replay(Uuid),
    /// The Idempotency-Key was seen with a different request.
    KeyReused { saga_id: Uuid },
    /// A saga with this business key exists with the same input: that saga.
    SameBusinessKey(Uuid),
    /// A saga with this business key exists with a different input.
    BusinessKeyConflict { saga_id: Uuid },
}

/// The events of a saga as one JSON array (`jsonb_agg` over `saga_events` aliased `e`).
macro_rules! events_json {
    () => {
        "coalesce(jsonb_agg(jsonb_build_object('seq', e.seq, 'at', e.at, 'kind', e.kind, \
         'step', e.step, 'detail', e.detail) ORDER BY e.seq), '[]'::jsonb)"
    };
}

fn events_from_json(row: &PgRow) -> Result<Vec<EventRow>, sqlx::Error> {
    let v: Value = row.try_get("events")?;
    serde_json::from_value(v).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Create a saga without a client Idempotency-Key in **one statement** (saga row, first
/// transition's events), answering the stored row and events so the caller need not read them
/// back. `None` if the business key is taken: use [`create_saga`], which sorts that case out.
pub async fn create_saga_fast(
    pool: &PgPool,
    new: &NewSaga<'_>,
) -> Result<Option<(SagaRow, Vec<EventRow>)>, sqlx::Error> {
    debug_assert!(new.idempotency_key.is_none());
    let state_json =
        serde_json::to_value(new.state).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let (kinds, steps, details) = event_columns(new.events);
    let row = sqlx::query(concat!(
        "WITH s AS (INSERT INTO sagas (id, definition, version, business_key, input, input_hash, \
                 status, state, next_run_at, lease_owner, lease_until, lease_epoch) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), $9, now() + make_interval(secs => $10), 1) \
             ON CONFLICT (definition, business_key) WHERE business_key IS NOT NULL DO NOTHING \
             RETURNING ",
        saga_columns!(),
        "), \
         e AS (INSERT INTO saga_events (saga_id, kind, step, detail) \
             SELECT s.id, x.k, x.st, x.d FROM s, \
                 unnest($11::text[], $12::text[], $13::jsonb[]) WITH ORDINALITY AS x(k, st, d, n) \
             ORDER BY x.n \
             RETURNING seq, at, kind, step, detail) \
         SELECT s.*, (SELECT ",
        events_json!(),
        " FROM e) AS events FROM s"
    ))
    .bind(new.id)
    .bind(new.definition)
    .bind(new.version)
    .bind(new.business_key)
    .bind(new.input)
    .bind(new.input_hash)
    .bind(new.state.status.as_str())
    .bind(&state_json)
    .bind(new.owner)
    .bind(secs(new.lease_ttl))
    .bind(kinds)
    .bind(steps)
    .bind(details)
    .fetch_optional(pool)
    .await?;
    tandem_kit::stats::write_committed(pool);
    match row {
        Some(row) => Ok(Some((saga_from_row(&row)?, events_from_json(&row)?))),
        None => Ok(None),
    }
}

/// Create a saga (one transaction). Concurrent requests with the same Idempotency-Key or
/// business key wait for the first one's commit and then see its saga.
pub async fn create_saga(pool: &PgPool, new: NewSaga<'_>) -> Result<Created, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(key) = new.idempotency_key {
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (key, request_hash, saga_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(key)
        .bind(new.request_hash)
        .bind(new.id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            let row =
                sqlx::query("SELECT request_hash, saga_id FROM idempotency_keys WHERE key = $1")
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await?;
            let hash: String = row.try_get("request_hash")?;
            let saga_id: Uuid = row.try_get("saga_id")?;
            tx.rollback().await?;
            return Ok(if hash == new.request_hash {
                Created::Replay(saga_id)
            } else {
                Created::KeyReused { saga_id }
            });
        }
    }
    let state_json =
        serde_json::to_value(new.state).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let row = sqlx::query(concat!("INSERT INTO sagas (id, definition, version, business_key, input, input_hash, status, state, \
                            next_run_at, lease_owner, lease_until, lease_epoch) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), $9, now() + make_interval(secs => $10), 1) \
         ON CONFLICT (definition, business_key) WHERE business_key IS NOT NULL DO NOTHING \
         RETURNING ", saga_columns!(), ""))
    .bind(new.id)
    .bind(new.definition)
    .bind(new.version)
    .bind(new.business_key)
    .bind(new.input)
    .bind(new.input_hash)
    .bind(new.state.status.as_str())
    .bind(&state_json)
    .bind(new.owner)
    .bind(secs(new.lease_ttl))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        // The business key is taken.
        let existing = sqlx::query(
            "SELECT id, input_hash FROM sagas WHERE definition = $1 AND business_key = $2",
        )
        .bind(new.definition)
        .bind(new.business_key)
        .fetch_one(&mut *tx)
        .await?;
        let saga_id: Uuid = existing.try_get("id")?;
        let hash: String = existing.try_get("input_hash")?;
        if hash == new.input_hash {
            // Same order again under a new client key: remember the key for that saga.
            if let Some(key) = new.idempotency_key {
                sqlx::query("UPDATE idempotency_keys SET saga_id = $2 WHERE key = $1")
                    .bind(key)
                    .bind(saga_id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            tandem_kit::stats::write_committed(pool);
            return Ok(Created::SameBusinessKey(saga_id));
        }
        tx.rollback().await?;
        return Ok(Created::BusinessKeyConflict { saga_id });
    };
    insert_events(&mut tx, new.id, new.events).await?;
    tx.commit().await?;
    tandem_kit::stats::write_committed(pool);
    Ok(Created::New(Box::new(saga_from_row(&row)?)))
}

async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    saga: Uuid,
    events: &[EventRecord],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let (kinds, steps, details) = event_columns(events);
    sqlx::query(
        "INSERT INTO saga_events (saga_id, kind, step, detail) \
         SELECT $1, k, s, d FROM unnest($2::text[], $3::text[], $4::jsonb[]) WITH ORDINALITY AS e(k, s, d, n) ORDER BY n",
    )
    .bind(saga)
    .bind(kinds)
    .bind(steps)
    .bind(details)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) fn event_columns(
    events: &[EventRecord],
) -> (Vec<String>, Vec<Option<String>>, Vec<Value>) {
    let kinds = events.iter().map(event_kind).collect();
    let steps = events.iter().map(|e| e.step.clone()).collect();
    let details = events.iter().map(|e| e.detail.clone()).collect();
    (kinds, steps, details)
}

// ---------- transitions ----------

/// When the saga needs a driver next.
#[derive(Debug, Clone, Copy)]
pub enum NextRun {
    /// A call is in flight: due now (an orphan is resumed as soon as its lease expires). An
    /// already past `next_run_at` is kept, so the row's indexed columns do not change and the
    /// update can be HOT.
    Now,
    At(DateTime<Utc>),
    /// Terminal or parked.
    Never,
}

/// Persist one transition, fenced by `epoch`. `keep_lease`: renew the lease (the driver keeps
/// working on the saga); otherwise hand it back. Returns false if the epoch no longer matches
/// (another instance took the saga over): the caller must drop the saga without acting.
/// One transition to persist.
pub struct TransitionWrite<'a> {
    pub state: &'a SagaState,
    pub events: &'a [EventRecord],
    pub next: NextRun,
    /// Renew the lease (the driver keeps working on the saga) or hand it back.
    pub keep_lease: bool,
}

pub async fn persist_transition(
    pool: &PgPool,
    id: Uuid,
    epoch: i64,
    w: TransitionWrite<'_>,
    lease_ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let TransitionWrite {
        state,
        events,
        next,
        keep_lease,
    } = w;
    let state_json = serde_json::to_value(state).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let (next_kind, next_at) = match next {
        NextRun::Now => ("now", None),
        NextRun::At(t) => ("at", Some(t)),
        NextRun::Never => ("never", None),
    };
    let (kinds, steps, details) = event_columns(events);
    let updated: i64 = sqlx::query_scalar(
        "WITH upd AS ( \
            UPDATE sagas SET status = $3, state = $4, updated_at = now(), \
                next_run_at = CASE $5 WHEN 'now' THEN LEAST(next_run_at, now()) WHEN 'at' THEN $6 ELSE NULL END, \
                lease_owner = CASE WHEN $7 THEN lease_owner ELSE NULL END, \
                lease_until = CASE WHEN $7 THEN now() + make_interval(secs => $8) ELSE NULL END \
            WHERE id = $1 AND lease_epoch = $2 RETURNING id), \
         ins AS ( \
            INSERT INTO saga_events (saga_id, kind, step, detail) \
            SELECT upd.id, e.k, e.s, e.d FROM upd, \
                unnest($9::text[], $10::text[], $11::jsonb[]) WITH ORDINALITY AS e(k, s, d, n) ORDER BY e.n) \
         SELECT count(*) FROM upd",
    )
    .bind(id)
    .bind(epoch)
    .bind(state.status.as_str())
    .bind(&state_json)
    .bind(next_kind)
    .bind(next_at)
    .bind(keep_lease)
    .bind(secs(lease_ttl))
    .bind(kinds)
    .bind(steps)
    .bind(details)
    .fetch_one(pool)
    .await?;
    tandem_kit::stats::write_committed(pool);
    Ok(updated == 1)
}

/// The channel an instance NOTIFYs when it makes work claimable by others (see
/// [`release_leases`]); the payload is the sender's instance id.
pub const WORK_CHANNEL: &str = "tandem_work";

/// Hand leases back without changing the state (graceful shutdown, no free slot), each fenced by
/// its epoch, in **one statement**: the sagas are due again at once. If any row was released, the
/// same statement NOTIFYs [`WORK_CHANNEL`] once (delivered at commit), so idle instances claim
/// them now instead of at their next poll. One NOTIFY per batch, never per saga: NOTIFY takes a
/// cluster-wide lock at commit, so one per transition would serialise every commit.
pub async fn release_leases(
    pool: &PgPool,
    ids: &[Uuid],
    epochs: &[i64],
    notifier: &str,
) -> Result<u64, sqlx::Error> {
    let row = sqlx::query(
        "WITH r AS ( \
            UPDATE sagas s SET lease_owner = NULL, lease_until = NULL, \
                next_run_at = LEAST(s.next_run_at, now()) \
            FROM unnest($1::uuid[], $2::bigint[]) AS r(id, epoch) \
            WHERE s.id = r.id AND s.lease_epoch = r.epoch AND s.next_run_at IS NOT NULL \
            RETURNING s.id), \
         n AS (SELECT pg_notify($3, $4) FROM (SELECT 1 FROM r LIMIT 1) AS any_released) \
         SELECT (SELECT count(*) FROM r) AS released, (SELECT count(*) FROM n) AS notified",
    )
    .bind(ids)
    .bind(epochs)
    .bind(WORK_CHANNEL)
    .bind(notifier)
    .fetch_one(pool)
    .await?;
    tandem_kit::stats::write_committed(pool);
    let released: i64 = row.try_get("released")?;
    Ok(released as u64)
}

/// Take a parked (`failed`) saga for a manual retry: a new lease and epoch, in a transaction the
/// caller completes with [`persist_transition`]. Returns None if there is no such saga.
pub async fn lease_for_retry(
    pool: &PgPool,
    id: Uuid,
    owner: &str,
    ttl: Duration,
) -> Result<Option<SagaRow>, sqlx::Error> {
    let row = sqlx::query(concat!(
        "UPDATE sagas SET lease_owner = $2, lease_until = now() + make_interval(secs => $3), \
             lease_epoch = lease_epoch + 1 \
         WHERE id = $1 AND status = 'failed' AND (lease_until IS NULL OR lease_until < now()) \
         RETURNING ",
        saga_columns!(),
        ""
    ))
    .bind(id)
    .bind(owner)
    .bind(secs(ttl))
    .fetch_optional(pool)
    .await?;
    tandem_kit::stats::write_committed(pool);
    row.as_ref().map(saga_from_row).transpose()
}

// ---------- leases ----------

/// What a claim pass found.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The sagas now leased to the claimer (new epoch).
    pub rows: Vec<SagaRow>,
    /// How long until the next saga not claimed now becomes claimable (database clock): the
    /// later of its `next_run_at` and its lease expiry. None: nothing is waiting.
    pub next_due_in: Option<Duration>,
}

/// Claim up to `limit` due sagas whose lease is free or expired (database clock), one commit.
/// The same statement tells when the next one becomes claimable, so an idle instance can sleep
/// until then (an orphan is taken as its lease expires) instead of a whole poll interval.
pub async fn claim_due(
    pool: &PgPool,
    owner: &str,
    ttl: Duration,
    limit: i64,
) -> Result<Claimed, sqlx::Error> {
    // The claim locks due rows with SKIP LOCKED, so instances polling together never block on
    // each other or claim the same saga. `nxt` reads the snapshot before the update: the rows
    // claimed here had a free or expired lease, so they are not counted as waiting.
    let rows = sqlx::query(concat!(
        "WITH due AS (SELECT id FROM sagas \
               WHERE next_run_at <= now() AND (lease_until IS NULL OR lease_until < now()) \
               ORDER BY next_run_at LIMIT $3 FOR UPDATE SKIP LOCKED), \
         upd AS (UPDATE sagas SET lease_owner = $1, lease_until = now() + make_interval(secs => $2), \
             lease_epoch = lease_epoch + 1 \
         WHERE id IN (SELECT id FROM due) \
         RETURNING ",
        saga_columns!(),
        "), \
         nxt AS (SELECT extract(epoch FROM min(greatest(next_run_at, lease_until)) - now())::float8 \
                     AS next_due_in \
                 FROM sagas WHERE next_run_at IS NOT NULL \
                     AND greatest(next_run_at, lease_until) > now()) \
         SELECT upd.*, nxt.next_due_in FROM nxt LEFT JOIN upd ON true"
    ))
    .bind(owner)
    .bind(secs(ttl))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    tandem_kit::stats::write_committed(pool);
    let mut claimed = Claimed::default();
    for row in &rows {
        let next: Option<f64> = row.try_get("next_due_in")?;
        claimed.next_due_in = next.map(|s| Duration::from_secs_f64(s.max(0.0)));
        if row.try_get::<Option<Uuid>, _>("id")?.is_some() {
            claimed.rows.push(saga_from_row(row)?);
        }
    }
    Ok(claimed)
}

/// At start-up: take back the leases this instance identity held before a restart (new epoch,
/// so anything the previous incarnation still had in flight is fenced).
pub async fn reclaim_own(
    pool: &PgPool,
    owner: &str,
    ttl: Duration,
) -> Result<Vec<SagaRow>, sqlx::Error> {
    let rows = sqlx::query(concat!("UPDATE sagas SET lease_until = now() + make_interval(secs => $2), lease_epoch = lease_epoch + 1 \
         WHERE lease_owner = $1 AND next_run_at IS NOT NULL \
         RETURNING ", saga_columns!(), ""))
    .bind(owner)
    .bind(secs(ttl))
    .fetch_all(pool)
    .await?;
    tandem_kit::stats::write_committed(pool);
    rows.iter().map(saga_from_row).collect()
}

// ---------- reads ----------

pub async fn saga(pool: &PgPool, id: Uuid) -> Result<Option<SagaRow>, sqlx::Error> {
    let row = sqlx::query(concat!(
        "SELECT ",
        saga_columns!(),
        " FROM sagas WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    tandem_kit::stats::read_committed(pool);
    row.as_ref().map(saga_from_row).transpose()
}

/// A saga and its event log in one query.
pub async fn saga_with_events(
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<(SagaRow, Vec<EventRow>)>, sqlx::Error> {
    let row = sqlx::query(concat!(
        "SELECT ",
        saga_columns!(),
        ", (SELECT ",
        events_json!(),
        " FROM saga_events e WHERE e.saga_id = s.id) AS events FROM sagas s WHERE s.id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    tandem_kit::stats::read_committed(pool);
    match row {
        Some(row) => Ok(Some((saga_from_row(&row)?, events_from_json(&row)?))),
        None => Ok(None),
    }
}

pub async fn events(pool: &PgPool, id: Uuid) -> Result<Vec<EventRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, at, kind, step, detail FROM saga_events WHERE saga_id = $1 ORDER BY seq",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    tandem_kit::stats::read_committed(pool);
    rows.iter()
        .map(|r| {
            Ok(EventRow {
                seq: r.try_get("seq")?,
                at: r.try_get("at")?,
                kind: r.try_get("kind")?,
                step: r.try_get("step")?,
                detail: r.try_get("detail")?,
            })
        })
        .collect()
}

/// Newest first; `before` is the cursor (an id from the previous page).
pub async fn list(
    pool: &PgPool,
    status: Option<SagaStatus>,
    definition: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<SagaRow>, sqlx::Error> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        saga_columns!(),
        " FROM sagas \
         WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR definition = $2) \
           AND ($3::uuid IS NULL OR id < $3) \
         ORDER BY id DESC LIMIT $4"
    ))
    .bind(status.map(|s| s.as_str()))
    .bind(definition)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    tandem_kit::stats::read_committed(pool);
    rows.iter().map(saga_from_row).collect()
}

/// Drop client idempotency keys older than the retention.
pub async fn purge_idempotency_keys(
    pool: &PgPool,
    retention: Duration,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
    )
    .bind(secs(retention))
    .execute(pool)
    .await?;
    tandem_kit::stats::write_committed(pool);
    Ok(r.rows_affected())
}

/// Extend the leases `owner` holds on `ids` (one statement): only unexpired leases it still
/// owns, so a lease that lapsed (a paused process) stays free for another instance to claim.
pub async fn renew_leases(
    pool: &PgPool,
    owner: &str,
    ids: &[Uuid],
    ttl: Duration,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE sagas SET lease_until = now() + make_interval(secs => $3) \
         WHERE id = ANY($2) AND lease_owner = $1 AND lease_until > now()",
    )
    .bind(owner)
    .bind(ids)
    .bind(secs(ttl))
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Transitions of several sagas (column arrays, one entry per saga; events flattened with the
/// saga each belongs to, in order), persisted by [`persist_transitions`].
pub struct TransitionBatch<'a> {
    pub ids: &'a [Uuid],
    pub epochs: &'a [i64],
    pub statuses: &'a [&'static str],
    pub states: &'a [Value],
    pub next_kinds: &'a [&'static str],
    pub next_ats: &'a [Option<DateTime<Utc>>],
    pub keep_leases: &'a [bool],
    pub event_sagas: &'a [Uuid],
    pub event_kinds: &'a [String],
    pub event_steps: &'a [Option<String>],
    pub event_details: &'a [Value],
}

/// Persist one transition for each of several sagas in **one statement** (one commit), each row
/// fenced by its own epoch; a saga's events are inserted only if its row was updated. Returns
/// the ids whose write applied (the others were fenced). Used by the group-commit writer
/// (`crate::writer`).
pub async fn persist_transitions(
    pool: &PgPool,
    b: TransitionBatch<'_>,
    lease_ttl: Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let applied: Vec<Uuid> = sqlx::query_scalar(
        "WITH i AS ( \
            SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::jsonb[], $5::text[], \
                                 $6::timestamptz[], $7::bool[]) \
                AS i(id, epoch, status, state, next_kind, next_at, keep)), \
         upd AS ( \
            UPDATE sagas s SET status = i.status, state = i.state, updated_at = now(), \
                next_run_at = CASE i.next_kind WHEN 'now' THEN LEAST(s.next_run_at, now()) WHEN 'at' THEN i.next_at ELSE NULL END, \
                lease_owner = CASE WHEN i.keep THEN s.lease_owner ELSE NULL END, \
                lease_until = CASE WHEN i.keep THEN now() + make_interval(secs => $8) ELSE NULL END \
            FROM i WHERE s.id = i.id AND s.lease_epoch = i.epoch RETURNING s.id), \
         ins AS ( \
            INSERT INTO saga_events (saga_id, kind, step, detail) \
            SELECT e.saga_id, e.k, e.s, e.d \
            FROM unnest($9::uuid[], $10::text[], $11::text[], $12::jsonb[]) WITH ORDINALITY AS e(saga_id, k, s, d, n) \
            WHERE e.saga_id IN (SELECT id FROM upd) ORDER BY e.n) \
         SELECT id FROM upd",
    )
    .bind(b.ids)
    .bind(b.epochs)
    .bind(b.statuses)
    .bind(b.states)
    .bind(b.next_kinds)
    .bind(b.next_ats)
    .bind(b.keep_leases)
    .bind(secs(lease_ttl))
    .bind(b.event_sagas)
    .bind(b.event_kinds)
    .bind(b.event_steps)
    .bind(b.event_details)
    .fetch_all(pool)
    .await?;
    tandem_kit::stats::write_committed(pool);
    Ok(applied)
}
