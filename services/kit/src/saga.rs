//! The saga endpoints of a service, served from its declarations ([`crate::effect`]): one
//! handler skeleton for every action and every compensation — body parse and validation,
//! `Idempotency-Key`, fault interception, the barrier, stats and the reply — plus the shared
//! read endpoints (`GET /healthz`, an audit list by `order_id`).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::{self, Api, Op as Doc};
use crate::barrier::{self, Barrier, IdempotencyKey, Op, Prior};
use crate::effect::{ActionEndpoint, Compensation, CompensationRequest, EffectFuture, Origin};
use crate::faults::{Message, Sender};
use crate::http::{Json, Query};
use crate::problem::{Issues, Problem};
use crate::service::App;
use crate::store::{Conn, FromBoth, query};

/// The routes of every action and compensation in `app`'s spec, and `GET /healthz`.
pub fn routes(app: &App) -> Api<App> {
    let spec = app.spec;
    let mut router = Api::new().route(
        "/healthz",
        api::get("Health: 200 when the database answers").answer_schema(
            200,
            "`{\"status\": \"ok\", \"service\"}`",
            api::object(),
        ),
        healthz,
    );
    for &endpoint in spec.actions {
        router = router.route(
            endpoint.path(),
            step_op(
                endpoint.document(api::post("Saga action (also the 2PC prepare of this step)")),
                Some(crate::barrier::Op::Action),
            ),
            move |State(app): State<App>, from, key, Json(body)| {
                action(app, (from, key), body, endpoint)
            },
        );
    }
    for &compensation in spec.compensations {
        router = router.route(
            compensation.path,
            step_op(
                api::post("Saga compensation").body::<CompensationRequest>(),
                Some(crate::barrier::Op::Compensation),
            ),
            move |State(app): State<App>, from, key, Json(body)| {
                compensate(app, (from, key), body, compensation)
            },
        );
    }
    router
}

/// What every saga step endpoint answers (docs/sagas.md, "step result protocol"); `side`: the
/// side its key must name (an action's key ends in `:action`).
fn step_op(op: Doc, side: Option<crate::barrier::Op>) -> Doc {
    op.header_schema(
        "Idempotency-Key",
        "`{run}:{step}:{action|compensation}` (required; duplicates replay the first answer)",
        true,
        crate::barrier::IdempotencyKey::schema(side),
    )
    .header("Tandem-Sender", "the sending node's name (link faults)")
    .answer_schema(200, "the step's output (a replay: the same)", api::object())
    .error(
        409,
        "business refusal (e.g. insufficient-stock), or the key reused with another body",
    )
    .error(425, "in progress (an injected fault): resend")
    .error(500, "an injected transient fault (fault injection on only)")
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
    conn: Conn<'c>,
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
    /// The barrier on this service's database.
    pub fn barrier(&self) -> Barrier<'_> {
        Barrier {
            db: &self.db,
            hooks: &self.hooks,
        }
    }
}

/// `GET /healthz`: 200 when the database answers.
async fn healthz(State(app): State<App>) -> Result<Json<Value>, Problem> {
    query("SELECT 1").execute(&app.db).await?;
    Ok(Json(json!({ "status": "ok", "service": app.spec.name })))
}

/// `?order_id=` (required) of the audit lists.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ByOrder {
    #[param(required = true)]
    order_id: Option<String>,
}

/// `GET path`: an audit list, the rows `sql` selects for `$1` = the required `?order_id=`
/// (portable SQL, see [`crate::store`]; `Row` decodes from both backends' rows).
pub fn by_order<Row>(api: Api<App>, path: &str, what: &str, sql: &'static str) -> Api<App>
where
    Row: FromBoth + Serialize + 'static,
{
    api.route(
        path,
        api::get(what).query::<ByOrder>().answer_schema(
            200,
            "the rows, oldest first",
            api::schema(json!({"type": "array", "items": {"type": "object"}})),
        ),
        move |State(app): State<App>, Query(q): Query<ByOrder>| async move {
            let Some(order_id) = q.order_id else {
                return Err(Problem::invalid("/query/order_id", "is required"));
            };
            let rows: Vec<Row> = query(sql).bind(&order_id).fetch_all(&app.db).await?;
            Ok::<_, Problem>(Json(rows))
        },
    )
}
