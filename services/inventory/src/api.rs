//! Inventory HTTP handlers, validation and SQL.

use std::collections::BTreeMap;
use tandem_kit::auth::{Access, rule};

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tandem_kit::Problem;
use tandem_kit::api::{self, Api};
use tandem_kit::checkout::validate_items;
use tandem_kit::effect::{Action, Compensation, Origin};
use tandem_kit::http::{Json, Path};
use tandem_kit::problem::Issues;
use tandem_kit::saga::by_order;
use tandem_kit::store::{Conn, query};
use uuid::Uuid;

use crate::App;

pub use tandem_kit::checkout::{Item, MAX_SKU_LEN};
pub use tandem_kit::effect::MAX_ORDER_ID_LEN;
pub const MAX_AVAILABLE: i64 = 1_000_000_000_000;

/// `POST /reservations`: the saga action (and the 2PC prepare of the same step).
pub static RESERVE: Action<ReserveRequest> =
    Action::new("/reservations", validate_reserve, |conn, origin, req| {
        Box::pin(reserve(conn, origin, req))
    });

/// `POST /reservations/release`: the compensation. Releases the reservation made under the
/// action key of the same saga step (the body's `order_id` is informational).
pub static RELEASE: Compensation =
    Compensation::new("/reservations/release", "released", |conn, origin| {
        Box::pin(release(conn, origin))
    });

/// Who may call [`routes`] (see `tandem_kit::auth`): reads for clients, stock seeding for
/// operators.
pub const ACCESS: &[tandem_kit::auth::Rule] = &[
    rule("GET", "/stock/{sku}", Access::Client),
    rule("PUT", "/stock/{sku}", Access::Operator),
    rule("GET", "/reservations", Access::Client),
];

/// The read and setup routes (the saga endpoints come from [`RESERVE`] and [`RELEASE`]).
pub fn routes() -> Api<App> {
    // What `validate_sku` takes: 1 to 64 characters, no control character.
    let sku = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_SKU_LEN,
        "pattern": r"^[^\u0000-\u001F\u007F-\u009F]*$"
    });
    let api = Api::new()
        .route(
            "/stock/{sku}",
            api::get("A SKU's stock")
                .path_schema("sku", sku.clone())
                .answer::<Stock>(200, "available and reserved"),
            get_stock,
        )
        .route(
            "/stock/{sku}",
            api::put("Set a SKU's available stock")
                .path_schema("sku", sku)
                .body::<SetStock>()
                .answer::<Stock>(200, "the stock"),
            put_stock,
        );
    by_order::<Reservation>(
        api,
        "/reservations",
        "An order's reservations",
        "SELECT id AS reservation_id, order_id, saga_id, step, txn_id, status, items, created_at, released_at
         FROM reservations WHERE order_id = $1 ORDER BY created_at, id",
    )
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub order_id: String,
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<Item>,
    /// The reservation's id, when the caller allocates it (the orchestrator's `{"$id": …}`, so
    /// that a later step can name it before this one ran); a fresh one otherwise.
    #[serde(default)]
    pub reservation_id: Option<Uuid>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStock {
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub available: i64,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Stock {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
}

fn validate_sku(sku: &str) -> Result<(), Issues> {
    let mut issues = Issues::default();
    issues.text("/path/sku", sku, MAX_SKU_LEN);
    issues.finish()
}

fn validate_reserve(req: &ReserveRequest, issues: &mut Issues) {
    issues.text("/order_id", &req.order_id, MAX_ORDER_ID_LEN);
    validate_items(&req.items, issues);
}

async fn get_stock(
    State(app): State<App>,
    Path(sku): Path<String>,
) -> Result<Json<Stock>, Problem> {
    validate_sku(&sku)?;
    let stock: Option<Stock> = query("SELECT sku, available, reserved FROM stock WHERE sku = $1")
        .bind(&sku)
        .fetch_optional(&app.db)
        .await?;
    stock
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("unknown sku {sku:?}")))
}

async fn put_stock(
    State(app): State<App>,
    Path(sku): Path<String>,
    Json(body): Json<SetStock>,
) -> Result<Json<Stock>, Problem> {
    validate_sku(&sku)?;
    if !(0..=MAX_AVAILABLE).contains(&body.available) {
        return Err(Problem::invalid(
            "/available",
            format!("must be between 0 and {MAX_AVAILABLE}"),
        ));
    }
    let stock: Stock = query(
        "INSERT INTO stock (sku, available) VALUES ($1, $2)
         ON CONFLICT (sku) DO UPDATE SET available = EXCLUDED.available, updated_at = now()
         RETURNING sku, available, reserved",
    )
    .bind(&sku)
    .bind(body.available)
    .fetch_one(&app.db)
    .await?;
    tracing::info!(sku = %stock.sku, available = stock.available, "stock set");
    Ok(Json(stock))
}

