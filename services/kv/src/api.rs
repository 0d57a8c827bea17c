//! HTTP routes. Every rejection is problem+json (`tandem_kit::Problem`, via the kit's
//! extractors): 400 malformed JSON or path, 404 `unknown-transaction`, 409 `conflict` (wait-die
//! or lock timeout: retry), `transaction-aborted`, `transaction-committed` (writes after
//! commit), `transaction-not-active`, 413 body over 256 KiB, 415 not JSON, 421 `wrong-shard`,
//! 422 invalid input (key / value limits, participants), 429 `too-many-transactions`, 503
//! `outcome-pending`.
//!
//! Shard: `POST /txns` · `POST /txns/{id}/read|write|delete|commit|abort` · `POST /2pc` ·
//! `GET /status` · `GET /healthz`. Coordinator: `POST /2pc` · `GET /status` · `GET /healthz`.

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use kv_client::wire::{
    BeginRequest, CommitRequest, CommitResponse, KeyRequest, ReadRequest, ReadResponse,
    WriteRequest,
};
use serde_json::json;
use tandem_kit::Problem;
use tandem_kit::api::{self, Api};
use tandem_kit::auth::{Access, Rule, rule};
use tandem_kit::http::{Json, Path};
use uuid::Uuid;

use crate::coordinator::Coordinator;
use crate::net::Envelope;
use crate::shard::Shard;

/// Who may call a shard's routes (see `tandem_kit::auth`): transactions for clients, 2PC
/// messages for Tandem's own processes, status for them and operators.
pub const SHARD_ACCESS: &[Rule] = &[
    rule("POST", "/txns", Access::Client),
    rule("POST", "/txns/{id}/read", Access::Client),
    rule("POST", "/txns/{id}/write", Access::Client),
    rule("POST", "/txns/{id}/delete", Access::Client),
    rule("POST", "/txns/{id}/commit", Access::Client),
    rule("POST", "/txns/{id}/abort", Access::Client),
    rule("POST", "/2pc", Access::Service),
    rule("GET", "/status", Access::ServiceOrOperator),
    rule("GET", "/healthz", Access::Open),
];

/// Who may call the coordinator's routes.
pub const COORDINATOR_ACCESS: &[Rule] = &[
    rule("POST", "/2pc", Access::Service),
    rule("GET", "/status", Access::ServiceOrOperator),
    rule("GET", "/healthz", Access::Open),
];

/// A key-value operation of a transaction (`kv_client::wire` has the body types).
fn txn_op(summary: &str, body: &str) -> api::Op {
    api::post(summary)
        .path_uuid()
        .body_schema(api::schema(json!({"type": "object", "description": body})))
        .answer_schema(200, "the result", api::object())
        .error(
            409,
            "conflict (wait-die, lock timeout: retry), or the transaction is not active",
        )
        .error(421, "wrong-shard: the key lives on another shard")
        .error(429, "too-many-transactions")
}

pub fn shard_routes(shard: Shard) -> Router {
    let guard = shard.inner.net.auth().guard(SHARD_ACCESS);
    let r = Api::new()
        .route(
            "/txns",
            api::post("Begin a transaction")
                .body_schema(api::schema(
                    json!({"type": "object", "description": "`{\"id\"?, \"priority\"?}`"}),
                ))
                .answer_schema(201, "`{\"id\", \"priority\"}`", api::object())
                .error(409, "the id is taken")
                .error(429, "too-many-transactions"),
            begin,
        )
        .route(
            "/txns/{id}/read",
            txn_op("Read a key", "`{\"key\", \"for_update\"?}`"),
            read,
        )
        .route(
            "/txns/{id}/write",
            txn_op("Write a key", "`{\"key\", \"value\"}`"),
            write,
        )
        .route(
            "/txns/{id}/delete",
            txn_op("Delete a key", "`{\"key\"}`"),
            delete,
        )
        .route(
            "/txns/{id}/commit",
            txn_op(
                "Commit (one shard: one phase; several: 2PC)",
                "`{\"participants\"}`",
            ),
            commit,
        )
        .route(
            "/txns/{id}/abort",
            api::post("Abort")
                .path_uuid()
                .answer_schema(200, "`{\"outcome\"}`", api::object()),
            abort,
        )
        .route("/2pc", twopc_op(), shard_2pc)
        .route("/status", status_op(), shard_status)
        .route("/healthz", health_op(), healthz)
        .with_state(shard);
    tandem_kit::http::finish(r, "kv shard", &guard)
}

