//! `POST /transactions/{id}/paxos`: an acceptor's message for the Paxos Commit leader of
//! transaction `id` (its ballot-0 `Phase2b` bundle). 202 when the leader runs in this instance
//! and took it; 404 `not-leading-here` otherwise (the acceptor drops it: a lost message, which
//! the leader that does run the transaction recovers from with its next ballot).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use tandem_kit::faults::{FaultOp, Message, Sender};
use tandem_kit::http::{Json, Path};
use tandem_kit::paxos::ToLeader;
use tandem_kit::problem::Problem;
use uuid::Uuid;

use super::Ctx;

/// Under this node's faults: op `phase2b` (whatever the acceptor sends), scoped by the
/// transaction, and the sender (`acceptor-k`).
pub(super) async fn deliver(
    State(c): State<Ctx>,
    Path(id): Path<Uuid>,
    from: Sender,
    Json(m): Json<ToLeader>,
) -> Response {
    let fm = Message::txn(FaultOp::Phase2b, id, &from);
    c.faults.apply(fm, take(&c, id, m)).await
}

async fn take(c: &Ctx, id: Uuid, m: ToLeader) -> Result<(StatusCode, Json<Value>), Problem> {
    if c.commit()?.paxos_deliver(id, m) {
        Ok((StatusCode::ACCEPTED, Json(json!({ "transaction_id": id }))))
    } else {
        Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-leading-here",
            "No leader of this transaction here",
        )
        .detail(format!(
            "this instance does not lead transaction {id} (now)"
        )))
    }
}
