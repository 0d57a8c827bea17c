//! The saga barrier (DTM's semantics): makes every saga call to a service idempotent and safe
//! against reordering, in the **same local transaction** as the business effect (Postgres or
//! SQLite, through [`crate::store`]).
//!
//! Every mutating saga endpoint takes an `Idempotency-Key: {saga_id}:{step}:{action|compensation}`
//! header ([`IdempotencyKey`], an axum extractor; a missing or malformed key is a 400).
//! The barrier table records, per `(saga_id, step, op)`, the outcome that was answered (HTTP
//! status + JSON body):
//!
//! - **duplicate action** → the first outcome again (the same body on success, the same 409 on a
//!   business failure), no second effect;
//! - **business failure** (the effect returns a 409 [`Problem`]) → the effect's transaction is
//!   rolled back (no partial effect) and the 409 is recorded in a transaction of its own;
//! - **null compensation** (compensation before its action) → recorded, succeeds, no effect; it
//!   also records the action as refused, so a later action for that key is a **hanging** action:
//!   409 `urn:tandem:problem:hanging`, no effect;
//! - **compensation of a failed action** → success, no effect;
//! - **duplicate compensation** → the first outcome again.
//!
//! The barrier row is inserted **with its outcome, after the effect, in the effect's
//! transaction** (`INSERT … ON CONFLICT DO NOTHING`): the effect and its row commit together or
//! not at all. If the key is already taken, the transaction (effect included) is rolled back and
//! the stored outcome is answered. Concurrent duplicates are safe: the second waits on the unique
//! index until the first commits, then rolls back and replays. Any other error (a non-409
//! problem, a database error) rolls everything back, so the request can be retried with the same
//! key (unless the key already has an outcome, which is then answered).
//!
//! The DDL lives here, once ([`DDL`]); each service includes it in its migrator with
//! [`migrator`], as version [`MIGRATION_VERSION`] (services number their own migrations from 2).

use std::borrow::Cow;
use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::effect::{EffectFuture, Origin};
use crate::hooks::TestHooks;
use crate::problem::Problem;
use crate::store::{Conn, Db, Target, query};

/// The header every mutating saga endpoint requires.
pub const HEADER: &str = "idempotency-key";
/// Response header set when the answer is a stored outcome, not a fresh one.
pub const REPLAYED_HEADER: &str = "idempotency-replayed";
/// Longest accepted key (same bound as the orchestrator's own `Idempotency-Key`).
pub const MAX_KEY_LEN: usize = 255;

/// Migration version the barrier table takes in every service's migrator.
pub const MIGRATION_VERSION: i64 = 1;

/// The barrier table. Rows are inserted with their outcome, so `status`/`body` are never NULL
/// (the columns are nullable because an earlier version took the row first and filled it in
/// before commit; a migration, once applied, is never edited).
pub const DDL: &str = r#"
CREATE TABLE saga_barrier (
    saga_id    text        NOT NULL,
    step       text        NOT NULL,
    op         text        NOT NULL CHECK (op IN ('action', 'compensation')),
    -- HTTP status and JSON body that were answered; replayed verbatim to duplicates.
    status     smallint,
    body       jsonb,
    -- 'request': the op itself was handled; 'compensation': an action row written by a null
    -- compensation so that the late action is refused (hanging).
    origin     text        NOT NULL DEFAULT 'request' CHECK (origin IN ('request', 'compensation')),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_id, step, op)
);
"#;

/// The barrier table on SQLite (the embedded store, see [`crate::store`]): the same columns,
/// the body as JSON text, `created_at` as UTC text in the format every SQLite time has.
pub const SQLITE_DDL: &str = r#"
CREATE TABLE saga_barrier (
    saga_id    TEXT    NOT NULL,
    step       TEXT    NOT NULL,
    op         TEXT    NOT NULL CHECK (op IN ('action', 'compensation')),
    status     INTEGER,
    body       TEXT,
    origin     TEXT    NOT NULL DEFAULT 'request' CHECK (origin IN ('request', 'compensation')),
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    PRIMARY KEY (saga_id, step, op)
);
"#;