pub fn coordinator_routes(c: Coordinator) -> Router {
    let guard = c.auth().guard(COORDINATOR_ACCESS);
    let r = Api::new()
        .route("/2pc", twopc_op(), coordinator_2pc)
        .route("/status", status_op(), coordinator_status)
        .route("/healthz", health_op(), healthz)
        .with_state(c);
    tandem_kit::http::finish(r, "kv coordinator", &guard)
}

fn twopc_op() -> api::Op {
    api::post("A 2PC message between the coordinator and the shards")
        .body_schema(api::schema(
            json!({"type": "object", "description": "an envelope (crate::net)"}),
        ))
        .answer_schema(200, "the reply", api::object())
}

fn status_op() -> api::Op {
    api::get("Counters and state of this process").answer_schema(200, "the status", api::object())
}

fn health_op() -> api::Op {
    api::get("Health").answer_schema(200, "`{\"ok\": true}`", api::object())
}

type S = axum::extract::State<Shard>;

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"ok": true}))
}

async fn begin(
    axum::extract::State(shard): S,
    Json(req): Json<BeginRequest>,
) -> Result<impl IntoResponse, Problem> {
    let (status, resp) = shard.begin(&req)?;
    Ok((status, Json(resp)))
}

async fn read(
    axum::extract::State(shard): S,
    Path(id): Path<Uuid>,
    Json(req): Json<ReadRequest>,
) -> Result<Json<ReadResponse>, Problem> {
    let value = shard.read(id, &req.key, req.for_update).await?;
    Ok(Json(ReadResponse {
        key: req.key,
        value,
    }))
}

async fn write(
    axum::extract::State(shard): S,
    Path(id): Path<Uuid>,
    Json(req): Json<WriteRequest>,
) -> Result<Json<serde_json::Value>, Problem> {
    shard.write(id, &req.key, Some(req.value)).await?;
    Ok(Json(serde_json::json!({"key": req.key, "written": true})))
}

async fn delete(
    axum::extract::State(shard): S,
    Path(id): Path<Uuid>,
    Json(req): Json<KeyRequest>,
) -> Result<Json<serde_json::Value>, Problem> {
    shard.write(id, &req.key, None).await?;
    Ok(Json(serde_json::json!({"key": req.key, "deleted": true})))
}

async fn commit(
    axum::extract::State(shard): S,
    Path(id): Path<Uuid>,
    Json(req): Json<CommitRequest>,
) -> Result<Json<CommitResponse>, Problem> {
    let outcome = shard.commit(id, &req.participants).await?;
    Ok(Json(CommitResponse { id, outcome }))
}

async fn abort(
    axum::extract::State(shard): S,
    Path(id): Path<Uuid>,
) -> Result<Json<CommitResponse>, Problem> {
    let outcome = shard.abort(id)?;
    Ok(Json(CommitResponse { id, outcome }))
}

async fn shard_2pc(
    axum::extract::State(shard): S,
    Json(env): Json<Envelope>,
) -> Result<StatusCode, Problem> {
    shard
        .on_envelope(env)
        .await
        .map_err(|e| Problem::invalid("", e))?;
    Ok(StatusCode::ACCEPTED)
}

async fn shard_status(axum::extract::State(shard): S) -> Json<serde_json::Value> {
    Json(shard.status())
}

async fn coordinator_2pc(
    axum::extract::State(c): axum::extract::State<Coordinator>,
    Json(env): Json<Envelope>,
) -> Result<StatusCode, Problem> {
    c.on_envelope(env)
        .await
        .map_err(|e| Problem::invalid("", e))?;
    Ok(StatusCode::ACCEPTED)
}

async fn coordinator_status(
    axum::extract::State(c): axum::extract::State<Coordinator>,
) -> Json<serde_json::Value> {
    Json(c.status())
}
