//! The saga store on SQLite (the embedded store; schema in `migrations/sqlite/orchestrator/`).
//! What [`super::Store::Sqlite`] runs: the same operations as the Postgres store, in SQLite's
//! dialect.
//!
//! - Every write is one `BEGIN IMMEDIATE` transaction ([`tandem_kit::sqlite::begin`]): it
//!   takes the write lock first, so a read-then-write never fails with "database is locked".
//!   One process owns the file (the lock file), so nothing here needs `SKIP LOCKED`: SQLite
//!   has one writer at a time. Leases, epochs and the fence work as on Postgres (a restart
//!   reclaims its leases; a stale epoch writes nothing).
//! - Times are text in one format, [`TS`] (UTC, milliseconds, `Z`), written by SQL
//!   ([`now`], [`now_plus`]) and by Rust ([`ts`]) alike, so text comparison orders them.
//! - Ids are 16-byte blobs (UUIDv7: bytewise order is creation order, so the list cursor
//!   works as on Postgres); JSON is text.
//! - Group commit keeps its shape: a batch of transitions is one transaction (one fsync), a
//!   statement per saga inside it, each fenced by its epoch.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{FromRow, Row, SqliteConnection};
use uuid::Uuid;

use super::create::{Created, CreatedSaga, NewSaga};
use super::transition::{TransitionBatch, event_columns};
use super::{EventRow, SagaFilter, SagaRow, decode_error, saga_columns};
use tandem_kit::sqlite::begin;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite/orchestrator");

/// The one text format of every stored time (chrono's spelling of SQL's [`now`]).
pub const TS: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

/// The database clock now, as stored.
pub fn now() -> &'static str {
    "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
}

/// The database clock plus the seconds (a float) bound to parameter `param` (e.g. `"?2"`).
pub fn now_plus(param: &str) -> String {
    format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%+.3f seconds', {param}))")
}

/// `t` as stored.
pub fn ts(t: DateTime<Utc>) -> String {
    t.format(TS).to_string()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The events of a saga `s` as one JSON array, ordered by sequence.
fn events_json() -> &'static str {
    "(SELECT json_group_array(json_object('seq', e.seq, 'at', e.at, 'kind', e.kind, \
     'step', e.step, 'detail', json(e.detail))) \
     FROM (SELECT * FROM saga_events WHERE saga_id = s.id ORDER BY seq) e)"
}

fn saga_and_events(row: &SqliteRow) -> Result<(SagaRow, Vec<EventRow>), sqlx::Error> {
    let text: String = row.try_get("events")?;
    let events = serde_json::from_str(&text).map_err(|e| decode_error("saga events", e))?;
    Ok((SagaRow::from_row(row)?, events))
}

// ---------- definitions ----------

pub async fn insert_definition(
    pool: &SqlitePool,
    name: &str,
    version: &str,
    body: &Value,
) -> Result<bool, sqlx::Error> {
    let mut tx = begin(pool).await?;
    let r = sqlx::query(
        "INSERT INTO definitions (name, version, body, seq) \
         VALUES (?1, ?2, ?3, (SELECT coalesce(max(seq), 0) + 1 FROM definitions)) \
         ON CONFLICT DO NOTHING",
    )
    .bind(name)
    .bind(version)
    .bind(body)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(r.rows_affected() == 1)
}

pub async fn all_definitions(
    pool: &SqlitePool,
) -> Result<Vec<(String, String, Value)>, sqlx::Error> {
    sqlx::query_as("SELECT name, version, body FROM definitions ORDER BY seq")
        .fetch_all(pool)
        .await
}

pub async fn definition_versions(
    pool: &SqlitePool,
    name: &str,
    limit: i64,
) -> Result<Vec<(String, Value, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, body, created_at FROM definitions WHERE name = ?1 \
         ORDER BY seq DESC LIMIT ?2",
    )
    .bind(name)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn definition(
    pool: &SqlitePool,
    name: &str,
    version: &str,
) -> Result<Option<Value>, sqlx::Error> {
    sqlx::query_scalar("SELECT body FROM definitions WHERE name = ?1 AND version = ?2")
        .bind(name)
        .bind(version)
        .fetch_optional(pool)
        .await
}

// ---------- reads ----------