/// [`migrator`] for SQLite: `service` (`migrations/sqlite/<service>/`) plus [`SQLITE_DDL`] as
/// version [`MIGRATION_VERSION`].
pub fn sqlite_migrator(service: Migrator) -> Migrator {
    assert!(
        !service.version_exists(MIGRATION_VERSION),
        "migration version {MIGRATION_VERSION} is reserved for the saga barrier"
    );
    with_migration(
        service,
        MIGRATION_VERSION,
        "tandem kit saga barrier (sqlite)",
        SQLITE_DDL,
    )
}

/// `service` (e.g. `sqlx::migrate!("../../migrations/inventory")`) plus the barrier table as
/// version [`MIGRATION_VERSION`]. Panics if the service's own migrations use that version (a
/// programming error caught by any test that builds the service).
pub fn migrator(service: Migrator) -> Migrator {
    assert!(
        !service.version_exists(MIGRATION_VERSION),
        "migration version {MIGRATION_VERSION} is reserved for the saga barrier"
    );
    with_migration(service, MIGRATION_VERSION, "tandem kit saga barrier", DDL)
}

/// `migrator` plus one of the kit's own migrations (fixed version, DDL in the kit).
pub fn with_migration(
    migrator: Migrator,
    version: i64,
    description: &'static str,
    ddl: &'static str,
) -> Migrator {
    let mut migrations: Vec<Migration> = migrator.migrations.into_owned();
    migrations.push(Migration::new(
        version,
        Cow::Borrowed(description),
        MigrationType::Simple,
        ddl.into_sql_str(),
        false,
    ));
    Migrator::with_migrations(migrations)
}

/// Which side of a step a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Action,
    Compensation,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Action => "action",
            Op::Compensation => "compensation",
        }
    }
}

/// A parsed `Idempotency-Key: {saga_id}:{step}:{action|compensation}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    pub saga_id: String,
    pub step: String,
    pub op: Op,
}

impl IdempotencyKey {
    /// The header's schema in the API documents: what [`Self::parse`] accepts, in visible
    /// ASCII (what a header carries) — the run id without `:`, spaces or control characters —
    /// ending in `side` when the endpoint is one side of a step (None: either).
    pub fn schema(side: Option<Op>) -> serde_json::Value {
        let last = side.map_or("(action|compensation)", Op::as_str);
        serde_json::json!({
            "type": "string",
            "maxLength": MAX_KEY_LEN,
            // surrounding spaces or tabs are not part of a header's value (HTTP strips them)
            "pattern": format!("^[ \t]*[!-9;-~]+:[a-z0-9_]+:{last}[ \t]*$"),
        })
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.len() > MAX_KEY_LEN {
            return Err(format!("must be at most {MAX_KEY_LEN} characters"));
        }
        let shape = "must be {saga_id}:{step}:{action|compensation}";
        let mut parts = raw.split(':');
        let (Some(saga_id), Some(step), Some(op), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(shape.to_string());
        };
        if saga_id.is_empty() || saga_id.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "{shape}; saga_id must be non-empty, without spaces"
            ));
        }
        if step.is_empty()
            || !step
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!("{shape}; step must match [a-z0-9_]+"));
        }
        let op = match op {
            "action" => Op::Action,
            "compensation" => Op::Compensation,
            _ => {
                return Err(format!(
                    "{shape}; the last part must be action or compensation"
                ));
            }
        };
        Ok(IdempotencyKey {
            saga_id: saga_id.to_string(),
            step: step.to_string(),
            op,
        })
    }

    /// 400 unless this key is for `op` (an action endpoint refuses a compensation key).
    #[allow(clippy::result_large_err)] // a cold path; `Problem` is what every handler answers
    pub fn expect(&self, op: Op) -> Result<&Self, Problem> {
        if self.op == op {
            Ok(self)
        } else {
            Err(key_problem(&format!(
                "this endpoint is a saga {}, the key names a {}",
                op.as_str(),
                self.op.as_str()
            )))
        }
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.saga_id, self.step, self.op.as_str())
    }
}

fn key_problem(message: &str) -> Problem {
    Problem::bad_request(format!("Idempotency-Key header: {message}"))
        .field("/header/Idempotency-Key", message)
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(HEADER)
            .ok_or_else(|| key_problem("is required on every saga call"))?;
        let raw = value
            .to_str()
            .map_err(|_| key_problem("must be visible ASCII"))?;
        IdempotencyKey::parse(raw).map_err(|m| key_problem(&m))
    }
}

