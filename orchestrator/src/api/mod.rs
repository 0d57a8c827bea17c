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
//! - here: the router, `GET /healthz`; with `FAULT_INJECTION=on` the kit's `/faults`
//!   (`tandem_kit::faults`), which the decision query and the acceptors' messages go through.

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
use serde_json::{Value, json};
use tandem_kit::api::{self, Api};
use tandem_kit::auth::{Access, Auth, Rule, rule};
use tandem_kit::http::Json;
use tandem_kit::problem::Problem;
use uuid::Uuid;

use crate::driver::Driver;

pub use sagas::{saga_view, view_of};

/// What the handlers share.
#[derive(Clone)]
pub struct Ctx {
    pub driver: Arc<Driver>,
    /// 2PC / 3PC / Paxos Commit: None on SQLite (they need Postgres: see [`Ctx::commit`]).
    pub coordinator: Option<Arc<crate::commit::Coordinator>>,
    /// The saga store, for reads.
    pub store: crate::store::Store,
    /// The participants' decision queries and the acceptors' messages go through these
    /// (`FAULT_INJECTION`; `tandem_kit::faults`).
    pub faults: tandem_kit::faults::Faults,
}

impl Ctx {
    /// The transactions' coordinator, or the problem that says they need Postgres: 501
    /// `needs-postgres` (nothing is stored).
    #[allow(clippy::result_large_err)] // `Problem` is what every handler answers
    pub fn commit(&self) -> Result<&Arc<crate::commit::Coordinator>, Problem> {
        self.coordinator.as_ref().ok_or_else(needs_postgres)
    }
}

/// How each transactions route documents [`needs_postgres`].
const NEEDS_POSTGRES: &str =
    "needs-postgres: this orchestrator runs on SQLite; transactions need Postgres";

/// 501: transactions (2PC / 3PC / Paxos Commit) on an orchestrator whose store is SQLite.
pub fn needs_postgres() -> Problem {
    Problem::new(
        StatusCode::NOT_IMPLEMENTED,
        "needs-postgres",
        "Transactions need Postgres",
    )
    .detail(
        "2PC, 3PC and Paxos Commit need Postgres: the services vote YES by preparing a Postgres \
         transaction (PREPARE TRANSACTION), and the coordinator's log is in Postgres. This \
         orchestrator runs on the embedded SQLite store, which runs orchestrated sagas only. \
         Start it with DATABASE_URL=postgres://… (and max_prepared_transactions > 0 on the \
         services' Postgres) to use transactions.",
    )
}

/// Who may call each route (see `tandem_kit::auth`; `/metrics`, `/stats` and `/noop` are the
/// kit's). A route missing here answers 500 (`no-access-rule`) in every configuration.
pub const ACCESS: &[Rule] = &[
    rule("POST", "/sagas", Access::Client),
    rule("GET", "/sagas", Access::Client),
    rule("GET", "/sagas/{id}", Access::Client),
    rule("POST", "/sagas/{id}/cancel", Access::Operator),
    rule("POST", "/sagas/{id}/retry-now", Access::Operator),
    rule("POST", "/sagas/{id}/resume", Access::Operator),
    rule("POST", "/sagas/{id}/retry", Access::Operator),
    rule("POST", "/definitions", Access::Operator),
    rule("GET", "/definitions", Access::Client),
    rule("GET", "/definitions/{name}", Access::Client),
    rule("GET", "/definitions/{name}/versions", Access::Client),
    rule("POST", "/transactions", Access::Client),
    rule("GET", "/transactions", Access::Client),
    rule("GET", "/transactions/{id}", Access::Client),
    // Participants asking about an in-doubt branch (operators may look too).
    rule(
        "GET",
        "/transactions/{id}/decision",
        Access::ServiceOrOperator,
    ),
    rule("POST", "/transactions/{id}/resolve", Access::Operator),
    // Acceptors' messages to a Paxos Commit leader.
    rule("POST", "/transactions/{id}/paxos", Access::Service),
    rule("GET", "/healthz", Access::Open),
    // The console's static files (its API calls carry the operator's token).
    rule("GET", "/", Access::Open),
    rule("GET", "/ui", Access::Open),
    rule("GET", "/ui/", Access::Open),
    rule("GET", "/ui/app.js", Access::Open),
    rule("GET", "/ui/app.css", Access::Open),
];

