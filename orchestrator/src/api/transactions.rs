//! `POST /transactions`, `GET /transactions/{id}`, `GET /transactions`,
//! `GET /transactions/{id}/decision` (participants ask), `POST /transactions/{id}/resolve` (an
//! operator's heuristic decision): the 2PC coordinator ([`crate::commit`]).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use tandem_kit::faults::{FaultOp, Message, Sender};
use tandem_kit::http::{Json, Path, Query};
use tandem_kit::problem::Problem;
use tandem_protocols::Outcome;
use uuid::Uuid;

use super::Ctx;
use super::sagas::{WaitParams, run_request, wait_secs};
use crate::commit::coordinator::{Begin, Begun};
use crate::commit::resolve::{HEURISTIC_KIND, Heuristic, Resolution, Resolve};
use crate::commit::{TxnRow, TxnState, store};
use crate::driver::start::hash_json;

/// Take `protocol` out of the body (the rest is what `POST /sagas` takes).
#[allow(clippy::result_large_err)] // `Problem` is what every handler answers
fn take_protocol(body: &mut Value) -> Result<String, Problem> {
    match body.as_object_mut().and_then(|m| m.remove("protocol")) {
        Some(Value::String(p)) => Ok(p),
        Some(_) => Err(Problem::invalid(
            "/protocol",
            "must be a string such as \"2pc\"",
        )),
        None => Err(Problem::invalid(
            "/protocol",
            "missing required field `protocol`",
        )),
    }
}

pub(super) async fn create(
    State(c): State<Ctx>,
    Query(p): Query<WaitParams>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, Problem> {
    // On SQLite: 501 before anything else (nothing is stored).
    c.commit()?;
    let hash = hash_json(&body);
    let mut body = body;
    let protocol = take_protocol(&mut body)?;
    let (wait, run) = run_request(p, &headers, hash, body)?;
    let begun = c
        .commit()?
        .begin(Begin { protocol, run })
        .await?
        .map_err(|e| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "prepared-transactions-disabled",
                "A participant cannot prepare transactions",
            )
            .detail(e.detail)
            .with("service", e.service)
            .with("setting", "max_prepared_transactions")
        })?;
    match begun {
        Begun::New { row, finished } => {
            let id = row.id;
            let view = match finished {
                Some(finished) => settled(&c, id, wait, Some(finished)).await?,
                None => view(&c, id).await?,
            };
            Ok(super::located(
                StatusCode::CREATED,
                format!("/transactions/{id}"),
                view,
            ))
        }
        Begun::Existing(id) => Ok(super::located(
            StatusCode::OK,
            format!("/transactions/{id}"),
            view(&c, id).await?,
        )),
        Begun::KeyReused(id) => Err(super::key_reused("began transaction", "transaction_id", id)),
        Begun::BusinessKeyTaken { id, kind } => Err(super::business_key_taken(kind, id)),
    }
}

