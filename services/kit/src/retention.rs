//! Forgetting barrier rows: a service cannot know on its own when a saga's barrier rows are safe
//! to delete — a parked saga may resume days later, and a compensation row deleted too early
//! would let a late action through (the hanging-action hole the barrier closes). So:
//!
//! - the orchestrator tells each service which sagas are final and past its retention:
//!   `POST /barrier/forget` `{"saga_ids": [...]}` ([`forget`]), idempotent (an unknown or
//!   already forgotten saga id deletes nothing and is fine), sent **before** the orchestrator
//!   deletes the sagas, so a crash in between only repeats the call;
//! - a long age **backstop** ([`purge_backstop`], `BARRIER_BACKSTOP_DAYS`, default 90, 0 = off)
//!   deletes barrier rows older than it whatever their saga — unsafe for a saga parked longer
//!   than that: documented in docs/security.md, "Retention". (The choreography's rows are
//!   forgotten on the orders service's `forgotten` event: [`crate::choreo::forget_order`].)
//!
//! Both delete only `saga_barrier` rows; business rows (reservations, payments, shipments) and
//! 2PC branch rows are never touched.

use std::time::Duration;

use crate::store::{Db, query, query_each};
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{self, Api};
use crate::barrier::MAX_KEY_LEN;
use crate::http::Json;
use crate::problem::{Issues, Problem};
use crate::service::App;

/// How a retention pass runs (the orchestrator's sagas, the orders service's orders): rows per
/// purge statement and time between passes. Flattened into each binary's settings.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct PurgePace {
    /// Rows per purge statement, 1 to 1000 (the services' limit per forget call): sagas per
    /// forget call and per delete, orders deleted (with their `forgotten` events) per
    /// transaction, idempotency keys per delete.
    #[arg(long, env = "PURGE_BATCH", default_value_t = 500,
          value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub purge_batch: i64,
    /// Time between retention passes (one instance at a time purges, whatever their number).
    #[arg(long, env = "PURGE_INTERVAL_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub purge_interval_ms: u64,
}

impl PurgePace {
    pub fn every(&self) -> Duration {
        Duration::from_millis(self.purge_interval_ms)
    }
}

/// The path of the forget call.
pub const FORGET_PATH: &str = "/barrier/forget";

/// Most saga ids in one forget call.
pub const MAX_FORGET: usize = 1000;

/// Migration version of the backstop's index on `saga_barrier (created_at)`.
pub const MIGRATION_VERSION: i64 = 20_261_201_021_900;

/// The backstop scans by age; without this index each of its batches would read the table.
pub const DDL: &str = "CREATE INDEX saga_barrier_created ON saga_barrier (created_at);";

/// `migrator` plus the backstop's index as version [`MIGRATION_VERSION`].
pub fn with_backstop_index(migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    crate::barrier::with_migration(
        migrator,
        MIGRATION_VERSION,
        "tandem kit barrier backstop index",
        DDL,
    )
}

/// Rows the backstop deletes per statement.
pub const BACKSTOP_BATCH: i64 = 1000;

/// How often a service runs its backstop.
pub const BACKSTOP_EVERY: Duration = Duration::from_secs(3600);

/// The body of `POST /barrier/forget`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgetRequest {
    /// The sagas' ids (1 to 1000).
    #[schema(min_items = 1, max_items = 1000)]
    pub saga_ids: Vec<String>,
}

impl ForgetRequest {
    /// Between 1 and [`MAX_FORGET`] ids, each shaped like the saga id of an `Idempotency-Key`.
    pub fn validate(&self) -> Result<(), Issues> {
        let mut issues = Issues::default();
        if self.saga_ids.is_empty() {
            issues.add("/saga_ids", "must list at least one saga id");
        } else if self.saga_ids.len() > MAX_FORGET {
            issues.add(
                "/saga_ids",
                format!("must list at most {MAX_FORGET} saga ids (send several calls)"),
            );
        }
        for (i, id) in self.saga_ids.iter().enumerate().take(MAX_FORGET) {
            let pointer = format!("/saga_ids/{i}");
            if id.chars().any(char::is_whitespace) {
                issues.add(pointer, "must not contain spaces");
            } else {
                issues.text(&pointer, id, MAX_KEY_LEN);
            }
        }
        issues.finish()
    }
}

/// `POST /barrier/forget`.
pub fn routes() -> Api<App> {
    Api::new().route(
        FORGET_PATH,
        api::post("Forget the barrier rows of final sagas (the orchestrator, past retention)")
            .body_json(json!({
                "type": "object",
                "required": ["saga_ids"],
                "properties": {
                    "saga_ids": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_FORGET,
                        "description": "the sagas' ids, as in their steps' `Idempotency-Key`s",
                        "items": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": crate::barrier::MAX_KEY_LEN,
                            "pattern": r"^[^\s\u0000-\u001F\u007F-\u009F]*$"
                        }
                    }
                },
                "additionalProperties": false
            }))
            .answer_schema(200, "`{\"forgotten\": rows deleted}`", api::object()),
        forget_handler,
    )
}

async fn forget_handler(
    State(app): State<App>,
    Json(req): Json<ForgetRequest>,
) -> Result<axum::Json<Value>, Problem> {
    req.validate()?;
    let forgotten = forget(&app.db, &req.saga_ids).await?;
    Ok(axum::Json(json!({ "forgotten": forgotten })))
}

/// Delete every barrier row of `saga_ids`; the number of rows deleted (0 for sagas unknown here
/// or already forgotten).
pub async fn forget(db: &Db, saga_ids: &[String]) -> Result<u64, sqlx::Error> {
    let n = query("DELETE FROM saga_barrier WHERE saga_id = ANY($1)")
        .bind(saga_ids)
        .execute(db)
        .await?;
    if n > 0 {
        crate::stats::write_committed(db);
    }
    Ok(n)
}

/// One batch of the backstop: delete at most `batch` barrier rows created more than `age` ago
/// (on Postgres rows another transaction holds are skipped; SQLite has one writer at a time).
/// The number deleted. `db`: the service's [`Db`], or a Postgres pool.
pub async fn purge_backstop(
    db: impl Into<Db>,
    age: Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let db = db.into();
    // Postgres by ctid with SKIP LOCKED (no portable form: each dialect its statement).
    let n = query_each(
        "DELETE FROM saga_barrier WHERE ctid = ANY(ARRAY( \
             SELECT ctid FROM saga_barrier \
             WHERE created_at < now() - make_interval(secs => $1) \
             LIMIT $2 FOR UPDATE SKIP LOCKED))",
        "DELETE FROM saga_barrier WHERE rowid IN ( \
             SELECT rowid FROM saga_barrier \
             WHERE created_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('-%f seconds', $1)) \
             LIMIT $2)",
    )
    .bind(age.as_secs_f64())
    .bind(batch)
    .execute(&db)
    .await?;
    if n > 0 {
        crate::stats::write_committed(&db);
    }
    Ok(n)
}

/// Every [`BACKSTOP_EVERY`], the backstop in batches until a batch comes back short. Runs until
/// the task is dropped or aborted.
pub async fn backstop_loop(pool: Db, age: Duration) {
    loop {
        let mut total = 0;
        loop {
            match purge_backstop(pool.clone(), age, BACKSTOP_BATCH).await {
                Ok(n) => {
                    total += n;
                    if n < BACKSTOP_BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "barrier backstop failed");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(
                rows = total,
                ?age,
                "barrier backstop purged rows older than it"
            );
        }
        tokio::time::sleep(BACKSTOP_EVERY).await;
    }
}
