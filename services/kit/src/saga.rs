//! The saga endpoints of a service, served from its declarations ([`crate::effect`]): one
//! handler skeleton for every action and every compensation — body parse and validation,
//! `Idempotency-Key`, fault interception, the barrier, stats and the reply — plus the shared
//! read endpoints (`GET /healthz`, an audit list by `order_id`).

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgConnection;
use sqlx::postgres::PgRow;

use crate::barrier::{self, Barrier, IdempotencyKey, Op, Prior};
use crate::effect::{ActionEndpoint, Compensation, CompensationRequest, EffectFuture, Origin};
use crate::faults::{Message, Sender};
use crate::http::{Json, Query};
use crate::problem::{Issues, Problem};
use crate::service::App;

/// The routes of every action and compensation in `app`'s spec, and `GET /healthz`.
pub fn routes(app: &App) -> Router<App> {
    let spec = app.spec;
    let mut router = Router::new().route("/healthz", get(healthz));
    for &endpoint in spec.actions {
        router = router.route(
            endpoint.path(),
            post(move |State(app): State<App>, from, key, Json(body)| {
                action(app, (from, key), body, endpoint)
            }),
        );
    }
    for &compensation in spec.compensations {
        router = router.route(
            compensation.path,
            post(move |State(app): State<App>, from, key, Json(body)| {
                compensate(app, (from, key), body, compensation)
            }),
        );
    }
    router
}

async fn action(
    app: App,
    (from, key): (Sender, IdempotencyKey),
    body: Value,
    endpoint: &'static dyn ActionEndpoint,
) -> Result<Response, Response> {
    let accepted = key
        .expect(Op::Action)
        .and_then(|_| endpoint.accept(body))
        .map_err(IntoResponse::into_response)?;
    let injection = app
        .faults
        .intercept(Message::saga(&key, accepted.order_id.as_deref(), &from))
        .await?;
    let barrier = app.barrier();
    let outcome = barrier.action(&key, move |conn, origin| accepted.run(conn, origin));
    Ok(injection.finish(outcome.await.into_response()))
}

async fn compensate(
    app: App,
    (from, key): (Sender, IdempotencyKey),
    body: Value,
    compensation: &'static Compensation,
) -> Result<Response, Response> {
    let req = parse_compensation(&key, body).map_err(IntoResponse::into_response)?;
    let injection = app
        .faults
        .intercept(Message::saga(&key, Some(&req.order_id), &from))
        .await?;
    let barrier = app.barrier();
    let outcome = barrier.compensation(&key, move |conn, origin, prior| {
        undo(conn, origin, prior, compensation)
    });
    Ok(injection.finish(outcome.await.into_response()))
}

#[allow(clippy::result_large_err)] // a cold path; `Problem` is what every handler answers
fn parse_compensation(key: &IdempotencyKey, body: Value) -> Result<CompensationRequest, Problem> {
    key.expect(Op::Compensation)?;
    let req: CompensationRequest = crate::http::from_value(body)?;
    let mut issues = Issues::default();
    req.validate(&mut issues);
    issues.finish()?;
    Ok(req)
}

/// Run the compensation's effect when its action was applied; either way answer with its
/// `undone` member saying whether something was undone.
fn undo<'c>(
    conn: &'c mut PgConnection,
    origin: &'c Origin,
    prior: Prior,
    compensation: &'static Compensation,
) -> EffectFuture<'c> {
    Box::pin(async move {
        let undone = match prior {
            Prior::Applied(_) => (compensation.effect)(conn, origin).await?,
            _ => None,
        };
        let (mut body, flag) = match undone {
            Some(body) => (body, true),
            None => (barrier::nothing_to_undo(&prior), false),
        };
        body[compensation.undone] = Value::Bool(flag);
        Ok(body)
    })
}

impl App {
    /// The barrier on this service's pool.
    pub fn barrier(&self) -> Barrier<'_> {
        Barrier {
            pool: &self.pool,
            hooks: &self.hooks,
        }
    }
}

/// `GET /healthz`: 200 when the database answers.
async fn healthz(State(app): State<App>) -> Result<Json<Value>, Problem> {
    sqlx::query("SELECT 1").execute(&app.pool).await?;
    Ok(Json(json!({ "status": "ok", "service": app.spec.name })))
}

/// `?order_id=` (required) of the audit lists.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ByOrder {
    order_id: Option<String>,
}

/// `GET` an audit list: the rows `sql` selects for `$1` = the required `?order_id=`.
pub fn by_order<Row>(sql: &'static str) -> MethodRouter<App>
where
    Row: for<'r> sqlx::FromRow<'r, PgRow> + Serialize + Send + Unpin + 'static,
{
    get(
        move |State(app): State<App>, Query(q): Query<ByOrder>| async move {
            let Some(order_id) = q.order_id else {
                return Err(Problem::invalid("/query/order_id", "is required"));
            };
            let rows: Vec<Row> = sqlx::query_as(sql)
                .bind(&order_id)
                .fetch_all(&app.pool)
                .await?;
            Ok::<_, Problem>(Json(rows))
        },
    )
}