/// The JSON view of a transaction: state, decision, each participant's vote, state and
/// lock-hold time, the message log.
async fn view(c: &Ctx, id: Uuid) -> Result<Value, Problem> {
    let row = store::get(c.commit()?.pool(), id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no transaction {id}")))?;
    let messages = store::messages(c.commit()?.pool(), id).await?;
    Ok(view_of(&row, &messages))
}

fn view_of(row: &TxnRow, messages: &[(i64, store::Message)]) -> Value {
    let now = chrono::Utc::now();
    let participants: Vec<Value> = row
        .participants
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let held = p
                .prepared_at
                .map(|from| (p.finished_at.unwrap_or(now) - from).num_milliseconds());
            let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
            v["index"] = json!(i);
            v["lock_hold_ms"] = json!(held);
            v["holding_locks"] = json!(p.prepared_at.is_some() && p.finished_at.is_none());
            v
        })
        .collect();
    // An operator's heuristic decision is in the log, but it is not a protocol message.
    let heuristic = messages
        .iter()
        .find(|(_, m)| m.kind == HEURISTIC_KIND)
        .map(|(_, m)| json!({"at": m.at, "detail": m.detail}));
    let protocol_messages = messages
        .iter()
        .filter(|(_, m)| m.kind != HEURISTIC_KIND)
        .count();
    let messages: Vec<Value> = messages
        .iter()
        .map(|(seq, m)| json!({"seq": seq, "at": m.at, "peer": m.peer, "dir": m.dir, "kind": m.kind, "detail": m.detail}))
        .collect();
    json!({
        "id": row.id, "protocol": row.protocol, "definition": row.run.definition,
        "version": row.run.version, "business_key": row.run.business_key, "input": row.run.input,
        "state": row.state, "decision": row.decision, "decided_at": row.decided_at,
        "participants": participants, "heuristic": heuristic,
        "lease": row.lease.view(),
        "created_at": row.created_at, "updated_at": row.updated_at,
        // A request and its response are two messages; the coordinator forces its Begin (the
        // row) and, to commit, the Commit record.
        "counts": {
            "messages": protocol_messages,
            "coordinator_forced_writes": 1 + usize::from(row.decision.as_deref() == Some("commit")),
        },
        "messages": messages,
    })
}

pub(super) async fn get_one(
    State(c): State<Ctx>,
    Path(id): Path<Uuid>,
    Query(p): Query<WaitParams>,
) -> Result<Json<Value>, Problem> {
    let wait = wait_secs(p.wait)?;
    Ok(Json(settled(&c, id, wait, None).await?))
}

/// The view once the transaction is committed or aborted, or as it is after `wait` seconds.
/// Woken when it settles here (`finished`, taken before it could settle, else one taken now),
/// and looks again every 250 ms (another instance may run it).
async fn settled(
    c: &Ctx,
    id: Uuid,
    wait: f64,
    finished: Option<tokio::sync::oneshot::Receiver<()>>,
) -> Result<Value, Problem> {
    let co = c.commit()?;
    let finished = finished.unwrap_or_else(|| co.watch(id));
    let r = super::until_settled(wait, finished, false, || async move {
        let row = store::get(c.commit()?.pool(), id)
            .await?
            .ok_or_else(|| Problem::not_found(format!("no transaction {id}")))?;
        Ok(((), row.state.is_settled()))
    })
    .await;
    co.unwatch(id);
    r?;
    view(c, id).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// (inline: the document has no component of this name)
    #[param(inline)]
    state: Option<TxnState>,
    /// A protocol's name (`2pc`, `3pc`, `3pc-quorum`, `paxos-commit`, …).
    #[param(pattern = "^[a-z0-9-]{1,32}$")]
    protocol: Option<String>,
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
}

/// `?protocol=`: a protocol's name (`2pc`, `paxos-commit`, …): 1–32 lowercase letters, digits
/// and dashes. A name no transaction uses lists nothing.
#[allow(clippy::result_large_err)] // `Problem` is what every handler answers
fn protocol_filter(p: Option<&str>) -> Result<Option<&str>, Problem> {
    match p {
        Some(p)
            if p.is_empty()
                || p.len() > 32
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            Err(Problem::invalid(
                "/query/protocol",
                "a protocol name such as \"2pc\" or \"paxos-commit\" (1-32 of a-z, 0-9, -)",
            ))
        }
        p => Ok(p),
    }
}

pub(super) async fn list(
    State(c): State<Ctx>,
    Query(p): Query<ListParams>,
) -> Result<Json<Value>, Problem> {
    let limit = super::list_limit(p.limit)?;
    let protocol = protocol_filter(p.protocol.as_deref())?;
    let rows = store::list(
        c.commit()?.pool(),
        p.state,
        protocol,
        super::read_ahead(limit, p.cursor),
    )
    .await?;
    Ok(Json(super::page(
        &rows,
        limit,
        |r| r.id,
        |r| {
            // How long its oldest prepared participant has held its locks (an operator's
            // first look at a coordinator that does not come back).
            let since = r
                .participants
                .iter()
                .filter(|p| p.finished_at.is_none())
                .filter_map(|p| p.prepared_at)
                .min();
            json!({
                "id": r.id, "protocol": r.protocol, "definition": r.run.definition, "state": r.state,
                "decision": r.decision, "business_key": r.run.business_key, "created_at": r.created_at,
                "decided_at": r.decided_at, "participants": r.participants.len(),
                "holding_locks_since": since,
                "holding_locks_ms": since.map(|t| (chrono::Utc::now() - t).num_milliseconds()),
            })
        },
    )))
}

