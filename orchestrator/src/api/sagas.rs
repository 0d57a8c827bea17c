//! `POST /sagas`, `GET /sagas/{id}`, `GET /sagas` (actions on a saga: [`super::actions`]).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use tandem_kit::http::{Json, Path, Query, from_value};
use tandem_kit::problem::Problem;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::Ctx;
use crate::driver::start::{StartSaga, Started, hash_json};
use crate::saga::SagaStatus;
use crate::store::{self, EventRow, SagaRow};
use crate::text::check_str;

pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
pub const MAX_WAIT_SECS: f64 = 60.0;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateSaga {
    definition: String,
    /// Pin a definition version (default: the current one).
    #[serde(default)]
    version: Option<String>,
    /// Checked against the definition's input JSON Schema.
    input: Value,
}

/// The client's `Idempotency-Key`, if any: 1 to 255 visible ASCII characters.
#[allow(clippy::result_large_err)] // `Problem` is what every handler answers
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let k = v
        .to_str()
        .map_err(|_| Problem::bad_request("the Idempotency-Key header must be visible ASCII"))?;
    if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(Problem::bad_request(format!(
            "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
        ))
        .field("/header/Idempotency-Key", "length out of range"));
    }
    Ok(Some(k.to_string()))
}

/// What `POST /sagas` and `POST /transactions` share: `?wait`, the client's Idempotency-Key,
/// the hash of the whole body (`request_hash`), and `{"definition", "version"?, "input"}`.
#[allow(clippy::result_large_err)] // `Problem` is what every handler answers
pub(super) fn run_request(
    p: WaitParams,
    headers: &HeaderMap,
    request_hash: String,
    body: Value,
) -> Result<(f64, StartSaga), Problem> {
    let wait = wait_secs(p.wait)?;
    let idempotency_key = idempotency_key(headers)?;
    let req: CreateSaga = from_value(body)?;
    Ok((
        wait,
        StartSaga {
            definition: req.definition,
            version: req.version,
            input: req.input,
            idempotency_key,
            request_hash,
            watch: wait > 0.0,
        },
    ))
}

