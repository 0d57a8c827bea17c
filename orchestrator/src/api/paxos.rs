//! `POST /transactions/{id}/paxos`: an acceptor's message for the Paxos Commit leader of
//! transaction `id` (its ballot-0 `Phase2b` bundle). 202 when the leader runs in this instance
//! and took it; 404 `not-leading-here` otherwise (the acceptor drops it: a lost message, which
//! the leader that does run the transaction recovers from with its next ballot).

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tandem_kit::http::{Json, Path};
use tandem_kit::paxos::ToLeader;
use tandem_kit::problem::Problem;
use uuid::Uuid;

use super::Ctx;

pub(super) async fn deliver(
    State(c): State<Ctx>,
    Path(id): Path<Uuid>,
    Json(m): Json<ToLeader>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    if c.coordinator.paxos_deliver(id, m) {
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
