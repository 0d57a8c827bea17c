//! Payment HTTP handlers, validation and SQL.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tandem_kit::Problem;
use tandem_kit::api::Api;
use tandem_kit::auth::{Access, rule};
use tandem_kit::effect::{Action, Compensation, Origin};
use tandem_kit::problem::Issues;
use tandem_kit::saga::by_order;
use tandem_kit::store::{Conn, query};
use uuid::Uuid;

use crate::App;

/// The documented test card token that is always declined (409 `card-declined`).
pub const DECLINED_CARD_TOKEN: &str = "tok_decline";
pub const MAX_ID_LEN: usize = 128;
pub const MAX_AMOUNT_CENTS: i64 = 100_000_000_000;

/// `POST /charges`: the saga action (and the 2PC prepare of the same step).
pub static CHARGE: Action<ChargeRequest> =
    Action::new("/charges", validate_charge, |conn, origin, req| {
        Box::pin(charge(conn, origin, req))
    });

/// `POST /refunds`: the compensation. Refunds the charge made under the action key of the same
/// saga step (the body's `order_id` is informational).
pub static REFUND: Compensation = Compensation::new("/refunds", "refunded", |conn, origin| {
    Box::pin(refund(conn, origin))
});

/// Who may call [`routes`] (see `tandem_kit::auth`): the audit list, for clients.
pub const ACCESS: &[tandem_kit::auth::Rule] = &[rule("GET", "/payments", Access::Client)];

/// The read routes (the saga endpoints come from [`CHARGE`] and [`REFUND`]).
pub fn routes() -> Api<App> {
    by_order::<Payment>(
        Api::new(),
        "/payments",
        "An order's charges and refunds",
            "SELECT id, kind, order_id, customer_id, amount_cents, currency, saga_id, step, txn_id, charge_id, created_at
             FROM payments WHERE order_id = $1 ORDER BY created_at, id",
    )
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChargeRequest {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub order_id: String,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub customer_id: String,
    #[schema(minimum = 1, maximum = 100_000_000_000_i64)]
    pub amount_cents: i64,
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub card_token: String,
}

fn validate_charge(req: &ChargeRequest, issues: &mut Issues) {
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
}

async fn charge(mut conn: Conn<'_>, origin: &Origin, req: ChargeRequest) -> Result<Value, Problem> {
    if req.card_token == DECLINED_CARD_TOKEN {
        tracing::info!(%origin, order_id = %req.order_id, "card declined");
        return Err(Problem::conflict("card-declined", "Card declined")
            .detail(format!(
                "the card was declined (test token {DECLINED_CARD_TOKEN:?}); nothing was charged"
            ))
            .with("order_id", req.order_id));
    }
    let id = Uuid::now_v7();
    let created_at: DateTime<Utc> = query(
        "INSERT INTO payments (id, kind, order_id, customer_id, amount_cents, currency, saga_id, step, txn_id)
         VALUES ($1, 'charge', $2, $3, $4, $5, $6, $7, $8)
         RETURNING created_at",
    )
    .bind(id)
    .bind(&req.order_id)
    .bind(&req.customer_id)
    .bind(req.amount_cents)
    .bind(&req.currency)
    .bind(&origin.run_id)
    .bind(&origin.step)
    .bind(origin.txn_id)
    .scalar(&mut conn)
    .await?;
    tracing::info!(%origin, charge_id = %id, order_id = %req.order_id, amount_cents = req.amount_cents, "charged");
    Ok(json!({
        "charge_id": id,
        "order_id": req.order_id,
        "customer_id": req.customer_id,
        "amount_cents": req.amount_cents,
        "currency": req.currency,
        "status": "succeeded",
        "created_at": created_at,
    }))
}

async fn refund(mut conn: Conn<'_>, origin: &Origin) -> Result<Option<Value>, Problem> {
    let refund_id = Uuid::now_v7();
    // One refund per charge (a partial unique index backs the barrier up).
    let row: Option<(Uuid, String, i64, String, DateTime<Utc>)> = query(
        "INSERT INTO payments
             (id, kind, order_id, customer_id, amount_cents, currency, saga_id, step, charge_id)
         SELECT $1, 'refund', order_id, customer_id, amount_cents, currency, saga_id, step, id
         FROM payments WHERE saga_id = $2 AND step = $3 AND kind = 'charge'
         ON CONFLICT (charge_id) WHERE kind = 'refund' DO NOTHING
         RETURNING charge_id, order_id, amount_cents, currency, created_at",
    )
    .bind(refund_id)
    .bind(&origin.run_id)
    .bind(&origin.step)
    .fetch_optional(&mut conn)
    .await?;
    let Some((charge_id, order_id, amount_cents, currency, created_at)) = row else {
        return Ok(None);
    };
    tracing::info!(%origin, %refund_id, %charge_id, %order_id, amount_cents, "refunded");
    Ok(Some(json!({
        "refund_id": refund_id,
        "charge_id": charge_id,
        "order_id": order_id,
        "amount_cents": amount_cents,
        "currency": currency,
        "created_at": created_at,
    })))
}

/// A row of `GET /payments?order_id=` (every charge and refund of the order, oldest first).
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
    /// The 2PC transaction that made it (`None` for a saga call).
    txn_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    charge_id: Option<Uuid>,
    created_at: DateTime<Utc>,
}