pub fn router(ctx: Ctx, auth: &Auth) -> Router {
    let mut scrape = tandem_kit::metrics::Scrape::default();
    if let Some(pool) = ctx.store.postgres() {
        scrape = scrape.pool("business", pool);
    }
    let r = sagas_api()
        .merge(definitions_api(
            ctx.driver.registry().services().keys().cloned().collect(),
        ))
        .merge(transactions_api())
        .merge(console_api())
        .route(
            "/healthz",
            api::get("Health: 200 when the database answers").answer_schema(
                200,
                "`{\"status\": \"ok\", \"instance\"}`",
                api::object(),
            ),
            healthz,
        )
        .with_state(ctx.clone())
        .merge(ctx.faults.routes());
    let rules = ACCESS.iter().chain(tandem_kit::faults::ACCESS);
    tandem_kit::http::finish_with(r, scrape, "orchestrator", &auth.guard(rules))
}

/// A client's `Idempotency-Key` as [`sagas::idempotency_key`] takes it: 1 to 255 visible ASCII
/// characters, spaces and tabs between them (around them, HTTP trims them: no client sends
/// them, and schemathesis's HTTP client refuses to).
fn client_key_schema() -> Value {
    json!({
        "type": "string",
        "maxLength": sagas::MAX_IDEMPOTENCY_KEY_LEN,
        "pattern": "^[!-~]([\t -~]*[!-~])?$",
    })
}

/// Sagas and their operators' actions.
fn sagas_api() -> Api<Ctx> {
    let action = |summary: &str| {
        api::post(summary)
            .path_uuid()
            .header_schema(
                "Tandem-Actor",
                "who acts (recorded in the saga's events): 1 to 100 visible ASCII characters",
                false,
                serde_json::json!({
                    "type": "string",
                    // 1 to 100 visible ASCII characters (MAX_ACTOR_LEN) with spaces and tabs
                    // between them (around them, HTTP trims them: no client sends them)
                    "pattern": "^[!-~]([\t -~]{0,98}[!-~])?$",
                }),
            )
            .answer_schema(202, "the saga, as the action left it", api::object())
            .answer_schema(200, "already so (cancel while compensating)", api::object())
            .error(
                409,
                "not possible in the saga's state (saga-settled, not-waiting, not-failed)",
            )
    };
    Api::new()
        .route(
            "/sagas",
            api::post("Start a saga")
                .query::<sagas::WaitParams>()
                .header_schema(
                    "Idempotency-Key",
                    "1 to 255 visible ASCII characters: the same key and body answer the same saga",
                    false,
                    client_key_schema(),
                )
                .body::<sagas::CreateSaga>()
                .answer_schema(201, "the new saga (`Location: /sagas/{id}`)", api::object())
                .answer_schema(
                    200,
                    "the existing saga (same key and body, or same business key and input)",
                    api::object(),
                )
                .error(409, "the business key is taken with another input"),
            sagas::create,
        )
        .route(
            "/sagas",
            api::get("List sagas, newest first")
                .query::<sagas::ListParams>()
                .answer_schema(200, "`{\"items\", \"next_cursor\"}`", api::object()),
            sagas::list,
        )
        .route(
            "/sagas/{id}",
            api::get("A saga: status, input, outputs, steps, lease, events")
                .path_uuid()
                .query::<sagas::WaitParams>()
                .answer_schema(200, "the saga", api::object()),
            sagas::get_one,
        )
        .route(
            "/sagas/{id}/cancel",
            action("Cancel: compensate every step whose action was sent"),
            actions::cancel,
        )
        .route(
            "/sagas/{id}/retry-now",
            action("Send the step waiting for its retry now"),
            actions::retry_now,
        )
        .route(
            "/sagas/{id}/resume",
            action("Resume a failed saga's compensation"),
            actions::resume,
        )
        .route(
            "/sagas/{id}/retry",
            action("Resume (the old name of /resume)"),
            actions::resume,
        )
}

