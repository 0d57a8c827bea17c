//! Shipping HTTP handlers, validation and SQL.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
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

/// The documented destination country that is undeliverable (409 `undeliverable`).
pub const UNDELIVERABLE_COUNTRY: &str = "ZZ";
pub const MAX_ID_LEN: usize = 128;
pub const MAX_SKU_LEN: usize = 64;
pub const MAX_QUANTITY: i64 = 1_000_000;
pub const MAX_ITEMS: usize = 100;

pub fn routes(app: App) -> Router {
    Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route("/shipments", post(create).get(list_shipments))
        .route("/shipments/cancel", post(cancel))
        .with_state(app)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub name: String,
    pub line1: String,
    pub city: String,
    pub postal_code: String,
    pub country: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub sku: String,
    pub quantity: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipmentRequest {
    pub order_id: String,
    pub address: Address,
    pub items: Vec<Item>,
    /// The inventory reservation this shipment draws on (recorded, not checked: services do
    /// not read each other's databases).
    #[serde(default)]
    pub reservation_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub order_id: String,
}

fn validate_shipment(req: &ShipmentRequest) -> Result<(), Issues> {
    let mut issues = Issues::default();
    issues.text("/order_id", &req.order_id, MAX_ID_LEN);
    let a = &req.address;
    issues.text("/address/name", &a.name, 200);
    issues.text("/address/line1", &a.line1, 200);
    issues.text("/address/city", &a.city, 100);
    issues.text("/address/postal_code", &a.postal_code, 20);
    if a.country.len() != 2 || !a.country.bytes().all(|b| b.is_ascii_uppercase()) {
        issues.add(
            "/address/country",
            "must be two upper-case letters (ISO 3166-1 alpha-2)",
        );
    }
    if req.items.is_empty() {
        issues.add("/items", "must contain at least one item");
    } else if req.items.len() > MAX_ITEMS {
        issues.add("/items", format!("must contain at most {MAX_ITEMS} items"));
    }
    for (i, item) in req.items.iter().enumerate() {
        issues.text(&format!("/items/{i}/sku"), &item.sku, MAX_SKU_LEN);
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            issues.add(
                format!("/items/{i}/quantity"),
                format!("must be between 1 and {MAX_QUANTITY}"),
            );
        }
    }
    if let Some(r) = &req.reservation_id {
        issues.text("/reservation_id", r, MAX_ID_LEN);
    }
    issues.finish()
}

fn problem(p: impl Into<Problem>) -> Response {
    p.into().into_response()
}

/// `POST /shipments`: the saga action.
async fn create(
    State(app): State<App>,
    key: IdempotencyKey,
    Json(req): Json<ShipmentRequest>,
) -> Result<Response, Response> {
    key.expect(Op::Action).map_err(problem)?;
    validate_shipment(&req).map_err(problem)?;
    let injection = app.faults.intercept(&key, Some(&req.order_id)).await?;
    let effect_key = key.clone();
    let outcome = barrier::action(&app.pool, &key, move |conn| {
        Box::pin(async move { create_effect(conn, &effect_key, req).await })
    })
    .await;
    Ok(injection.finish(outcome.into_response()))
}

async fn create_effect(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    req: ShipmentRequest,
) -> Result<Reply, Problem> {
    if req.address.country == UNDELIVERABLE_COUNTRY {
        tracing::info!(%key, order_id = %req.order_id, "undeliverable destination");
        return Err(
            Problem::conflict("undeliverable", "Undeliverable destination")
                .detail(format!(
                    "country {UNDELIVERABLE_COUNTRY:?} is not delivered to; no shipment was created"
                ))
                .with("country", req.address.country)
                .with("order_id", req.order_id),
        );
    }
    let id = Uuid::now_v7();
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO shipments (id, order_id, saga_id, step, status, address, items, reservation_id)
         VALUES ($1, $2, $3, $4, 'created', $5, $6, $7)
         RETURNING created_at",
    )
    .bind(id)
    .bind(&req.order_id)
    .bind(&key.saga_id)
    .bind(&key.step)
    .bind(sqlx::types::Json(&req.address))
    .bind(sqlx::types::Json(&req.items))
    .bind(&req.reservation_id)
    .fetch_one(&mut *conn)
    .await?;
    tracing::info!(%key, shipment_id = %id, order_id = %req.order_id, "shipment created");
    Ok(Reply::created(json!({
        "shipment_id": id,
        "order_id": req.order_id,
        "status": "created",
        "reservation_id": req.reservation_id,
        "created_at": created_at,
    })))
}

