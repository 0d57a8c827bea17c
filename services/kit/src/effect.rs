//! A service's business effects, declared as data: one [`Action`] (path, request type,
//! validation, the order it is for, one effect function) per saga action, one [`Compensation`]
//! per compensation. The kit serves them ([`crate::saga`]: barrier, faults, stats, reply) and
//! the 2PC participant runs the *same* action effect inside a transaction it then prepares.
//!
//! An effect runs on the open transaction's connection ([`Conn`]: Postgres or SQLite, see
//! [`crate::store`]; the 2PC participants pass their Postgres connection wrapped). It never commits, rolls back or
//! NOTIFYs (whoever opened the transaction decides: the barrier commits, the 2PC participant
//! prepares), and answers its JSON output or a [`Problem`] — 409 is a business refusal, any other
//! status aborts the call (it may be retried with the same key).

use std::future::Future;
use std::pin::Pin;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use crate::barrier::IdempotencyKey;
use crate::problem::{Issues, Problem};
use crate::store::Conn;

/// Longest `order_id` a compensation body may carry (the services' own bound).
pub const MAX_ORDER_ID_LEN: usize = 128;

/// The future an effect returns, borrowing the transaction's connection.
pub type EffectFuture<'c, T = Value> =
    Pin<Box<dyn Future<Output = Result<T, Problem>> + Send + 'c>>;

/// The call an effect runs for; the rows it writes carry it, so that the compensation (or the
/// audit) finds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The saga id, or for a 2PC branch its transaction id (hyphenated).
    pub run_id: String,
    /// The saga step, or for a 2PC branch the step index.
    pub step: String,
    /// A 2PC branch's transaction id (`None` for a saga call).
    pub txn_id: Option<Uuid>,
}

impl Origin {
    /// The saga call named by an `Idempotency-Key`.
    pub fn saga(key: &IdempotencyKey) -> Self {
        Origin {
            run_id: key.saga_id.clone(),
            step: key.step.clone(),
            txn_id: None,
        }
    }

    /// Branch `step` of 2PC transaction `txn_id`.
    pub fn transaction(txn_id: Uuid, step: u16) -> Self {
        Origin {
            run_id: txn_id.to_string(),
            step: step.to_string(),
            txn_id: Some(txn_id),
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.run_id, self.step)
    }
}

/// An action's effect: `(transaction, origin, validated request)` → output or problem.
pub type ActionEffect<Req> = for<'c> fn(Conn<'c>, &'c Origin, Req) -> EffectFuture<'c>;

/// A compensation's effect, run only when its action's effect was applied: undo it and answer
/// what was undone, or `None` if it had been undone already.
pub type UndoEffect = for<'c> fn(Conn<'c>, &'c Origin) -> EffectFuture<'c, Option<Value>>;

/// A saga action (and the 2PC prepare of the same step), declared as data.
pub struct Action<Req: 'static> {
    /// `POST` path (also how a 2PC prepare names the action).
    pub path: &'static str,
    /// Checks beyond the type (lengths, ranges), naming each field by JSON Pointer.
    pub validate: fn(&Req, &mut Issues),
    pub effect: ActionEffect<Req>,
}

impl<Req> Action<Req> {
    pub const fn new(
        path: &'static str,
        validate: fn(&Req, &mut Issues),
        effect: ActionEffect<Req>,
    ) -> Self {
        Action {
            path,
            validate,
            effect,
        }
    }
}

/// A saga compensation, declared as data. Its body is `{"order_id"}` (informational, and the
/// fault scope): the effect finds what to undo from its [`Origin`] alone.
#[derive(Debug)]
pub struct Compensation {
    /// `POST` path.
    pub path: &'static str,
    /// The reply member that says whether something was undone (`"released": true`).
    pub undone: &'static str,
    pub effect: UndoEffect,
}

impl Compensation {
    pub const fn new(path: &'static str, undone: &'static str, effect: UndoEffect) -> Self {
        Compensation {
            path,
            undone,
            effect,
        }
    }
}

/// A compensation's body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompensationRequest {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub order_id: String,
}

impl CompensationRequest {
    pub fn validate(&self, issues: &mut Issues) {
        issues.text("/order_id", &self.order_id, MAX_ORDER_ID_LEN);
    }
}

/// A parsed, validated action request, ready to run in a transaction.
pub struct Accepted {
    /// The body's top-level `order_id`, if any: the scope of injected faults.
    pub order_id: Option<String>,
    run: Box<dyn Run>,
}

impl Accepted {
    /// Run the effect on `conn` (an open transaction).
    pub fn run<'c>(self, conn: Conn<'c>, origin: &'c Origin) -> EffectFuture<'c> {
        self.run.run(conn, origin)
    }
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("order_id", &self.order_id)
            .finish_non_exhaustive()
    }
}

trait Run: Send {
    fn run<'c>(self: Box<Self>, conn: Conn<'c>, origin: &'c Origin) -> EffectFuture<'c>;
}

struct Bound<Req: 'static> {
    effect: ActionEffect<Req>,
    req: Req,
}

impl<Req: Send + 'static> Run for Bound<Req> {
    fn run<'c>(self: Box<Self>, conn: Conn<'c>, origin: &'c Origin) -> EffectFuture<'c> {
        (self.effect)(conn, origin, self.req)
    }
}

/// An [`Action`] with its request type erased, so a service lists its actions in one slice
/// and the saga handler and the 2PC prepare share them.
pub trait ActionEndpoint: Sync {
    fn path(&self) -> &'static str;
    /// `op` with the request body's schema.
    fn document(&self, op: crate::api::Op) -> crate::api::Op;
    /// Deserialize (422 naming the field on a shape error) and validate a request body.
    #[allow(clippy::result_large_err)] // a cold path; `Problem` is what every handler answers
    fn accept(&self, body: Value) -> Result<Accepted, Problem>;
}

impl<Req: DeserializeOwned + utoipa::ToSchema + Send + 'static> ActionEndpoint for Action<Req> {
    fn path(&self) -> &'static str {
        self.path
    }

    fn document(&self, op: crate::api::Op) -> crate::api::Op {
        op.body::<Req>()
    }

    fn accept(&self, body: Value) -> Result<Accepted, Problem> {
        let order_id = body
            .get("order_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let req: Req = crate::http::from_value(body)?;
        let mut issues = Issues::default();
        (self.validate)(&req, &mut issues);
        issues.finish()?;
        Ok(Accepted {
            order_id,
            run: Box::new(Bound {
                effect: self.effect,
                req,
            }),
        })
    }
}