/// A definition's document as `POST /definitions` takes it (docs/sagas.md): its fields, their
/// shapes and bounds, `service` one of this orchestrator's `services` — what
/// [`crate::saga::definition::Definition::parse`] and the registry check field by field. What it
/// also checks across fields (step names unique, `$from` naming an earlier step, an
/// `input_schema` that compiles, a policy's `deadline_ms` over its `timeout_ms` …) a schema
/// cannot state: those are 422s of a body this schema admits.
fn definition_schema(services: Vec<String>) -> Value {
    use crate::saga::definition::{
        MAX_ATTEMPTS, MAX_DEFINITION_NAME, MAX_DURATION_MS, MAX_STEP_NAME,
    };
    let ms = json!({"type": "integer", "minimum": 1, "maximum": MAX_DURATION_MS});
    let attempts = json!({"type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS});
    let policy = json!({
        "type": "object",
        "description": "retry and timeout policy (docs/sagas.md); a step's fields override the definition's",
        "properties": {
            "timeout_ms": ms,
            "max_attempts": attempts,
            "poll_interval_ms": ms,
            "deadline_ms": ms,
            "compensation_max_attempts": attempts,
            "max_retry_after_ms": ms,
            "backoff": {
                "type": "object",
                "properties": {
                    "initial_ms": ms,
                    "multiplier": {"type": "number", "minimum": 1, "maximum": 100},
                    "max_ms": ms,
                    "jitter": {"type": "number", "minimum": 0, "maximum": 1}
                },
                "additionalProperties": false
            }
        },
        "additionalProperties": false
    });
    let call = json!({
        "type": "object",
        "required": ["service", "method", "path"],
        "properties": {
            "service": {"type": "string", "enum": services},
            "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE"]},
            "path": {"type": "string", "pattern": r"^/[^\s\u0000-\u001F\u007F-\u009F]*$"},
            "body": {"description": "a template: `{\"$from\": pointer}` and `{\"$id\": step}` are replaced"}
        },
        "additionalProperties": false
    });
    json!({
        "type": "object",
        "description": "a definition: docs/sagas.md",
        "required": ["name", "steps"],
        "properties": {
            "name": {"type": "string", "pattern": format!("^[A-Za-z0-9_.-]{{1,{MAX_DEFINITION_NAME}}}$")},
            "description": {"type": "string"},
            "business_key": {"type": ["string", "null"], "description": "a JSON Pointer into the input (`/order_id`)"},
            "input_schema": {"description": "a JSON Schema (2020-12) of the input"},
            "policy": policy,
            "steps": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "action"],
                    "properties": {
                        "name": {"type": "string", "pattern": format!("^[a-z0-9_]{{1,{MAX_STEP_NAME}}}$")},
                        "action": call,
                        "compensation": {"anyOf": [call, {"type": "null"}]},
                        "policy": {"anyOf": [policy, {"type": "null"}]}
                    },
                    "additionalProperties": false
                }
            }
        },
        "additionalProperties": false
    })
}

/// Saga definitions (`services`: those configured here, what a step may call).
fn definitions_api(services: Vec<String>) -> Api<Ctx> {
    Api::new()
        .route(
            "/definitions",
            api::post("Add a saga definition (a new version, or a known one again)")
                .body_json(definition_schema(services))
                .answer_schema(
                    201,
                    "`{\"name\", \"version\"}`: a new version",
                    api::object(),
                )
                .answer_schema(
                    200,
                    "`{\"name\", \"version\"}`: a known version",
                    api::object(),
                ),
            definitions::create,
        )
        .route(
            "/definitions",
            api::get("The loaded definitions").answer_schema(200, "the definitions", api::object()),
            definitions::list,
        )
        .route(
            "/definitions/{name}",
            api::get("A definition: its current version, or `?version=` that one")
                .query::<definitions::OneParams>()
                .answer_schema(200, "the definition", api::object()),
            definitions::get_one,
        )
        .route(
            "/definitions/{name}/versions",
            api::get("Every stored version of a definition, newest first")
                .query::<definitions::VersionsParams>()
                .answer_schema(200, "the versions", api::object()),
            definitions::versions,
        )
}

