//! Operators' actions: `POST /sagas/{id}/cancel`, `POST /sagas/{id}/retry-now`,
//! `POST /sagas/{id}/resume` (and `POST /sagas/{id}/retry`, its older name). Who asks is the
//! `Tandem-Actor` header (default `anonymous`); it and the time go into the event the action
//! logs. The work is [`crate::driver::Driver::act`].
//!
//! Answers: 202 with the saga once the action is applied; 200 with the saga when there was
//! nothing to do (a second cancel); 409 problem+json when the saga's state does not allow it
//! (`saga-settled`, `not-failed`, `not-waiting`, `retry-in-progress`); 404 for an unknown saga.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tandem_kit::http::{Json, Path};
use tandem_kit::problem::Problem;
use uuid::Uuid;

use super::Ctx;
use super::sagas::view_of;
use crate::driver::Acted;
use crate::saga::{Action, Refusal};

/// The header naming who acts.
pub const ACTOR_HEADER: &str = "tandem-actor";
pub const MAX_ACTOR_LEN: usize = 100;

/// Who acts: the `Tandem-Actor` header (1 to 100 visible ASCII characters), else `anonymous`.
#[allow(clippy::result_large_err)] // `Problem` is what every handler answers
pub fn actor(headers: &HeaderMap) -> Result<String, Problem> {
    let Some(v) = headers.get(ACTOR_HEADER) else {
        return Ok("anonymous".to_string());
    };
    let bad = || {
        Problem::bad_request(format!(
            "the Tandem-Actor header must be 1 to {MAX_ACTOR_LEN} visible ASCII characters"
        ))
        .field("/header/Tandem-Actor", "invalid")
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    if s.is_empty() || s.len() > MAX_ACTOR_LEN {
        return Err(bad());
    }
    Ok(s.to_string())
}

pub(super) async fn cancel(
    c: State<Ctx>,
    id: Path<Uuid>,
    h: HeaderMap,
) -> Result<Response, Problem> {
    act(c, id, h, Action::Cancel).await
}

pub(super) async fn retry_now(
    c: State<Ctx>,
    id: Path<Uuid>,
    h: HeaderMap,
) -> Result<Response, Problem> {
    act(c, id, h, Action::RetryNow).await
}

pub(super) async fn resume(
    c: State<Ctx>,
    id: Path<Uuid>,
    h: HeaderMap,
) -> Result<Response, Problem> {
    act(c, id, h, Action::Resume).await
}

async fn act(
    State(c): State<Ctx>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    action: Action,
) -> Result<Response, Problem> {
    let by = actor(&headers)?;
    let status = match c.driver.act(id, action, &by).await? {
        Acted::Applied => StatusCode::ACCEPTED,
        Acted::AlreadyDone => StatusCode::OK,
        Acted::Refused(r) => return Err(refused(id, action, r)),
        Acted::InProgress => {
            return Err(
                Problem::conflict("retry-in-progress", "Saga is being resumed")
                    .detail(format!("saga {id} is already being resumed")),
            );
        }
    };
    let (row, events) = c
        .store
        .saga_with_events(id)
        .await?
        .ok_or_else(|| Problem::internal("saga vanished"))?;
    Ok((status, Json(view_of(&row, &events))).into_response())
}

/// 409 for an action the saga's state does not allow.
fn refused(id: Uuid, action: Action, r: Refusal) -> Problem {
    match r {
        Refusal::Settled(s) => Problem::conflict("saga-settled", "Saga is settled")
            .detail(format!(
                "saga {id} is {}; {} applies only to a saga still in progress",
                s.as_str(),
                action.as_str()
            ))
            .with("saga_status", s.as_str()),
        Refusal::NotFailed(s) => Problem::conflict("not-failed", "Saga is not failed")
            .detail(format!(
                "saga {id} is {}; only a failed saga can be resumed",
                s.as_str()
            ))
            .with("saga_status", s.as_str()),
        Refusal::NotWaiting => Problem::conflict("not-waiting", "Nothing is waiting to retry")
            .detail(format!(
                "saga {id} has a call in flight or due now; retry-now applies to a step waiting for its retry or next poll"
            )),
    }
}