/// What a barrier call answered: a stored outcome (status + body), fresh or replayed.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: StatusCode,
    pub body: Value,
    /// `true` when this is the stored outcome of an earlier request with the same key.
    pub replayed: bool,
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    fn from_row(status: i16, body: Value, replayed: bool) -> Self {
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Outcome {
            status,
            body,
            replayed,
        }
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let content_type = if self.status.is_success() {
            "application/json"
        } else {
            crate::problem::CONTENT_TYPE
        };
        let body = serde_json::to_vec(&self.body).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if self.replayed {
            headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        }
        resp
    }
}

/// What the compensation finds about its step's action.
#[derive(Debug, Clone, PartialEq)]
pub enum Prior {
    /// The action succeeded; this is the body it answered. Undo its effect (find the service's
    /// own rows by `key.saga_id` + `key.step`).
    Applied(Value),
    /// The action was refused with this 409 problem body: there is nothing to undo.
    Failed(Value),
    /// No action ran (null compensation): there is nothing to undo, and the action is now refused
    /// as hanging if it ever arrives.
    Absent,
}

/// Where the barrier runs: the service's database (Postgres or SQLite, see [`crate::store`])
/// and its test hooks.
#[derive(Debug, Clone, Copy)]
pub struct Barrier<'a> {
    pub db: &'a Db,
    pub hooks: &'a TestHooks,
}

