//! The REST API. Every rejection is problem+json (see `tandem_kit::problem`); nothing is stored
//! for a rejected request.
//!
//! - `POST /sagas` — start a saga (optional `Idempotency-Key`); `?wait=SECONDS` answers once the
//!   new saga is completed, compensated or failed (at most 60 s; then as it is), so a client
//!   needs one request per saga.
//! - `GET /sagas/{id}` — the saga with its steps and event log; `?wait=SECONDS` long-polls until
//!   it is completed, compensated or failed (at most 60 s).
//! - `GET /sagas?status=&definition=&limit=&cursor=` — newest first, cursor pagination.
//! - `POST /sagas/{id}/retry` — resume a `failed` saga's compensation.
//! - `POST /definitions`, `GET /definitions`, `GET /definitions/{name}` — definitions as data.
//! - `GET /healthz`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tandem_kit::http::{Json, Path, Query, from_value};
use tandem_kit::problem::{FieldIssue, Problem};
use uuid::Uuid;

use crate::driver::Driver;
use crate::saga::definition::canonical_json;
use crate::saga::{Definition, Input, SagaStatus, engine};
use crate::store::{self, Created, SagaRow};

pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
pub const MAX_WAIT_SECS: f64 = 60.0;

pub fn router(driver: Arc<Driver>) -> Router {
    let r = Router::new()
        .route("/sagas", post(create_saga).get(list_sagas))
        .route("/sagas/{id}", get(get_saga))
        .route("/sagas/{id}/retry", post(retry_saga))
        .route(
            "/definitions",
            post(create_definition).get(list_definitions),
        )
        .route("/definitions/{name}", get(get_definition))
        .route("/healthz", get(healthz))
        .with_state(driver);
    tandem_kit::http::finish(r)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSaga {
    definition: String,
    /// Pin a definition version (default: the current one).
    #[serde(default)]
    version: Option<String>,
    input: Value,
}

async fn create_saga(
    State(d): State<Arc<Driver>>,
    Query(p): Query<WaitParams>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, Problem> {
    let wait = wait_secs(p.wait)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v.to_str().map_err(|_| {
                Problem::bad_request("the Idempotency-Key header must be visible ASCII")
            })?;
            if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN {
                return Err(Problem::bad_request(format!(
                    "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
                ))
                .field("/header/Idempotency-Key", "length out of range"));
            }
            Some(k.to_string())
        }
    };
    let request_hash = sha256_hex(&canonical_json(&body));
    let req: CreateSaga = from_value(body)?;
    let found = {
        let defs = d.definitions.read().expect("definitions lock");
        match &req.version {
            None => defs.current(&req.definition),
            Some(v) => defs.get(&req.definition, v).map(|def| (v.clone(), def)),
        }
    };
    let (version, def) = match (found, &req.version) {
        (Some(f), _) => f,
        (None, Some(v)) => match d.definition(&req.definition, v).await {
            Ok(def) => (v.clone(), def),
            Err(_) => {
                return Err(Problem::invalid(
                    "/version",
                    format!("definition {:?} has no version {v:?}", req.definition),
                ));
            }
        },
        (None, None) => {
            return Err(Problem::invalid(
                "/definition",
                format!("unknown definition {:?}", req.definition),
            ));
        }
    };
    if let Err(errors) = def.validate_input(&req.input) {
        return Err(Problem::invalid_fields(
            errors
                .into_iter()
                .map(|e| FieldIssue {
                    pointer: format!("/input{}", e.pointer),
                    message: e.message,
                })
                .collect(),
        ));
    }
    let business_key = def.business_key(&req.input);
    let input_hash = sha256_hex(&canonical_json(&req.input));
    let id = Uuid::now_v7();
    let id_str = id.to_string();
    let initial = engine::initial_state(&def);
    let t = engine::transition(
        &def,
        &id_str,
        &req.input,
        &initial,
        Input::Start,
        chrono::Utc::now(),
        rand::random(),
    );
    let new = store::NewSaga {
        id,
        definition: &def.name,
        version: &version,
        business_key: business_key.as_deref(),
        input: &req.input,
        input_hash: &input_hash,
        request_hash: &request_hash,
        idempotency_key: key.as_deref(),
        state: &t.state,
        events: &t.events,
        owner: &d.instance_id,
        lease_ttl: d.lease_ttl,
    };
    // Without a client key, one statement creates the saga and answers what the view needs.
    let fast = match key {
        None => store::create_saga_fast(&d.pool, &new).await?,
        Some(_) => None,
    };
    let created = match fast {
        Some((row, events)) => (Created::New(Box::new(row)), Some(events)),
        None => (store::create_saga(&d.pool, new).await?, None),
    };
    match created {
        (Created::New(row), events) => {
            let row = *row;
            let view = if wait > 0.0 {
                // POST-and-wait: subscribe before the saga can finish, then answer its final view.
                let finished = d.watch(id);
                d.spawn_created(row, def, t.command);
                let (row, events) = wait_settled(&d, id, wait, finished, true).await?;
                view_of(&row, &events)
            } else {
                let view = match events {
                    Some(events) => view_of(&row, &events),
                    None => saga_view(&d, &row).await?,
                };
                d.spawn_created(row, def, t.command);
                view
            };
            Ok((StatusCode::CREATED, [(header::LOCATION, format!("/sagas/{id}"))], Json(view)).into_response())
        }
        (Created::Replay(existing) | Created::SameBusinessKey(existing), _) => {
            let row = store::saga(&d.pool, existing).await?.ok_or_else(|| Problem::internal("saga vanished"))?;
            Ok((StatusCode::OK, [(header::LOCATION, format!("/sagas/{existing}"))], Json(saga_view(&d, &row).await?))
                .into_response())
        }
        (Created::KeyReused { saga_id }, _) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused with a different request",
        )
        .detail(format!("this Idempotency-Key already started saga {saga_id} with a different body"))
        .with("saga_id", saga_id.to_string())),
        (Created::BusinessKeyConflict { saga_id }, _) => Err(Problem::conflict("business-key-conflict", "Business key already used")
            .detail(format!(
                "saga {saga_id} already runs definition {:?} for business key {:?} with a different input",
                def.name,
                business_key.unwrap_or_default()
            ))
            .with("saga_id", saga_id.to_string())),
    }
}

