//! The coordinator log in Postgres (table `transactions`, its `transaction_messages` and the
//! client keys `transaction_keys`). Every write after creation is fenced by the lease epoch.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgPool;
use sqlx::{FromRow, Row};
use uuid::Uuid;

use super::{Part, TxnRow, TxnState, txn_columns};
use crate::store::create::{RunKind, client_key, same_business_key};
use crate::store::{NewRun, Page, inserted, one_by_id, read_rows, secs};

/// A transaction to log at `POST /transactions`, before any Prepare.
pub struct NewTxn<'a> {
    pub run: NewRun<'a>,
    pub protocol: &'a str,
    pub participants: &'a [Part],
}

/// What logging a transaction found.
pub type Created = crate::store::Created<TxnRow>;

/// Log a new transaction (one transaction: client key, business key across sagas and
/// transactions, the row leased to its creator with epoch 1).
pub async fn create(pool: &PgPool, new: &NewTxn<'_>) -> Result<Created, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(seen) = client_key(&mut tx, RunKind::Transaction, &new.run).await? {
        tx.rollback().await?;
        return Ok(seen);
    }
    if let Some(taken) = claim_business_key(&mut tx, new).await? {
        // The same transaction again keeps the client key (now naming it); a conflict stores
        // nothing.
        if let Created::SameBusinessKey(_) = taken {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        return Ok(taken);
    }
    let row = sqlx::query(concat!(
        "INSERT INTO transactions (id, protocol, definition, version, business_key, input, \
             input_hash, request_hash, state, participants, next_run_at, lease_owner, \
             lease_until, lease_epoch) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'preparing', $9, now(), $10, \
             now() + make_interval(secs => $11), 1) \
         ON CONFLICT (definition, business_key) WHERE business_key IS NOT NULL DO NOTHING \
         RETURNING ",
        txn_columns!()
    ))
    .bind(new.run.id)
    .bind(new.protocol)
    .bind(new.run.definition)
    .bind(new.run.version)
    .bind(new.run.business_key.as_deref())
    .bind(new.run.input)
    .bind(&new.run.input_hash)
    .bind(new.run.request_hash)
    .bind(sqlx::types::Json(new.participants))
    .bind(new.run.owner)
    .bind(secs(new.run.lease_ttl))
    .fetch_optional(&mut *tx)
    .await?;
    let created = match row {
        Some(row) => Created::New(Box::new(TxnRow::from_row(&row)?)),
        None => same_business_key(&mut tx, RunKind::Transaction, &new.run)
            .await?
            .unwrap_or(Created::BusinessKeyConflict(Uuid::nil())),
    };
    if let Created::BusinessKeyConflict(_) = created {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
        tandem_kit::stats::write_committed(pool);
    }
    Ok(created)
}

/// Claim the business key in the namespace sagas share (`business_keys`): None if it is now
/// this transaction's; else what holds it (a concurrent creation of the same key waits for the
/// first to commit, then finds it here).
async fn claim_business_key(
    tx: &mut sqlx::PgConnection,
    new: &NewTxn<'_>,
) -> Result<Option<Created>, sqlx::Error> {
    let Some(bk) = new.run.business_key.as_deref() else {
        return Ok(None);
    };
    let claim = sqlx::query(
        "INSERT INTO business_keys (definition, business_key, kind, id) \
         VALUES ($1, $2, 'transaction', $3) ON CONFLICT DO NOTHING",
    );
    if inserted(
        &mut *tx,
        claim.bind(new.run.definition).bind(bk).bind(new.run.id),
    )
    .await?
    {
        return Ok(None);
    }
    let (kind, id): (String, Uuid) = sqlx::query_as(
        "SELECT kind, id FROM business_keys WHERE definition = $1 AND business_key = $2",
    )
    .bind(new.run.definition)
    .bind(bk)
    .fetch_one(&mut *tx)
    .await?;
    if kind == "transaction" {
        return same_business_key(tx, RunKind::Transaction, &new.run).await;
    }
    Ok(Some(Created::TakenByOther(id)))
}

/// One message between the coordinator and a participant.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub at: DateTime<Utc>,
    /// `<step index>:<service>`
    pub peer: String,
    /// `out` (coordinator → participant) or `in`.
    pub dir: String,
    pub kind: String,
    pub detail: Value,
}

