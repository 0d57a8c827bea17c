//! The orders HTTP API: `POST /orders` (place an order: 201 with its id), `GET /orders/{id}`
//! (its status and the timeline rebuilt from the stream; `?wait_ms=` waits for a terminal
//! status), `GET /healthz`.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tandem_kit::Problem;
use tandem_kit::api::{self, Api};
use tandem_kit::auth::{Access, Rule, rule};
use tandem_kit::checkout::{Address, Item, validate_address, validate_items};
use tandem_kit::choreo::event::{Event, Kind};
use tandem_kit::choreo::outbox;
use tandem_kit::http::{Json, Path, Query};
use tandem_kit::problem::Issues;

use crate::App;

/// Longest `?wait_ms=` honoured.
pub const MAX_WAIT_MS: u64 = 60_000;
pub const MAX_ID_LEN: usize = 128;
pub const MAX_AMOUNT_CENTS: i64 = 100_000_000_000;

/// Who may call each route (see `tandem_kit::auth`).
pub const ACCESS: &[Rule] = &[
    rule("GET", "/healthz", Access::Open),
    rule("POST", "/orders", Access::Client),
    rule("GET", "/orders/{id}", Access::Client),
];

pub fn router(app: App) -> Router {
    let guard = app.auth.guard(ACCESS);
    let own = Api::new()
        .route(
            "/healthz",
            api::get("Health: 200 when the database answers").answer_schema(
                200,
                "`{\"status\": \"ok\"}`",
                api::object(),
            ),
            healthz,
        )
        .route(
            "/orders",
            api::post("Place an order: the order and its `placed` event in one transaction")
                .body::<OrderRequest>()
                .header("traceparent", "W3C trace context: the order's trace id")
                .answer_schema(
                    201,
                    "`{\"order_id\", \"status\", \"trace_id\"}`",
                    api::object(),
                )
                .answer_schema(200, "the same order placed again", api::object())
                .error(409, "the order id is taken by another body"),
            place,
        )
        .route(
            "/orders/{id}",
            api::get("An order's status and timeline (read back from the stream)")
                .query::<ShowQuery>()
                .answer_schema(200, "status and timeline", api::object()),
            show,
        )
        .with_state(app);
    tandem_kit::http::finish(own, "orders", &guard)
}

/// An order, as placed: the orchestrated checkout's input. `order_id` is optional: without
/// it this service allocates one (UUID v7); with it, it is the business key (letters, digits,
/// `-`, `_`: one subject token) and placing the same order again answers the existing one.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub order_id: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub customer_id: String,
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<Item>,
    #[schema(minimum = 1, maximum = 100_000_000_000_i64)]
    pub amount_cents: i64,
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    pub payment: Payment,
    pub shipping: Shipping,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = OrderPayment)]
pub struct Payment {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub card_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = OrderShipping)]
pub struct Shipping {
    pub address: Address,
}

/// The same bounds as the orchestrated checkout's input schema.
pub fn validate(req: &OrderRequest, issues: &mut Issues) {
    if let Some(id) = &req.order_id
        && !tandem_kit::choreo::event::valid_order_id(id)
    {
        issues.add(
            "/order_id",
            format!("must be 1 to {MAX_ID_LEN} letters, digits, '-' or '_'"),
        );
    }
    issues.text("/customer_id", &req.customer_id, MAX_ID_LEN);
    validate_items(&req.items, issues);
    if !(1..=MAX_AMOUNT_CENTS).contains(&req.amount_cents) {
        issues.add(
            "/amount_cents",
            format!("must be between 1 and {MAX_AMOUNT_CENTS}"),
        );
    }
    if req.currency.len() != 3 || !req.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        issues.add("/currency", "must be three upper-case letters (ISO 4217)");
    }
    issues.text("/payment/card_token", &req.payment.card_token, MAX_ID_LEN);
    validate_address("/shipping/address", &req.shipping.address, issues);
}

/// The trace id of a W3C `traceparent` header (`00-<trace>-<span>-<flags>`), or a fresh one.
fn trace_id(headers: &HeaderMap) -> String {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map_or_else(|| uuid::Uuid::now_v7().simple().to_string(), str::to_owned)
}

