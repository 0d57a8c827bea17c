//! Shipping HTTP handlers, validation and SQL.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tandem_kit::Problem;
use tandem_kit::api::Api;
use tandem_kit::auth::{Access, rule};
pub use tandem_kit::checkout::Address;
use tandem_kit::checkout::{Item, validate_address, validate_items};
use tandem_kit::effect::{Action, Compensation, Origin};
use tandem_kit::problem::Issues;
use tandem_kit::saga::by_order;
use tandem_kit::store::{Conn, query};
use uuid::Uuid;

use crate::App;

/// The documented destination country that is undeliverable (409 `undeliverable`).
pub const UNDELIVERABLE_COUNTRY: &str = "ZZ";
pub const MAX_ID_LEN: usize = 128;

/// `POST /shipments`: the saga action (and the 2PC prepare of the same step).
pub static CREATE: Action<ShipmentRequest> =
    Action::new("/shipments", validate_shipment, |conn, origin, req| {
        Box::pin(create(conn, origin, req))
    });

/// `POST /shipments/cancel`: the compensation. Cancels the shipment created under the action
/// key of the same saga step (the body's `order_id` is informational).
pub static CANCEL: Compensation =
    Compensation::new("/shipments/cancel", "cancelled", |conn, origin| {
        Box::pin(cancel(conn, origin))
    });

/// Who may call [`routes`] (see `tandem_kit::auth`): the audit list, for clients.
pub const ACCESS: &[tandem_kit::auth::Rule] = &[rule("GET", "/shipments", Access::Client)];

/// The read routes (the saga endpoints come from [`CREATE`] and [`CANCEL`]).
pub fn routes() -> Api<App> {
    by_order::<Shipment>(
        Api::new(),
        "/shipments",
        "An order's shipments",
            "SELECT id AS shipment_id, order_id, saga_id, step, txn_id, status, address, items, reservation_id,
                    created_at, cancelled_at
             FROM shipments WHERE order_id = $1 ORDER BY created_at, id",
    )
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipmentRequest {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub order_id: String,
    pub address: Address,
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<Item>,
    /// The inventory reservation this shipment draws on (recorded, not checked: services do
    /// not read each other's databases).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub reservation_id: Option<String>,
}

fn validate_shipment(req: &ShipmentRequest, issues: &mut Issues) {
    issues.text("/order_id", &req.order_id, MAX_ID_LEN);
    validate_address("/address", &req.address, issues);
    validate_items(&req.items, issues);
    if let Some(r) = &req.reservation_id {
        issues.text("/reservation_id", r, MAX_ID_LEN);
    }
}

async fn create(
    mut conn: Conn<'_>,
    origin: &Origin,
    req: ShipmentRequest,
) -> Result<Value, Problem> {
    if req.address.country == UNDELIVERABLE_COUNTRY {
        tracing::info!(%origin, order_id = %req.order_id, "undeliverable destination");
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
    let created_at: DateTime<Utc> = query(
        "INSERT INTO shipments (id, order_id, saga_id, step, txn_id, status, address, items, reservation_id)
         VALUES ($1, $2, $3, $4, $5, 'created', $6, $7, $8)
         RETURNING created_at",
    )
    .bind(id)
    .bind(&req.order_id)
    .bind(&origin.run_id)
    .bind(&origin.step)
    .bind(origin.txn_id)
    .bind(sqlx::types::Json(&req.address))
    .bind(sqlx::types::Json(&req.items))
    .bind(&req.reservation_id)
    .scalar(&mut conn)
    .await?;
    tracing::info!(%origin, shipment_id = %id, order_id = %req.order_id, "shipment created");
    Ok(json!({
        "shipment_id": id,
        "order_id": req.order_id,
        "status": "created",
        "reservation_id": req.reservation_id,
        "created_at": created_at,
    }))
}

async fn cancel(mut conn: Conn<'_>, origin: &Origin) -> Result<Option<Value>, Problem> {
    let row: Option<(Uuid, String)> = query(
        "UPDATE shipments SET status = 'cancelled', cancelled_at = now()
         WHERE saga_id = $1 AND step = $2 AND status = 'created'
         RETURNING id, order_id",
    )
    .bind(&origin.run_id)
    .bind(&origin.step)
    .fetch_optional(&mut conn)
    .await?;
    let Some((id, order_id)) = row else {
        return Ok(None);
    };
    tracing::info!(%origin, shipment_id = %id, %order_id, "shipment cancelled");
    Ok(Some(json!({
        "shipment_id": id,
        "order_id": order_id,
        "status": "cancelled",
    })))
}

/// A row of `GET /shipments?order_id=` (every shipment of the order, oldest first).
#[derive(Debug, Serialize, sqlx::FromRow)]
struct Shipment {
    shipment_id: Uuid,
    order_id: String,
    saga_id: String,
    step: String,
    /// The 2PC transaction that made it (`None` for a saga call).
    txn_id: Option<Uuid>,
    status: String,
    address: sqlx::types::Json<Value>,
    items: sqlx::types::Json<Value>,
    reservation_id: Option<String>,
    created_at: DateTime<Utc>,
    cancelled_at: Option<DateTime<Utc>>,
}