/// `GET /transactions/{id}/decision`, under this node's faults (op `query`, scoped by the
/// transaction, and the sender: an in-doubt participant).
pub(super) async fn decision(State(c): State<Ctx>, Path(id): Path<Uuid>, from: Sender) -> Response {
    let m = Message::txn(FaultOp::Query, id, &from);
    c.faults.apply(m, decide(&c, id)).await
}

/// The decision: 200 `{"decision": "commit"|"abort"}`, or 503 with `Retry-After` while this
/// instance is still collecting votes.
async fn decide(c: &Ctx, id: Uuid) -> Result<Json<Value>, Problem> {
    match c.commit()?.decision(id).await? {
        Some(o) => Ok(Json(json!({
            "transaction_id": id,
            "decision": if o == Outcome::Commit { "commit" } else { "abort" },
        }))),
        None => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "undecided",
            "Not decided yet",
        )
        .detail(format!(
            "transaction {id} is still collecting votes; ask again"
        ))
        .retry_after(1)),
    }
}

/// `POST /transactions/{id}/resolve` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ResolveBody {
    decision: Heuristic,
    #[serde(default)]
    #[schema(max_length = 1000)]
    reason: String,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    operator: Option<String>,
}

/// `POST /transactions/{id}/resolve` `{"decision": "commit"|"abort", "reason", "operator"}`: an
/// operator's heuristic decision (see [`crate::commit::resolve`]). 200 the transaction with
/// `"recorded": true`, or `false` when the same decision was already logged; 409 when another
/// decision is logged, or a commit lacks a logged YES vote; 404 unknown.
pub(super) async fn resolve(
    State(c): State<Ctx>,
    Path(id): Path<Uuid>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, Problem> {
    // serde would read a struct from an array too (`["commit"]`): only an object is a body.
    if !body.is_object() {
        return Err(Problem::invalid("", "must be a JSON object"));
    }
    let body: ResolveBody = tandem_kit::http::from_value(body)?;
    let operator = body.operator.unwrap_or_else(|| "unknown".into());
    let mut issues = Vec::new();
    if body.reason.chars().count() > 1000 {
        issues.push(("/reason", "at most 1000 characters"));
    }
    if operator.is_empty() || operator.chars().count() > 200 {
        issues.push(("/operator", "between 1 and 200 characters"));
    }
    if let Some((pointer, message)) = issues.first() {
        return Err(Problem::invalid(*pointer, *message));
    }
    let r = Resolve {
        decision: body.decision,
        reason: body.reason,
        operator,
    };
    let recorded =
        match c.commit()?.resolve(id, &r).await? {
            Resolution::Recorded => true,
            Resolution::AlreadyLogged => false,
            Resolution::Conflict { logged } => {
                return Err(Problem::conflict("decision-conflict", "Another decision is logged")
                .detail(format!(
                    "transaction {id} is already decided: {logged}; a logged decision is final"
                ))
                .with("decision", logged));
            }
            Resolution::NotAllYes { step, vote } => {
                return Err(Problem::conflict("not-all-yes", "Cannot commit")
                    .detail(format!(
                        "participant {step:?} has no YES vote in the log (vote: {}); only abort is \
                     safe",
                        vote.as_deref().unwrap_or("none")
                    ))
                    .with("step", step));
            }
        };
    let mut v = view(&c, id).await?;
    v["recorded"] = json!(recorded);
    Ok(Json(v))
}
