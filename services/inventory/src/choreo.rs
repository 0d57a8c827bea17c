//! Inventory's part of the choreographed checkout: `placed` → reserve → `reserved`; `refunded`
//! (payment undid its step) → release → `released`, the last compensation.

use serde_json::{Value, json};
use tandem_kit::choreo::event::{Event, Kind};
use tandem_kit::choreo::step::Step;

pub static STEP: Step = Step {
    name: "reserve_inventory",
    on: Kind::Placed,
    emits: Kind::Reserved,
    action: &crate::api::RESERVE,
    request,
    undo_on: Kind::Refunded,
    undone: Kind::Released,
    compensation: &crate::api::RELEASE,
};

fn request(event: &Event) -> Value {
    json!({ "order_id": event.order_id, "items": event.order["items"] })
}