pub(super) async fn create(
    State(c): State<Ctx>,
    Query(p): Query<WaitParams>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, Problem> {
    let hash = hash_json(&body);
    let (wait, start) = run_request(p, &headers, hash, body)?;
    let started = c.driver.start(start).await?;
    match started {
        Started::New {
            row,
            events,
            finished,
        } => {
            let id = row.id;
            let view = match finished {
                // POST-and-wait: the waiter was registered before the saga could finish.
                Some(finished) => {
                    let (row, events) = wait_settled(&c, id, wait, finished, true).await?;
                    view_of(&row, &events)
                }
                None => view_of(&row, &events),
            };
            Ok(super::located(StatusCode::CREATED, format!("/sagas/{id}"), view))
        }
        Started::Existing(existing) => {
            let (row, events) = c.store.saga_with_events(existing)
                .await?
                .ok_or_else(|| Problem::internal("saga vanished"))?;
            Ok(super::located(StatusCode::OK, format!("/sagas/{existing}"), view_of(&row, &events)))
        }
        Started::KeyReused { saga_id } => Err(super::key_reused("started saga", "saga_id", saga_id)),
        Started::TakenByTransaction(id) => Err(super::business_key_taken("transaction", id)),
        Started::BusinessKeyConflict { saga_id, definition, business_key } => Err(Problem::conflict("business-key-conflict", "Business key already used")
            .detail(format!(
                "saga {saga_id} already runs definition {definition:?} for business key {business_key:?} with a different input",
            ))
            .with("saga_id", saga_id.to_string())),
    }
}

/// The JSON view of a saga: state, steps, lease and the event log.
pub async fn saga_view(store: &store::Store, row: &SagaRow) -> Result<Value, Problem> {
    let (_, events) = store
        .saga_with_events(row.id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no saga {}", row.id)))?;
    Ok(view_of(row, &events))
}

/// [`saga_view`] from a row and its events already at hand.
pub fn view_of(row: &SagaRow, events: &[EventRow]) -> Value {
    let mut outputs = serde_json::Map::new();
    for s in &row.state.steps {
        if let Some(o) = &s.output {
            outputs.insert(s.name.clone(), o.clone());
        }
    }
    let last_error = row
        .state
        .steps
        .iter()
        .rev()
        .find_map(|s| s.last_error.clone());
    json!({
        "id": row.id,
        "definition": row.run.definition,
        "version": row.run.version,
        "status": row.status,
        "business_key": row.run.business_key,
        "input": row.run.input,
        "outputs": outputs,
        "steps": row.state.steps,
        "reason": row.state.reason,
        "last_error": last_error,
        "next_attempt_at": row.state.next_attempt_at,
        "lease": row.lease.view(),
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "events": events,
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct WaitParams {
    /// Long poll: wait up to this many seconds for a terminal (or parked) state.
    #[param(minimum = 0, maximum = 60)]
    pub(super) wait: Option<f64>,
}

pub(super) async fn get_one(
    State(c): State<Ctx>,
    Path(id): Path<Uuid>,
    Query(p): Query<WaitParams>,
) -> Result<Json<Value>, Problem> {
    let wait = wait_secs(p.wait)?;
    let finished = c.driver.watch(id);
    let (row, events) = wait_settled(&c, id, wait, finished, false).await?;
    Ok(Json(view_of(&row, &events)))
}

/// `?wait=SECONDS`: 0 to [`MAX_WAIT_SECS`].
#[allow(clippy::result_large_err)] // `Problem` is what every handler answers
pub fn wait_secs(wait: Option<f64>) -> Result<f64, Problem> {
    match wait {
        None => Ok(0.0),
        Some(w) if (0.0..=MAX_WAIT_SECS).contains(&w) => Ok(w),
        Some(_) => Err(Problem::invalid(
            "/query/wait",
            format!("must be between 0 and {MAX_WAIT_SECS} seconds"),
        )),
    }
}

/// The saga (and its events) once it is completed, compensated or failed, or as it is when
/// `wait` runs out. `finished` ([`crate::driver::Driver::watch`]) must have been taken before
/// the saga could settle. `just_started`: the saga was created by this request and is being
/// driven here, so it cannot have settled yet — skip the first read.
async fn wait_settled(
    c: &Ctx,
    id: Uuid,
    wait: f64,
    finished: oneshot::Receiver<()>,
    just_started: bool,
) -> Result<(SagaRow, Vec<EventRow>), Problem> {
    let r = super::until_settled(wait, finished, just_started, || async move {
        let (row, events) = c
            .store
            .saga_with_events(id)
            .await?
            .ok_or_else(|| Problem::not_found(format!("no saga {id}")))?;
        let settled = row.status.is_settled();
        Ok(((row, events), settled))
    })
    .await;
    c.driver.unwatch(id);
    r
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// (inline: the document has no component of this name)
    #[param(inline)]
    status: Option<SagaStatus>,
    definition: Option<String>,
    /// A saga id or a business key.
    q: Option<String>,
    /// Created at or after (RFC 3339).
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// Created before (RFC 3339).
    to: Option<chrono::DateTime<chrono::Utc>>,
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
}

/// The smallest (`fill` 0x00) or largest (0xff) UUIDv7 of the millisecond `t`: saga ids are
/// UUIDv7, so a creation-time range is an id range (the primary key answers it).
pub(super) fn v7_bound(t: chrono::DateTime<chrono::Utc>, fill: u8) -> Uuid {
    let ms = u64::try_from(t.timestamp_millis()).unwrap_or(0);
    let mut b = [fill; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(b)
}

pub(super) async fn list(
    State(c): State<Ctx>,
    Query(p): Query<ListParams>,
) -> Result<Json<Value>, Problem> {
    let limit = super::list_limit(p.limit)?;
    for (v, at) in [(&p.definition, "/query/definition"), (&p.q, "/query/q")] {
        if let Some(v) = v {
            check_str(v, at).map_err(|i| Problem::invalid_fields(vec![i]))?;
        }
    }
    let q = p.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let id = q.and_then(|q| Uuid::parse_str(q).ok());
    let filter = store::SagaFilter {
        status: p.status,
        definition: p.definition.as_deref(),
        business_key: q.filter(|_| id.is_none()),
        id,
        from: p.from.map(|t| v7_bound(t, 0)),
        before: [p.cursor, p.to.map(|t| v7_bound(t, 0))]
            .into_iter()
            .flatten()
            .min(),
    };
    let rows = c.store.list(&filter, limit + 1).await?;
    Ok(Json(super::page(
        &rows,
        limit,
        |r| r.id,
        |r| {
            json!({
                "id": r.id, "definition": r.run.definition, "version": r.run.version, "status": r.status,
                "business_key": r.run.business_key, "created_at": r.created_at, "updated_at": r.updated_at,
            })
        },
    )))
}