async fn reserve(
    mut conn: Conn<'_>,
    origin: &Origin,
    req: ReserveRequest,
) -> Result<Value, Problem> {
    // One line per SKU, in SKU order: rows are locked in that order by every reservation.
    let mut wanted: BTreeMap<String, i64> = BTreeMap::new();
    for item in req.items {
        *wanted.entry(item.sku).or_default() += item.quantity;
    }
    for (sku, &quantity) in &wanted {
        let updated: Option<i64> = query(
            "UPDATE stock SET available = available - $2, reserved = reserved + $2, updated_at = now()
             WHERE sku = $1 AND available >= $2
             RETURNING available",
        )
        .bind(sku)
        .bind(quantity)
        .scalar_optional(&mut conn)
        .await?;
        if updated.is_none() {
            let available: Option<i64> = query("SELECT available FROM stock WHERE sku = $1")
                .bind(sku)
                .scalar_optional(&mut conn)
                .await?;
            let detail = match available {
                Some(a) => format!("sku {sku:?}: {quantity} requested, {a} available"),
                None => format!("sku {sku:?} is unknown (no stock)"),
            };
            return Err(
                Problem::conflict("insufficient-stock", "Insufficient stock")
                    .detail(detail)
                    .with("sku", sku.clone())
                    .with("requested", quantity)
                    .with("available", available.unwrap_or(0)),
            );
        }
    }
    let items: Vec<Item> = wanted
        .into_iter()
        .map(|(sku, quantity)| Item { sku, quantity })
        .collect();
    let id = req.reservation_id.unwrap_or_else(Uuid::now_v7);
    let created_at: DateTime<Utc> = query(
        "INSERT INTO reservations (id, order_id, saga_id, step, txn_id, status, items)
         VALUES ($1, $2, $3, $4, $5, 'held', $6)
         RETURNING created_at",
    )
    .bind(id)
    .bind(&req.order_id)
    .bind(&origin.run_id)
    .bind(&origin.step)
    .bind(origin.txn_id)
    .bind(sqlx::types::Json(&items))
    .scalar(&mut conn)
    .await?;
    tracing::info!(%origin, reservation_id = %id, order_id = %req.order_id, "reservation held");
    Ok(json!({
        "reservation_id": id,
        "order_id": req.order_id,
        "items": items,
        "status": "held",
        "created_at": created_at,
    }))
}

async fn release(mut conn: Conn<'_>, origin: &Origin) -> Result<Option<Value>, Problem> {
    let row: Option<(Uuid, String, sqlx::types::Json<Vec<Item>>)> = query(
        "UPDATE reservations SET status = 'released', released_at = now()
         WHERE saga_id = $1 AND step = $2 AND status = 'held'
         RETURNING id, order_id, items",
    )
    .bind(&origin.run_id)
    .bind(&origin.step)
    .fetch_optional(&mut conn)
    .await?;
    let Some((id, order_id, sqlx::types::Json(items))) = row else {
        return Ok(None);
    };
    // Items are stored sorted by SKU: the same lock order as reservations.
    for item in &items {
        query(
            "UPDATE stock SET available = available + $2, reserved = reserved - $2, updated_at = now()
             WHERE sku = $1",
        )
        .bind(&item.sku)
        .bind(item.quantity)
        .execute(&mut conn)
        .await?;
    }
    tracing::info!(%origin, reservation_id = %id, %order_id, "reservation released");
    Ok(Some(json!({
        "reservation_id": id,
        "order_id": order_id,
        "items": items,
        "status": "released",
    })))
}

/// A row of `GET /reservations?order_id=` (every reservation of the order, oldest first).
#[derive(Debug, Serialize, sqlx::FromRow)]
struct Reservation {
    reservation_id: Uuid,
    order_id: String,
    saga_id: String,
    step: String,
    /// The 2PC transaction that made it (`None` for a saga call).
    txn_id: Option<Uuid>,
    status: String,
    items: sqlx::types::Json<Vec<Item>>,
    created_at: DateTime<Utc>,
    released_at: Option<DateTime<Utc>>,
}
