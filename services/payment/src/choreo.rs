//! Payment's part of the choreographed checkout: `reserved` → charge → `charged`; `cancelled`
//! (shipping undid its step) → refund → `refunded`.

use serde_json::{Value, json};
use tandem_kit::choreo::event::{Event, Kind};
use tandem_kit::choreo::step::Step;

pub static STEP: Step = Step {
    name: "charge_payment",
    on: Kind::Reserved,
    emits: Kind::Charged,
    action: &crate::api::CHARGE,
    request,
    undo_on: Kind::Cancelled,
    undone: Kind::Refunded,
    compensation: &crate::api::REFUND,
};

fn request(event: &Event) -> Value {
    let o = &event.order;
    json!({
        "order_id": event.order_id,
        "customer_id": o["customer_id"],
        "amount_cents": o["amount_cents"],
        "currency": o["currency"],
        "card_token": o["payment"]["card_token"],
    })
}