/// Two-phase commit and Paxos Commit transactions.
fn transactions_api() -> Api<Ctx> {
    Api::new()
        .route(
            "/transactions",
            api::post("Run a definition as one atomic commit (2PC, 3PC, quorum 3PC or Paxos Commit)")
                .query::<sagas::WaitParams>()
                .header_schema(
                    "Idempotency-Key",
                    "1 to 255 visible ASCII characters: the same key and body answer the same transaction",
                    false,
                    client_key_schema(),
                )
                .body_schema(api::schema(json!({
                    "type": "object",
                    "required": ["protocol", "definition", "input"],
                    "properties": {
                        "protocol": {"type": "string", "enum": ["2pc", "3pc", "3pc-quorum", "paxos-commit"]},
                        "definition": {"type": "string"},
                        "version": {"type": "string"},
                        "input": {"type": "object", "description": "checked against the definition's input JSON Schema"}
                    },
                    "additionalProperties": false
                })))
                .answer_schema(201, "the new transaction", api::object())
                .answer_schema(200, "the existing transaction", api::object())
                .error(409, "the business key is taken (sagas and transactions share one namespace)")
                .error(501, NEEDS_POSTGRES),
            transactions::create,
        )
        .route(
            "/transactions",
            api::get("List transactions, newest first")
                .query::<transactions::ListParams>()
                .answer_schema(200, "`{\"items\", \"next_cursor\"}`", api::object())
                .error(501, NEEDS_POSTGRES),
            transactions::list,
        )
        .route(
            "/transactions/{id}",
            api::get("A transaction: state, decision, votes, message log")
                .path_uuid()
                .query::<sagas::WaitParams>()
                .answer_schema(200, "the transaction", api::object())
                .error(501, NEEDS_POSTGRES),
            transactions::get_one,
        )
        .route(
            "/transactions/{id}/decision",
            api::get("What participants ask: the decision (503 `undecided` while votes come in)")
                .path_uuid()
                .answer_schema(200, "`{\"decision\": \"commit\"|\"abort\"}`", api::object())
                .error(501, NEEDS_POSTGRES),
            transactions::decision,
        )
        .route(
            "/transactions/{id}/resolve",
            api::post("An operator's heuristic decision")
                .path_uuid()
                .body::<transactions::ResolveBody>()
                .answer_schema(200, "the transaction with `recorded`", api::object())
                .error(409, "decision-conflict or not-all-yes")
                .error(501, NEEDS_POSTGRES),
            transactions::resolve,
        )
        .route(
            "/transactions/{id}/paxos",
            api::post("An acceptor's message for the Paxos Commit leader of this transaction")
                .path_uuid()
                .body_json(tandem_kit::paxos::to_leader_schema())
                .answer_schema(202, "taken by the leader here", api::object())
                .error(501, NEEDS_POSTGRES),
            paxos::deliver,
        )
}

/// The operators' console.
fn console_api() -> Api<Ctx> {
    let redirect = || api::get("To the console").answer_empty(303, "to `/ui/`");
    Api::new()
        .route("/", redirect(), dashboard::to_console)
        .route("/ui", redirect(), dashboard::to_console)
        .route(
            "/ui/",
            api::get("The operators' console").answer_media(200, "the page", "text/html"),
            dashboard::index,
        )
        .route(
            "/ui/app.js",
            api::get("The console's script").answer_media(200, "JavaScript", "text/javascript"),
            dashboard::app_js,
        )
        .route(
            "/ui/app.css",
            api::get("The console's style").answer_media(200, "CSS", "text/css"),
            dashboard::app_css,
        )
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
    c.store.ping().await.map_err(Problem::unavailable)?;
    Ok(Json(
        json!({ "status": "ok", "instance": c.driver.instance_id() }),
    ))
}