pub async fn saga_with_events(
    pool: &SqlitePool,
    id: Uuid,
) -> Result<Option<(SagaRow, Vec<EventRow>)>, sqlx::Error> {
    let sql = format!(
        "SELECT {}, {} AS events FROM sagas s WHERE s.id = ?1",
        saga_columns!(),
        events_json()
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(saga_and_events).transpose()
}

pub async fn list(
    pool: &SqlitePool,
    f: &SagaFilter<'_>,
    limit: i64,
) -> Result<Vec<SagaRow>, sqlx::Error> {
    let q = sqlx::query_as(concat!(
        "SELECT ",
        saga_columns!(),
        " FROM sagas \
         WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR definition = ?2) \
           AND (?3 IS NULL OR id < ?3) AND (?5 IS NULL OR id >= ?5) \
           AND (?6 IS NULL OR business_key = ?6) AND (?7 IS NULL OR id = ?7) \
         ORDER BY id DESC LIMIT ?4"
    ))
    .bind(f.status.map(|s| s.as_str()))
    .bind(f.definition)
    .bind(f.before)
    .bind(limit)
    .bind(f.from)
    .bind(f.business_key)
    .bind(f.id);
    q.fetch_all(pool).await
}

// ---------- creating a saga ----------

/// Create a saga in one `BEGIN IMMEDIATE` transaction: the client key, the business key, the
/// row (leased to its creator, epoch 1) and its first events; the same outcomes as on Postgres.
pub async fn create_saga(pool: &SqlitePool, new: &NewSaga<'_>) -> Result<CreatedSaga, sqlx::Error> {
    let run = &new.run;
    let mut tx = begin(pool).await?;
    if let Some(key) = run.idempotency_key {
        let r = sqlx::query(
            "INSERT INTO idempotency_keys (key, request_hash, saga_id) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(key)
        .bind(run.request_hash)
        .bind(run.id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            let (hash, id): (String, Uuid) =
                sqlx::query_as("SELECT request_hash, saga_id FROM idempotency_keys WHERE key = ?1")
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.rollback().await?;
            return Ok(if hash == run.request_hash {
                Created::Replay(id)
            } else {
                Created::KeyReused(id)
            });
        }
    }
    if let Some(bk) = run.business_key.as_deref()
        && let Some(taken) = business_key_taken(&mut tx, new, bk).await?
    {
        if let Created::SameBusinessKey(_) = taken {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        return Ok(taken);
    }
    let saga = insert_saga(&mut tx, new).await?;
    tx.commit().await?;
    Ok(Created::New(Box::new(saga)))
}

/// Record `bk` for the new saga, or what holds it: the same input is that saga (and the client
/// key now names it), another input a conflict.
async fn business_key_taken(
    tx: &mut SqliteConnection,
    new: &NewSaga<'_>,
    bk: &str,
) -> Result<Option<CreatedSaga>, sqlx::Error> {
    let run = &new.run;
    let r = sqlx::query(
        "INSERT INTO business_keys (definition, business_key, kind, id) VALUES (?1, ?2, 'saga', ?3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(run.definition)
    .bind(bk)
    .bind(run.id)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() == 1 {
        return Ok(None);
    }
    let (kind, id): (String, Uuid) = sqlx::query_as(
        "SELECT kind, id FROM business_keys WHERE definition = ?1 AND business_key = ?2",
    )
    .bind(run.definition)
    .bind(bk)
    .fetch_one(&mut *tx)
    .await?;
    if kind != "saga" {
        return Ok(Some(Created::TakenByOther(id)));
    }
    let hash: String = sqlx::query_scalar("SELECT input_hash FROM sagas WHERE id = ?1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    if hash != run.input_hash {
        return Ok(Some(Created::BusinessKeyConflict(id)));
    }
    if let Some(key) = run.idempotency_key {
        sqlx::query("UPDATE idempotency_keys SET saga_id = ?2 WHERE key = ?1")
            .bind(key)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(Some(Created::SameBusinessKey(id)))
}

async fn insert_saga(
    tx: &mut SqliteConnection,
    new: &NewSaga<'_>,
) -> Result<(SagaRow, Vec<EventRow>), sqlx::Error> {
    let run = &new.run;
    let state = serde_json::to_value(new.state).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let sql = format!(
        "INSERT INTO sagas (id, definition, version, business_key, input, input_hash, status, \
             state, next_run_at, lease_owner, lease_until, lease_epoch, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, {now}, ?9, {until}, 1, {now}, {now}) \
         RETURNING {cols}",
        now = now(),
        until = now_plus("?10"),
        cols = saga_columns!()
    );
    let row: SagaRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(run.id)
        .bind(run.definition)
        .bind(run.version)
        .bind(run.business_key.as_deref())
        .bind(run.input)
        .bind(&run.input_hash)
        .bind(new.state.status.as_str())
        .bind(&state)
        .bind(run.owner)
        .bind(secs(run.lease_ttl))
        .fetch_one(&mut *tx)
        .await?;
    let (kinds, steps, details) = event_columns(new.events);
    let mut events = Vec::with_capacity(kinds.len());
    for ((kind, step), detail) in kinds.iter().zip(&steps).zip(&details) {
        events.push(insert_event(tx, run.id, kind, step.as_deref(), detail).await?);
    }
    Ok((row, events))
}

async fn insert_event(
    tx: &mut SqliteConnection,
    saga: Uuid,
    kind: &str,
    step: Option<&str>,
    detail: &Value,
) -> Result<EventRow, sqlx::Error> {
    let row = sqlx::query(
        "INSERT INTO saga_events (saga_id, at, kind, step, detail) \
         VALUES (?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?2, ?3, ?4) \
         RETURNING seq, at, kind, step, detail",
    )
    .bind(saga)
    .bind(kind)
    .bind(step)
    .bind(detail)
    .fetch_one(&mut *tx)
    .await?;
    Ok(EventRow {
        seq: row.try_get("seq")?,
        at: row.try_get("at")?,
        kind: row.try_get("kind")?,
        step: row.try_get("step")?,
        detail: row.try_get("detail")?,
    })
}

// ---------- transitions ----------

/// Persist the batch in **one transaction** (one commit, one fsync), each saga's update fenced
/// by its epoch; a saga's events only if its row was updated. The ids whose write applied.
pub async fn persist_transitions(
    pool: &SqlitePool,
    b: &TransitionBatch,
    lease_ttl: Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let sql = format!(
        "UPDATE sagas SET status = ?3, state = ?4, updated_at = {now}, \
             next_run_at = CASE ?5 WHEN 'now' THEN min(coalesce(next_run_at, {now}), {now}) \
                                  WHEN 'at' THEN ?6 ELSE NULL END, \
             lease_owner = CASE WHEN ?7 THEN lease_owner ELSE NULL END, \
             lease_until = CASE WHEN ?7 THEN {until} ELSE NULL END \
         WHERE id = ?1 AND lease_epoch = ?2",
        now = now(),
        until = now_plus("?8")
    );
    let mut tx = begin(pool).await?;
    let mut applied = Vec::with_capacity(b.ids.len());
    for i in 0..b.ids.len() {
        let r = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(b.ids[i])
            .bind(b.epochs[i])
            .bind(b.statuses[i])
            .bind(&b.states[i])
            .bind(b.next_kinds[i])
            .bind(b.next_ats[i].map(ts))
            .bind(b.keep_leases[i])
            .bind(secs(lease_ttl))
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 1 {
            applied.push(b.ids[i]);
        }
    }
    for (j, saga) in b.event_sagas.iter().enumerate() {
        if applied.contains(saga) {
            insert_event(
                &mut tx,
                *saga,
                &b.event_kinds[j],
                b.event_steps[j].as_deref(),
                &b.event_details[j],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(applied)
}

// ---------- retention ----------

pub async fn purge_idempotency_keys(
    pool: &SqlitePool,
    retention: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let sql = format!(
        "DELETE FROM idempotency_keys WHERE key IN ( \
             SELECT key FROM idempotency_keys WHERE created_at < {cutoff} LIMIT ?2)",
        cutoff = now_plus("-?1")
    );
    let mut tx = begin(pool).await?;
    let r = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(secs(retention))
        .bind(batch.max(1))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(r.rows_affected())
}

/// Finished sagas (`statuses`) untouched for `retention` and not leased: at most `batch` ids.
pub async fn finished_sagas(
    pool: &SqlitePool,
    statuses: &[&str],
    retention: Duration,
    batch: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let sql = format!(
        "SELECT id FROM sagas WHERE status IN (SELECT value FROM json_each(?1)) \
           AND updated_at < {cutoff} AND (lease_until IS NULL OR lease_until < {now}) \
         ORDER BY id LIMIT ?3",
        cutoff = now_plus("-?2"),
        now = now()
    );
    let statuses = serde_json::to_string(statuses).map_err(|e| sqlx::Error::Encode(e.into()))?;
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(statuses)
        .bind(secs(retention))
        .bind(batch.max(1))
        .fetch_all(pool)
        .await
}

/// Delete `ids` that are still in a finished state (`statuses`), with their keys and events;
/// the number of sagas deleted.
pub async fn delete_sagas(
    pool: &SqlitePool,
    ids: &[Uuid],
    statuses: &[&str],
) -> Result<u64, sqlx::Error> {
    let statuses = serde_json::to_string(statuses).map_err(|e| sqlx::Error::Encode(e.into()))?;
    let mut tx = begin(pool).await?;
    let mut n = 0;
    for id in ids {
        let r = sqlx::query(
            "DELETE FROM sagas WHERE id = ?1 AND status IN (SELECT value FROM json_each(?2))",
        )
        .bind(id)
        .bind(&statuses)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            continue;
        }
        n += 1;
        for sql in [
            "DELETE FROM idempotency_keys WHERE saga_id = ?1",
            "DELETE FROM business_keys WHERE kind = 'saga' AND id = ?1",
            "DELETE FROM saga_events WHERE saga_id = ?1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    Ok(n)
}