impl Message {
    /// A message logged now.
    pub fn now(peer: String, dir: &str, kind: &str, detail: Value) -> Self {
        Message {
            at: Utc::now(),
            peer,
            dir: dir.into(),
            kind: kind.into(),
            detail,
        }
    }
}

/// What one fenced write records.
pub struct Progress<'a> {
    pub state: TxnState,
    /// The decision record, if this write logs it (never changes a logged one).
    pub decision: Option<&'static str>,
    pub participants: &'a [Part],
    pub messages: &'a [Message],
}

/// Write progress, fenced by `epoch`; a settled state ends the row's lease and due time.
/// False: fenced (another instance owns the transaction now) — nothing was written.
pub async fn progress(
    pool: &PgPool,
    id: Uuid,
    epoch: i64,
    p: &Progress<'_>,
) -> Result<bool, sqlx::Error> {
    let settled = p.state.is_settled();
    let messages = sqlx::types::Json(p.messages);
    let n: i64 = sqlx::query_scalar(
        "WITH u AS ( \
            UPDATE transactions SET state = $3, participants = $4, updated_at = now(), \
                decision = COALESCE(decision, $5), \
                decided_at = CASE WHEN decision IS NULL AND $5 IS NOT NULL THEN now() ELSE decided_at END, \
                next_run_at = CASE WHEN $6 THEN NULL ELSE next_run_at END, \
                lease_owner = CASE WHEN $6 THEN NULL ELSE lease_owner END, \
                lease_until = CASE WHEN $6 THEN NULL ELSE lease_until END \
            WHERE id = $1 AND lease_epoch = $2 RETURNING id), \
         m AS (INSERT INTO transaction_messages (txn_id, at, peer, dir, kind, detail) \
            SELECT u.id, x.at, x.peer, x.dir, x.kind, COALESCE(x.detail, '{}') FROM u, \
                jsonb_to_recordset($7::jsonb) AS x(at timestamptz, peer text, dir text, kind text, detail jsonb)) \
         SELECT count(*) FROM u",
    )
    .bind(id)
    .bind(epoch)
    .bind(p.state.as_str())
    .bind(sqlx::types::Json(p.participants))
    .bind(p.decision)
    .bind(settled)
    .bind(messages)
    .fetch_one(pool)
    .await?;
    tandem_kit::stats::write_committed(pool);
    Ok(n == 1)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<TxnRow>, sqlx::Error> {
    let sql = concat!(
        "SELECT ",
        txn_columns!(),
        " FROM transactions WHERE id = $1"
    );
    one_by_id(pool, sql, id, |r| TxnRow::from_row(r)).await
}

/// The message log of a transaction, in order.
pub async fn messages(pool: &PgPool, id: Uuid) -> Result<Vec<(i64, Message)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, at, peer, dir, kind, detail FROM transaction_messages WHERE txn_id = $1 \
         ORDER BY seq",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("seq")?,
                Message {
                    at: r.try_get("at")?,
                    peer: r.try_get("peer")?,
                    dir: r.try_get("dir")?,
                    kind: r.try_get("kind")?,
                    detail: r.try_get("detail")?,
                },
            ))
        })
        .collect()
}

/// Transactions, newest first.
pub async fn list(
    pool: &PgPool,
    state: Option<TxnState>,
    protocol: Option<&str>,
    page: Page,
) -> Result<Vec<TxnRow>, sqlx::Error> {
    let q = sqlx::query(concat!(
        "SELECT ",
        txn_columns!(),
        " FROM transactions WHERE ($1::text IS NULL OR state = $1) \
           AND ($4::text IS NULL OR protocol = $4) \
           AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
    ));
    read_rows(
        pool,
        q.bind(state.map(|s| s.as_str()))
            .bind(page.before)
            .bind(page.limit)
            .bind(protocol),
    )
    .await
}

/// Drop at most `batch` client keys of `POST /transactions` older than `retention` (keys another
/// transaction holds are skipped); the number dropped.
pub async fn purge_keys(
    pool: &PgPool,
    retention: std::time::Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM transaction_keys WHERE key IN ( \
             SELECT key FROM transaction_keys \
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
