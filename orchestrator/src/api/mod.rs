//! The REST API. Every rejection is problem+json (see `tandem_kit::problem`); nothing is stored
//! for a rejected request. Handlers parse and answer; the work is the driver's
//! ([`crate::driver::Driver::start`], [`crate::driver::Driver::act`]) and the registry's.
//!
//! - [`sagas`]: `POST /sagas` (optional `Idempotency-Key`; `?wait=SECONDS` answers once the new
//!   saga is completed, compensated or failed), `GET /sagas/{id}` (`?wait=` long-polls),
//!   `GET /sagas?status=&definition=&limit=&cursor=`;
//! - [`actions`]: `POST /sagas/{id}/cancel`, `/retry-now`, `/resume` (`/retry`: its old name);
//! - [`definitions`]: `POST /definitions`, `GET /definitions`, `GET /definitions/{name}`,
//!   `GET /definitions/{name}/versions` (every stored version, newest first);
//! - [`transactions`]: `POST /transactions` (2PC), `GET /transactions/{id}`,
//!   `GET /transactions?state=&protocol=&limit=&cursor=`,
//!   `GET /transactions/{id}/decision` (participants ask "what was decided?"),
//!   `POST /transactions/{id}/resolve` (an operator's heuristic decision);
//! - [`paxos`]: `POST /transactions/{id}/paxos` (an acceptor's message for a Paxos Commit
//!   leader);
//! - [`dashboard`]: the operators' console at `/ui/` (embedded HTML/CSS/JS);
//! - here: the router, `GET /healthz`.

pub mod actions;
mod dashboard;
pub mod definitions;
mod paxos;
pub mod sagas;
pub mod transactions;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sqlx::PgPool;
use tandem_kit::http::Json;
use tandem_kit::problem::Problem;
use uuid::Uuid;

use crate::driver::Driver;

pub use sagas::{saga_view, view_of};

/// What the handlers share.
#[derive(Clone)]
pub struct Ctx {
    pub driver: Arc<Driver>,
    pub coordinator: Arc<crate::commit::Coordinator>,
    /// For reads.
    pub pool: PgPool,
}

pub fn router(ctx: Ctx) -> Router {
    let scrape = tandem_kit::metrics::Scrape::default().pool("business", &ctx.pool);
    let r = Router::new()
        .route("/sagas", post(sagas::create).get(sagas::list))
        .route("/sagas/{id}", get(sagas::get_one))
        .route("/sagas/{id}/cancel", post(actions::cancel))
        .route("/sagas/{id}/retry-now", post(actions::retry_now))
        .route("/sagas/{id}/resume", post(actions::resume))
        .route("/sagas/{id}/retry", post(actions::resume))
        .route(
            "/definitions",
            post(definitions::create).get(definitions::list),
        )
        .route("/definitions/{name}", get(definitions::get_one))
        .route("/definitions/{name}/versions", get(definitions::versions))
        .route(
            "/transactions",
            post(transactions::create).get(transactions::list),
        )
        .route("/transactions/{id}", get(transactions::get_one))
        .route("/transactions/{id}/decision", get(transactions::decision))
        .route("/transactions/{id}/resolve", post(transactions::resolve))
        .route("/transactions/{id}/paxos", post(paxos::deliver))
        .route("/healthz", get(healthz))
        .route("/", get(dashboard::to_console))
        .route("/ui", get(dashboard::to_console))
        .route("/ui/", get(dashboard::index))
        .route("/ui/app.js", get(dashboard::app_js))
        .route("/ui/app.css", get(dashboard::app_css))
        .with_state(ctx);
    tandem_kit::http::finish_with(r, scrape)
}

/// `?limit=` of a list: 1 to 500, default 50.
#[allow(clippy::result_large_err)] // `Problem` is what every handler answers
pub(super) fn list_limit(limit: Option<i64>) -> Result<i64, Problem> {
    let limit = limit.unwrap_or(50);
    if (1..=500).contains(&limit) {
        Ok(limit)
    } else {
        Err(Problem::invalid(
            "/query/limit",
            "must be between 1 and 500",
        ))
    }
}

/// What to read for a page of `limit` items after `cursor`: one row more than it shows, so
/// that [`page`] knows whether there is a next one.
fn read_ahead(limit: i64, cursor: Option<Uuid>) -> crate::store::Page {
    crate::store::Page {
        before: cursor,
        limit: limit + 1,
    }
}

/// One page of a newest-first list read with `limit + 1` rows: `{"items", "next_cursor"}` (the
/// last item's id when there are more).
pub(super) fn page<R>(
    rows: &[R],
    limit: i64,
    id: impl Fn(&R) -> uuid::Uuid,
    item: impl Fn(&R) -> Value,
) -> Value {
    let limit = limit as usize;
    let next_cursor = (rows.len() > limit).then(|| id(&rows[limit - 1]).to_string());
    let items: Vec<Value> = rows.iter().take(limit).map(item).collect();
    json!({ "items": items, "next_cursor": next_cursor })
}

/// A run as `read` returns it (with whether it is settled) once it is settled, or as it is
/// when `wait` seconds have passed. Woken by `finished` (a waiter taken before the run could
/// settle here), and looks again every 250 ms besides (another instance may run it).
/// `just_started`: the run was created by this request and is driven here, so it cannot have
/// settled yet — skip the first read. The caller forgets its waiter afterwards.
async fn until_settled<T, Fut>(
    wait: f64,
    mut finished: tokio::sync::oneshot::Receiver<()>,
    just_started: bool,
    mut read: impl FnMut() -> Fut,
) -> Result<T, Problem>
where
    Fut: std::future::Future<Output = Result<(T, bool), Problem>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs_f64(wait);
    let mut read_now = !just_started;
    let mut woken = false;
    loop {
        if read_now {
            let (run, settled) = read().await?;
            if settled || tokio::time::Instant::now() >= deadline {
                return Ok(run);
            }
        }
        read_now = true;
        let tick = tokio::time::sleep_until(
            deadline.min(tokio::time::Instant::now() + std::time::Duration::from_millis(250)),
        );
        tokio::select! {
            _ = tick => {}
            _ = &mut finished, if !woken => woken = true,
        }
    }
}

/// 201 (a new run) or 200 (the same request again): the run's view, with its `Location`.
fn located(status: StatusCode, path: String, view: Value) -> Response {
    (status, [(header::LOCATION, path)], Json(view)).into_response()
}

/// 422: the client's Idempotency-Key was first sent with another body (`did`: "started saga",
/// "began transaction"; `field`: where the id goes).
fn key_reused(did: &str, field: &'static str, id: Uuid) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
        "Idempotency-Key reused with a different request",
    )
    .detail(format!(
        "this Idempotency-Key already {did} {id} with a different body"
    ))
    .with(field, id.to_string())
}

/// 409: the business key is held by run `id` of `kind` ("saga" or "transaction").
fn business_key_taken(kind: &str, id: Uuid) -> Problem {
    Problem::conflict("business-key-conflict", "Business key already used")
        .detail(format!("{kind} {id} already runs this definition for the same business key (sagas and transactions share one namespace)"))
        .with(if kind == "saga" { "saga_id" } else { "transaction_id" }, id.to_string())
}

async fn healthz(State(c): State<Ctx>) -> Result<Json<Value>, Problem> {
    sqlx::query("SELECT 1")
        .execute(&c.pool)
        .await
        .map_err(Problem::unavailable)?;
    Ok(Json(
        json!({ "status": "ok", "instance": c.driver.instance_id() }),
    ))
}
