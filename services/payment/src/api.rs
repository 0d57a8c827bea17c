//! Payment HTTP handlers, validation and SQL.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgConnection;
use tandem_kit::Problem;
use tandem_kit::barrier::{self, IdempotencyKey, Op, Prior, Reply};
use tandem_kit::http::{Json, Query};
use tandem_kit::problem::Issues;
use uuid::Uuid;

use crate::App;

/// The documented test card token that is always declined (409 `card-declined`).
pub const DECLINED_CARD_TOKEN: &str = "tok_decline";
pub const MAX_ID_LEN: usize = 128;
pub const MAX_AMOUNT_CENTS: i64 = 100_000_000_000;

pub fn routes(app: App) -> Router {
    Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route("/charges", post(charge))
        .route("/refunds", post(refund))
        .route("/payments", get(list_payments))
        .with_state(app)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargeRequest {
    pub order_id: String,
    pub customer_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub card_token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    pub order_id: String,
}

fn validate_charge(req: &ChargeRequest) -> Result<(), Issues> {
    let mut issues = Issues::default();
    issues.text("/order_id", &req.order_id, MAX_ID_LEN);
    issues.text("/customer_id", &req.customer_id, MAX_ID_LEN);
    if !(1..=MAX_AMOUNT_CENTS).contains(&req.amount_cents) {
        issues.add(
            "/amount_cents",
            format!("must be between 1 and {MAX_AMOUNT_CENTS}"),
        );
    }
    if req.currency.len() != 3 || !req.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        issues.add(
            "/currency",
            "must be three upper-case letters (ISO 4217), e.g. EUR",
        );
    }
    issues.text("/card_token", &req.card_token, MAX_ID_LEN);
    issues.finish()
}

fn problem(p: impl Into<Problem>) -> Response {
    p.into().into_response()
}

/// `POST /charges`: the saga action.
async fn charge(
    State(app): State<App>,
    key: IdempotencyKey,
    Json(req): Json<ChargeRequest>,
) -> Result<Response, Response> {
    key.expect(Op::Action).map_err(problem)?;
    validate_charge(&req).map_err(problem)?;
    let injection = app.faults.intercept(&key, Some(&req.order_id)).await?;
    let effect_key = key.clone();
    let outcome = barrier::action(&app.pool, &key, move |conn| {
        Box::pin(async move { charge_effect(conn, &effect_key, req).await })
    })
    .await;
    Ok(injection.finish(outcome.into_response()))
}

async fn charge_effect(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    req: ChargeRequest,
) -> Result<Reply, Problem> {
    if req.card_token == DECLINED_CARD_TOKEN {
        tracing::info!(%key, order_id = %req.order_id, "card declined");
        return Err(Problem::conflict("card-declined", "Card declined")
            .detail(format!(
                "the card was declined (test token {DECLINED_CARD_TOKEN:?}); nothing was charged"
            ))
            .with("order_id", req.order_id));
    }
    let id = Uuid::now_v7();
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO payments (id, kind, order_id, customer_id, amount_cents, currency, saga_id, step)
         VALUES ($1, 'charge', $2, $3, $4, $5, $6, $7)
         RETURNING created_at",
    )
    .bind(id)
    .bind(&req.order_id)
    .bind(&req.customer_id)
    .bind(req.amount_cents)
    .bind(&req.currency)
    .bind(&key.saga_id)
    .bind(&key.step)
    .fetch_one(&mut *conn)
    .await?;
    tracing::info!(%key, charge_id = %id, order_id = %req.order_id, amount_cents = req.amount_cents, "charged");
    Ok(Reply::created(json!({
        "charge_id": id,
        "order_id": req.order_id,
        "customer_id": req.customer_id,
        "amount_cents": req.amount_cents,
        "currency": req.currency,
        "status": "succeeded",
        "created_at": created_at,
    })))
}

/// `POST /refunds`: the compensation. Refunds the charge made under the action key of the same
/// saga step (the body's `order_id` is informational).
async fn refund(
    State(app): State<App>,
    key: IdempotencyKey,
    Json(req): Json<RefundRequest>,
) -> Result<Response, Response> {
    key.expect(Op::Compensation).map_err(problem)?;
    let mut issues = Issues::default();
    issues.text("/order_id", &req.order_id, MAX_ID_LEN);
    issues.finish().map_err(problem)?;
    let injection = app.faults.intercept(&key, Some(&req.order_id)).await?;
    let effect_key = key.clone();
    let outcome = barrier::compensation(&app.pool, &key, move |conn, prior| {
        Box::pin(async move { refund_effect(conn, &effect_key, prior).await })
    })
    .await;
    Ok(injection.finish(outcome.into_response()))
}

async fn refund_effect(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    prior: Prior,
) -> Result<Reply, Problem> {
    let refunded = if matches!(prior, Prior::Applied(_)) {
        let id = Uuid::now_v7();
        // One refund per charge (a partial unique index backs the barrier up).
        let row: Option<(Uuid, String, i64, String, DateTime<Utc>)> = sqlx::query_as(
            "INSERT INTO payments
                 (id, kind, order_id, customer_id, amount_cents, currency, saga_id, step, charge_id)
             SELECT $1, 'refund', order_id, customer_id, amount_cents, currency, saga_id, step, id
             FROM payments WHERE saga_id = $2 AND step = $3 AND kind = 'charge'
             ON CONFLICT (charge_id) WHERE kind = 'refund' DO NOTHING
             RETURNING charge_id, order_id, amount_cents, currency, created_at",
        )
        .bind(id)
        .bind(&key.saga_id)
        .bind(&key.step)
        .fetch_optional(&mut *conn)
        .await?;
        row.map(|r| (id, r))
    } else {
        None
    };
    let Some((refund_id, (charge_id, order_id, amount_cents, currency, created_at))) = refunded
    else {
        let mut body = barrier::nothing_to_undo(&prior);
        body["refunded"] = Value::Bool(false);
        return Ok(Reply::ok(body));
    };
    tracing::info!(%key, %refund_id, %charge_id, %order_id, amount_cents, "refunded");
    Ok(Reply::ok(json!({
        "refunded": true,
        "refund_id": refund_id,
        "charge_id": charge_id,
        "order_id": order_id,
        "amount_cents": amount_cents,
        "currency": currency,
        "created_at": created_at,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ByOrder {
    order_id: Option<String>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct Payment {
    id: Uuid,
    kind: String,
    order_id: String,
    customer_id: String,
    amount_cents: i64,
    currency: String,
    saga_id: String,
    step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    charge_id: Option<Uuid>,
    created_at: DateTime<Utc>,
}

/// `GET /payments?order_id=`: every charge and refund of the order, oldest first.
async fn list_payments(
    State(app): State<App>,
    Query(q): Query<ByOrder>,
) -> Result<Json<Vec<Payment>>, Problem> {
    let Some(order_id) = q.order_id else {
        return Err(Problem::invalid("/query/order_id", "is required"));
    };
    let rows: Vec<Payment> = sqlx::query_as(
        "SELECT id, kind, order_id, customer_id, amount_cents, currency, saga_id, step, charge_id, created_at
         FROM payments WHERE order_id = $1 ORDER BY created_at, id",
    )
    .bind(&order_id)
    .fetch_all(&app.pool)
    .await?;
    Ok(Json(rows))
}

/// `GET /healthz`: 200 when the database answers.
async fn healthz(State(app): State<App>) -> Result<Json<Value>, Problem> {
    sqlx::query("SELECT 1").execute(&app.pool).await?;
    Ok(Json(json!({ "status": "ok", "service": "payment" })))
}