impl Barrier<'_> {
    /// Run a saga **action** through the barrier.
    ///
    /// `effect` runs in a fresh transaction; it returns the output (answered as 201), a 409
    /// [`Problem`] for a business failure (its transaction is rolled back and the failure is
    /// recorded and replayed), or any other problem, which aborts everything (nothing recorded;
    /// the caller may retry with the same key). Returns the outcome to answer, or that aborting
    /// problem.
    ///
    /// The effect runs **before** the barrier row is inserted, and the row goes in with its
    /// outcome in the effect's transaction: `BEGIN`, the effect's statements, one `INSERT … ON
    /// CONFLICT DO NOTHING`, `COMMIT`. When the insert finds the key taken (a duplicate,
    /// concurrent or late, or an action its compensation already refused), the transaction is
    /// rolled back, effect included, and the stored outcome is answered. A concurrent duplicate
    /// waits on the unique index until the first commits. An effect that trips over its own
    /// unique constraint because of a duplicate is caught the same way: on any failure the
    /// stored outcome, if there is one, is answered instead (and only a failure with no stored
    /// outcome is answered — and logged — as an error). This costs the rare duplicate a
    /// rolled-back effect and saves every first request two round trips (taking the row
    /// first, and a savepoint).
    pub async fn action<F>(self, key: &IdempotencyKey, effect: F) -> Result<Outcome, Problem>
    where
        F: for<'c> FnOnce(Conn<'c>, &'c Origin) -> EffectFuture<'c>,
    {
        key.expect(Op::Action)?;
        self.run(key, effect).await
    }

    /// Run a saga **compensation** through the barrier.
    ///
    /// `effect` is called with what became of the action ([`Prior`]); it must only undo
    /// something for [`Prior::Applied`], and answers its output either way (answered as 200: a
    /// compensation never fails for business reasons; any problem aborts the transaction and
    /// is answered as is, so the orchestrator retries). As for actions, the compensation's own
    /// row is inserted with its outcome after the effect; a duplicate's effect is rolled back
    /// and the first outcome answered, so the effect is committed exactly once per key.
    pub async fn compensation<F>(self, key: &IdempotencyKey, effect: F) -> Result<Outcome, Problem>
    where
        F: for<'c> FnOnce(Conn<'c>, &'c Origin, Prior) -> EffectFuture<'c> + Send + 'static,
    {
        key.expect(Op::Compensation)?;
        let key_in_tx = key.clone();
        self.run(key, move |mut conn, origin| {
            Box::pin(async move {
                let prior = prior(conn.reborrow(), &key_in_tx).await?;
                effect(conn, origin, prior).await
            })
        })
        .await
    }

    /// The effect in a fresh transaction, then its outcome recorded and committed (or the
    /// stored one replayed); an action's 409 is recorded on its own.
    async fn run<F>(self, key: &IdempotencyKey, effect: F) -> Result<Outcome, Problem>
    where
        F: for<'c> FnOnce(Conn<'c>, &'c Origin) -> EffectFuture<'c>,
    {
        let origin = Origin::saga(key);
        let mut tx = self.db.begin().await?;
        let problem = match effect(tx.conn(), &origin).await {
            Ok(body) => return self.commit(tx, key, body).await,
            Err(problem) => problem,
        };
        // The effect's work is undone either way; an action's 409 is then recorded on its own.
        drop(tx.rollback().await);
        if key.op == Op::Action && problem.status == StatusCode::CONFLICT {
            tracing::info!(%key, slug = %problem.slug, "barrier: action refused (business failure)");
            crate::crash::point("service.action.before_commit");
            return self
                .record_alone(key, problem.status, &problem.to_json())
                .await;
        }
        replay_instead(self.db, key, problem).await
    }

    /// After a successful effect: insert the outcome and commit, or (the key is taken) roll
    /// the effect back and answer the stored outcome.
    async fn commit(
        self,
        mut tx: crate::store::Tx,
        key: &IdempotencyKey,
        body: Value,
    ) -> Result<Outcome, Problem> {
        let status = match key.op {
            Op::Action => StatusCode::CREATED,
            Op::Compensation => StatusCode::OK,
        };
        if !insert_outcome(&mut tx, key, status, &body).await? {
            tx.rollback().await?;
            let outcome = stored(self.db, key).await?;
            tracing::info!(%key, status = outcome.status.as_u16(), "barrier: replaying the stored outcome");
            return Ok(outcome);
        }
        self.hooks.before_commit(key).await;
        crate::crash::point(match key.op {
            Op::Action => "service.action.before_commit",
            Op::Compensation => "service.compensation.before_commit",
        });
        tx.commit().await?;
        crate::stats::write_committed(self.db);
        crate::crash::point(match key.op {
            Op::Action => "service.action.after_commit",
            Op::Compensation => "service.compensation.after_commit",
        });
        Ok(Outcome {
            status,
            body,
            replayed: false,
        })
    }

    /// Record a business failure in a transaction of its own (the effect's was rolled back), or
    /// answer the outcome already stored under the key.
    async fn record_alone(
        self,
        key: &IdempotencyKey,
        status: StatusCode,
        body: &Value,
    ) -> Result<Outcome, Problem> {
        if insert_outcome(self.db, key, status, body).await? {
            crate::stats::write_committed(self.db);
            Ok(Outcome {
                status,
                body: body.clone(),
                replayed: false,
            })
        } else {
            stored(self.db, key).await
        }
    }
}

/// What became of the action of a compensation's step. Takes the *action's* row first: if
/// that succeeds, the action never ran (null compensation) and the row, recorded as a 409
/// `hanging`, refuses the action if it comes late. If the action is in flight, this waits for
/// it to commit or roll back.
async fn prior(mut conn: Conn<'_>, key: &IdempotencyKey) -> Result<Prior, Problem> {
    let null_compensation = query(
        "INSERT INTO saga_barrier (saga_id, step, op, status, body, origin)
         VALUES ($1, $2, 'action', 409, $3, 'compensation')
         ON CONFLICT DO NOTHING",
    )
    .bind(&key.saga_id)
    .bind(&key.step)
    .bind(hanging_problem(key).to_json())
    .execute(&mut conn)
    .await?
        == 1;
    if null_compensation {
        tracing::info!(%key, "barrier: null compensation (no action ran); the action is now refused");
        return Ok(Prior::Absent);
    }
    let action_key = IdempotencyKey {
        op: Op::Action,
        ..key.clone()
    };
    let action = stored(&mut conn, &action_key).await?;
    Ok(if action.status.is_success() {
        Prior::Applied(action.body)
    } else {
        Prior::Failed(action.body)
    })
}

/// The problem a hanging action (one that arrives after its compensation) is refused with.
pub fn hanging_problem(key: &IdempotencyKey) -> Problem {
    Problem::conflict("hanging", "Action refused: its compensation already ran")
        .detail(format!(
            "step {} of saga {} was compensated before this action arrived; the action is refused with no effect",
            key.step, key.saga_id
        ))
        .with("saga_id", key.saga_id.clone())
        .with("step", key.step.clone())
}