/// `POST /shipments/cancel`: the compensation. Cancels the shipment created under the action
/// key of the same saga step (the body's `order_id` is informational).
async fn cancel(
    State(app): State<App>,
    key: IdempotencyKey,
    Json(req): Json<CancelRequest>,
) -> Result<Response, Response> {
    key.expect(Op::Compensation).map_err(problem)?;
    let mut issues = Issues::default();
    issues.text("/order_id", &req.order_id, MAX_ID_LEN);
    issues.finish().map_err(problem)?;
    let injection = app.faults.intercept(&key, Some(&req.order_id)).await?;
    let effect_key = key.clone();
    let outcome = barrier::compensation(&app.pool, &key, move |conn, prior| {
        Box::pin(async move { cancel_effect(conn, &effect_key, prior).await })
    })
    .await;
    Ok(injection.finish(outcome.into_response()))
}

async fn cancel_effect(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    prior: Prior,
) -> Result<Reply, Problem> {
    let cancelled = if matches!(prior, Prior::Applied(_)) {
        let row: Option<(Uuid, String)> = sqlx::query_as(
            "UPDATE shipments SET status = 'cancelled', cancelled_at = now()
             WHERE saga_id = $1 AND step = $2 AND status = 'created'
             RETURNING id, order_id",
        )
        .bind(&key.saga_id)
        .bind(&key.step)
        .fetch_optional(&mut *conn)
        .await?;
        row
    } else {
        None
    };
    let Some((id, order_id)) = cancelled else {
        let mut body = barrier::nothing_to_undo(&prior);
        body["cancelled"] = Value::Bool(false);
        return Ok(Reply::ok(body));
    };
    tracing::info!(%key, shipment_id = %id, %order_id, "shipment cancelled");
    Ok(Reply::ok(json!({
        "cancelled": true,
        "shipment_id": id,
        "order_id": order_id,
        "status": "cancelled",
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ByOrder {
    order_id: Option<String>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct Shipment {
    shipment_id: Uuid,
    order_id: String,
    saga_id: String,
    step: String,
    status: String,
    address: sqlx::types::Json<Value>,
    items: sqlx::types::Json<Value>,
    reservation_id: Option<String>,
    created_at: DateTime<Utc>,
    cancelled_at: Option<DateTime<Utc>>,
}

/// `GET /shipments?order_id=`: every shipment of the order, oldest first.
async fn list_shipments(
    State(app): State<App>,
    Query(q): Query<ByOrder>,
) -> Result<Json<Vec<Shipment>>, Problem> {
    let Some(order_id) = q.order_id else {
        return Err(Problem::invalid("/query/order_id", "is required"));
    };
    let rows: Vec<Shipment> = sqlx::query_as(
        "SELECT id AS shipment_id, order_id, saga_id, step, status, address, items, reservation_id,
                created_at, cancelled_at
         FROM shipments WHERE order_id = $1 ORDER BY created_at, id",
    )
    .bind(&order_id)
    .fetch_all(&app.pool)
    .await?;
    Ok(Json(rows))
}

/// `GET /healthz`: 200 when the database answers.
async fn healthz(State(app): State<App>) -> Result<Json<Value>, Problem> {
    sqlx::query("SELECT 1").execute(&app.pool).await?;
    Ok(Json(json!({ "status": "ok", "service": "shipping" })))
}