/// `POST /orders`: the order row and its `placed` event in one transaction; the relay is woken
/// after the commit.
async fn place(
    State(app): State<App>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let req: OrderRequest = tandem_kit::http::from_value(body)?;
    let mut issues = Issues::default();
    validate(&req, &mut issues);
    issues.finish()?;
    let order_id = req
        .order_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let mut order = serde_json::to_value(&req).map_err(Problem::internal)?;
    order["order_id"] = Value::String(order_id.clone());
    let placed = Event {
        order_id: order_id.clone(),
        event: Kind::Placed,
        trace_id: trace_id(&headers),
        order,
        step: None,
        reason: None,
        output: None,
        hop: tandem_kit::choreo::event::FIRST_HOP,
    };
    let mut tx = app.pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO orders (id, body, trace_id, status, last_event, rank, deadline)
         VALUES ($1, $2, $3, 'running', 'placed', $4, now() + make_interval(secs => $5))
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&order_id)
    .bind(&placed.order)
    .bind(&placed.trace_id)
    .bind(Kind::Placed.rank())
    .bind(app.step_timeout.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !inserted {
        drop(tx.rollback().await);
        return placed_before(&app, &placed).await;
    }
    outbox::emit(&mut tx, &placed).await?;
    tx.commit().await?;
    app.relay.wake();
    tracing::info!(order = %order_id, trace = %placed.trace_id, "order placed");
    Ok((
        StatusCode::CREATED,
        Json(placed_reply(&order_id, "running", &placed.trace_id)),
    ))
}

fn placed_reply(order_id: &str, status: &str, trace_id: &str) -> Value {
    json!({ "order_id": order_id, "status": status, "trace_id": trace_id })
}

/// The order was placed before under this id: the same body answers it (200), another is a
/// 409 naming it.
async fn placed_before(app: &App, placed: &Event) -> Result<(StatusCode, Json<Value>), Problem> {
    let (body, status, trace): (Value, String, String) =
        sqlx::query_as("SELECT body, status, trace_id FROM orders WHERE id = $1")
            .bind(&placed.order_id)
            .fetch_one(&app.pool)
            .await?;
    if body != placed.order {
        return Err(Problem::conflict(
            "order-exists",
            "An order with this id was placed with another body",
        )
        .with("order_id", placed.order_id.clone()));
    }
    Ok((
        StatusCode::OK,
        Json(placed_reply(&placed.order_id, &status, &trace)),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ShowQuery {
    /// wait up to this long for a terminal status
    #[param(maximum = 60_000)]
    wait_ms: Option<u64>,
}

#[derive(Debug, sqlx::FromRow)]
struct OrderRow {
    status: String,
    last_event: String,
    trace_id: String,
}

async fn load(app: &App, id: &str) -> Result<OrderRow, Problem> {
    sqlx::query_as("SELECT status, last_event, trace_id FROM orders WHERE id = $1")
        .bind(id)
        .fetch_optional(&app.pool)
        .await?
        .ok_or_else(|| Problem::not_found(format!("unknown order {id:?}")))
}

fn terminal(status: &str) -> bool {
    matches!(status, "completed" | "compensated")
}

/// `GET /orders/{id}`: status (from this service's table) and the timeline (from the stream).
async fn show(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Json<Value>, Problem> {
    if !tandem_kit::choreo::event::valid_order_id(&id) {
        return Err(Problem::not_found(format!("unknown order {id:?}")));
    }
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(MAX_WAIT_MS));
    let deadline = tokio::time::Instant::now() + wait;
    let row = loop {
        let settled = app.settled.notified();
        let row = load(&app, &id).await?;
        if terminal(&row.status) || tokio::time::Instant::now() >= deadline {
            break row;
        }
        let _ = tokio::time::timeout_at(deadline, settled).await;
    };
    let events = tandem_kit::choreo::timeline(&app.js, &id)
        .await
        .map_err(Problem::unavailable)?;
    let timeline: Vec<Value> = events.iter().map(|e| e.to_json()).collect();
    Ok(Json(json!({
        "order_id": id,
        "status": row.status,
        "last_event": row.last_event,
        "trace_id": row.trace_id,
        "timeline": timeline,
    })))
}

async fn healthz(State(app): State<App>) -> Result<Json<Value>, Problem> {
    sqlx::query("SELECT 1").execute(&app.pool).await?;
    Ok(Json(json!({ "status": "ok", "service": "orders" })))
}