/// Insert the barrier row for `key` with its outcome; `false` if the key was already taken
/// (after waiting for a concurrent inserter to commit or roll back).
async fn insert_outcome<'e>(
    on: impl Target<'e>,
    key: &IdempotencyKey,
    status: StatusCode,
    body: &Value,
) -> Result<bool, Problem> {
    let done = query(
        "INSERT INTO saga_barrier (saga_id, step, op, status, body) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(&key.saga_id)
    .bind(&key.step)
    .bind(key.op.as_str())
    .bind(status.as_u16() as i16)
    .bind(body)
    .execute(on)
    .await?;
    Ok(done == 1)
}

/// After a failed effect: the outcome stored under the key if there is one (the request was a
/// duplicate, and the effect failed because the first one's rows exist), else the problem.
async fn replay_instead(
    db: &Db,
    key: &IdempotencyKey,
    problem: Problem,
) -> Result<Outcome, Problem> {
    match stored(db, key).await {
        Ok(outcome) => {
            tracing::info!(%key, "barrier: the effect failed on a duplicate; replaying the stored outcome");
            Ok(outcome)
        }
        Err(_) => Err(problem),
    }
}

/// The committed outcome under `key`.
async fn stored<'e>(on: impl Target<'e>, key: &IdempotencyKey) -> Result<Outcome, Problem> {
    let row: Option<(Option<i16>, Option<Value>)> =
        query("SELECT status, body FROM saga_barrier WHERE saga_id = $1 AND step = $2 AND op = $3")
            .bind(&key.saga_id)
            .bind(&key.step)
            .bind(key.op.as_str())
            .fetch_optional(on)
            .await?;
    match row {
        Some((Some(status), Some(body))) => Ok(Outcome::from_row(status, body, true)),
        other => Err(Problem::internal(format!(
            "barrier row {key} has no outcome: {other:?}"
        ))),
    }
}

/// A reply body for a compensation that had nothing to undo, with the reason.
pub fn nothing_to_undo(prior: &Prior) -> Value {
    match prior {
        Prior::Applied(_) => json!({ "reason": "the action's effect was already undone" }),
        Prior::Failed(body) => json!({
            "reason": "the action failed; there is nothing to undo",
            "action_problem": body.get("type").cloned().unwrap_or(Value::Null),
        }),
        Prior::Absent => json!({
            "reason": "null compensation: no action ran under this key; a late action will be refused as hanging",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_well_formed_keys() {
        let k = IdempotencyKey::parse("0193-abc:reserve_inventory:action").unwrap();
        assert_eq!(k.saga_id, "0193-abc");
        assert_eq!(k.step, "reserve_inventory");
        assert_eq!(k.op, Op::Action);
        assert_eq!(k.to_string(), "0193-abc:reserve_inventory:action");
        let c = IdempotencyKey::parse("s:step2:compensation").unwrap();
        assert_eq!(c.op, Op::Compensation);
    }

    #[test]
    fn rejects_malformed_keys() {
        for bad in [
            "",
            "s:step",
            "s:step:action:extra",
            ":step:action",
            "s::action",
            "s:Step:action",
            "s:step-1:action",
            "s:step:undo",
            "s x:step:action",
            // Postgres cannot store a NUL (and HTTP cannot carry one in a header anyway)
            "s\0:step:action",
            "s:st\0ep:action",
        ] {
            assert!(
                IdempotencyKey::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        let long = format!("{}:s:action", "x".repeat(MAX_KEY_LEN));
        assert!(IdempotencyKey::parse(&long).is_err());
    }

    #[test]
    fn migrator_puts_the_barrier_first() {
        let service = Migrator::with_migrations(vec![Migration::new(
            2,
            Cow::Borrowed("service"),
            MigrationType::Simple,
            "SELECT 1".into_sql_str(),
            false,
        )]);
        let m = migrator(service);
        let versions: Vec<i64> = m.iter().map(|m| m.version).collect();
        assert_eq!(versions, vec![1, 2]);
    }
}