/// The JSON view of a saga: state, steps, lease and the event log.
pub async fn saga_view(d: &Driver, row: &SagaRow) -> Result<Value, Problem> {
    let events = store::events(&d.pool, row.id).await?;
    Ok(view_of(row, &events))
}

/// [`saga_view`] from a row and its events already at hand.
pub fn view_of(row: &SagaRow, events: &[store::EventRow]) -> Value {
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
        "definition": row.definition,
        "version": row.version,
        "status": row.status,
        "business_key": row.business_key,
        "input": row.input,
        "outputs": outputs,
        "steps": row.state.steps,
        "reason": row.state.reason,
        "last_error": last_error,
        "next_attempt_at": row.state.next_attempt_at,
        "lease": {"owner": row.lease_owner, "until": row.lease_until, "epoch": row.lease_epoch},
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "events": events,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitParams {
    /// Long poll: wait up to this many seconds for a terminal (or parked) state.
    wait: Option<f64>,
}

fn settled(status: &str) -> bool {
    matches!(status, "completed" | "compensated" | "failed")
}

async fn get_saga(
    State(d): State<Arc<Driver>>,
    Path(id): Path<Uuid>,
    Query(p): Query<WaitParams>,
) -> Result<Json<Value>, Problem> {
    let wait = wait_secs(p.wait)?;
    let finished = d.watch(id);
    let (row, events) = wait_settled(&d, id, wait, finished, false).await?;
    Ok(Json(view_of(&row, &events)))
}

/// `?wait=SECONDS`: 0 to [`MAX_WAIT_SECS`].
#[allow(clippy::result_large_err)] // `Problem` is what every handler answers
fn wait_secs(wait: Option<f64>) -> Result<f64, Problem> {
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
/// `wait` runs out. `finished` ([`Driver::watch`]) must have been taken before the saga could
/// settle.
/// `just_started`: the saga was created by this request and is being driven here, so it cannot
/// have settled yet — skip the first read.
async fn wait_settled(
    d: &Driver,
    id: Uuid,
    wait: f64,
    finished: tokio::sync::oneshot::Receiver<()>,
    just_started: bool,
) -> Result<(SagaRow, Vec<store::EventRow>), Problem> {
    let r = wait_settled_inner(d, id, wait, finished, just_started).await;
    d.unwatch(id);
    r
}

async fn wait_settled_inner(
    d: &Driver,
    id: Uuid,
    wait: f64,
    mut finished: tokio::sync::oneshot::Receiver<()>,
    just_started: bool,
) -> Result<(SagaRow, Vec<store::EventRow>), Problem> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(wait);
    let mut read = !just_started;
    let mut woken = false;
    loop {
        if read {
            let (row, events) = store::saga_with_events(&d.pool, id)
                .await?
                .ok_or_else(|| Problem::not_found(format!("no saga {id}")))?;
            if settled(&row.status) || tokio::time::Instant::now() >= deadline {
                return Ok((row, events));
            }
        }
        read = true;
        // Woken by this instance finishing the saga, or re-check the database periodically
        // (another instance may be driving it).
        let tick = tokio::time::sleep_until(
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(250)),
        );
        tokio::select! {
            _ = tick => {}
            _ = &mut finished, if !woken => woken = true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<SagaStatus>,
    definition: Option<String>,
    limit: Option<i64>,
    cursor: Option<Uuid>,
}

async fn list_sagas(
    State(d): State<Arc<Driver>>,
    Query(p): Query<ListParams>,
) -> Result<Json<Value>, Problem> {
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Problem::invalid(
            "/query/limit",
            "must be between 1 and 500",
        ));
    }
    let rows = store::list(
        &d.pool,
        p.status,
        p.definition.as_deref(),
        p.cursor,
        limit + 1,
    )
    .await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<Value> = rows
        .iter()
        .take(limit as usize)
        .map(|r| {
            json!({
                "id": r.id, "definition": r.definition, "version": r.version, "status": r.status,
                "business_key": r.business_key, "created_at": r.created_at, "updated_at": r.updated_at,
            })
        })
        .collect();
    let next_cursor = if more {
        rows.get(limit as usize - 1).map(|r| r.id.to_string())
    } else {
        None
    };
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

async fn retry_saga(
    State(d): State<Arc<Driver>>,
    Path(id): Path<Uuid>,
) -> Result<Response, Problem> {
    let row = store::saga(&d.pool, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no saga {id}")))?;
    if row.status != SagaStatus::Failed.as_str() {
        return Err(Problem::conflict("not-failed", "Saga is not failed")
            .detail(format!(
                "saga {id} is {}; only a failed saga can be retried",
                row.status
            ))
            .with("status", row.status.clone()));
    }
    let Some(leased) = store::lease_for_retry(&d.pool, id, &d.instance_id, d.lease_ttl).await?
    else {
        return Err(
            Problem::conflict("retry-in-progress", "Saga is being retried")
                .detail(format!("saga {id} is already being retried")),
        );
    };
    d.retry_now(leased).await.map_err(Problem::internal)?;
    let row = store::saga(&d.pool, id)
        .await?
        .ok_or_else(|| Problem::internal("saga vanished"))?;
    Ok((StatusCode::ACCEPTED, Json(saga_view(&d, &row).await?)).into_response())
}

async fn create_definition(
    State(d): State<Arc<Driver>>,
    Json(doc): Json<Value>,
) -> Result<Response, Problem> {
    let def =
        Definition::parse(&doc).map_err(|crate::saga::DefinitionError::Invalid(errors)| {
            Problem::invalid_fields(
                errors
                    .into_iter()
                    .map(|e| FieldIssue {
                        pointer: e.pointer,
                        message: e.message,
                    })
                    .collect(),
            )
        })?;
    let mut unknown = Vec::new();
    for (i, s) in def.steps.iter().enumerate() {
        if !d.services.contains_key(&s.action.service) {
            unknown.push(FieldIssue {
                pointer: format!("/steps/{i}/action/service"),
                message: format!(
                    "service {:?} is not configured on this orchestrator",
                    s.action.service
                ),
            });
        }
        if let Some(c) = &s.compensation
            && !d.services.contains_key(&c.service)
        {
            unknown.push(FieldIssue {
                pointer: format!("/steps/{i}/compensation/service"),
                message: format!(
                    "service {:?} is not configured on this orchestrator",
                    c.service
                ),
            });
        }
    }
    if !unknown.is_empty() {
        return Err(Problem::invalid_fields(unknown));
    }
    let version = Definition::version_of(&doc);
    let created = store::insert_definition(&d.pool, &def.name, &version, &doc).await?;
    let name = def.name.clone();
    d.definitions
        .write()
        .expect("definitions lock")
        .insert(version.clone(), def);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "name": name, "version": version }))).into_response())
}

async fn list_definitions(State(d): State<Arc<Driver>>) -> Json<Value> {
    let defs = d.definitions.read().expect("definitions lock");
    let items: Vec<Value> = defs
        .names()
        .into_iter()
        .filter_map(|(name, version)| {
            let def = defs.get(&name, &version)?;
            Some(json!({
                "name": name, "version": version, "description": def.description,
                "steps": def.steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            }))
        })
        .collect();
    Json(json!({ "items": items }))
}

async fn get_definition(
    State(d): State<Arc<Driver>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    let version = d
        .definitions
        .read()
        .expect("definitions lock")
        .current(&name)
        .map(|(v, _)| v)
        .ok_or_else(|| Problem::not_found(format!("no definition {name:?}")))?;
    let body = store::definition(&d.pool, &name, &version)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no definition {name:?}")))?;
    Ok(Json(
        json!({ "name": name, "version": version, "definition": body }),
    ))
}

async fn healthz(State(d): State<Arc<Driver>>) -> Result<Json<Value>, Problem> {
    sqlx::query("SELECT 1")
        .execute(&d.pool)
        .await
        .map_err(Problem::unavailable)?;
    Ok(Json(json!({ "status": "ok", "instance": d.instance_id })))
}
