//! Shipping's part of the choreographed checkout: `charged` → create the shipment → `booked`
//! (the order is complete); `failed` (from any step, or the entry point's timer) → cancel →
//! `cancelled`, the first compensation: every failure undoes all three steps in reverse order,
//! each through its barrier (a step whose action never ran gets a null compensation, which
//! refuses its late action).

use serde_json::{Value, json};
use tandem_kit::choreo::event::{Event, Kind};
use tandem_kit::choreo::step::Step;

pub static STEP: Step = Step {
    name: "create_shipment",
    on: Kind::Charged,
    emits: Kind::Booked,
    action: &crate::api::CREATE,
    request,
    undo_on: Kind::Failed,
    undone: Kind::Cancelled,
    compensation: &crate::api::CANCEL,
};

fn request(event: &Event) -> Value {
    let o = &event.order;
    json!({ "order_id": event.order_id, "address": o["shipping"]["address"], "items": o["items"] })
}
