//! Branches that nobody finishes by a request: at start-up, those left `preparing` by a crash
//! (their work was lost: the core's `recover` with an empty log decides abort; one whose row is
//! still locked — the killed process's Postgres session has not ended yet, or another instance
//! is preparing it — is skipped and tried again by the timer below, never fatal), and the
//! prepared ones whose outcome never arrived — the core's in-doubt timer: every
//! `in_doubt_after`, each branch prepared for longer asks its coordinator
//! (`GET {coordinator_url}/transactions/{txn_id}/decision`) and is finished with the answer.
//! At start-up every prepared branch asks at once.

use std::time::Duration;

use axum::http::StatusCode;
use serde::Deserialize;
use tandem_protocols::Outcome;
use tandem_protocols::two_phase::Msg;

use super::Driver;
use super::branch::{self, BranchId};
use crate::problem::Problem;
use crate::service::App;

/// Abort the branches a crash left `preparing` (no prepared transaction). Run before serving.
/// Returns how many were aborted; those whose row is still locked are left to the timer.
pub async fn recover_at_start(app: &App) -> Result<usize, Problem> {
    let lost = branch::lost_at_start(&app.postgres()?.control).await?;
    let n = lost.len();
    let left = abort_lost(app, lost).await?;
    let aborted = n - left.len();
    app.lost_at_start
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .extend(left);
    Ok(aborted)
}

/// Abort each of `lost` (branches left `preparing` by a crash); returns those skipped because
/// their row is locked (503: a session still holds it). Any other failure is returned.
async fn abort_lost(app: &App, lost: Vec<BranchId>) -> Result<Vec<BranchId>, Problem> {
    let mut left = Vec::new();
    for id in lost {
        let mut driver = Driver::new(app, id);
        match driver.restart().await {
            Ok(_) => tracing::info!(branch = %id, "2pc: a prepare lost in a crash is aborted"),
            Err(p) if p.status == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::info!(branch = %id, problem = %p, "2pc: a prepare lost in a crash is still locked; trying again later");
                left.push(id);
            }
            Err(p) => return Err(p),
        }
    }
    Ok(left)
}

/// The lost prepares start-up had to skip: try them again; keep those still locked (or failing).
async fn retry_lost(app: &App) {
    let lost = std::mem::take(
        &mut *app
            .lost_at_start
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    if lost.is_empty() {
        return;
    }
    let left = match abort_lost(app, lost.clone()).await {
        Ok(left) => left,
        Err(p) => {
            tracing::warn!(problem = %p, "2pc: could not abort the prepares lost in a crash; trying again later");
            lost
        }
    };
    app.lost_at_start
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .extend(left);
}

/// The in-doubt timer: until `shutdown`, ask the coordinator about prepared branches (all of
/// them at once, then every `every` those prepared for longer than `every`).
pub async fn resolve_in_doubt(app: App, every: Duration) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .default_headers(app.client_headers())
        .build()
        .unwrap_or_default();
    // Only a service on Postgres has prepared branches (`service::App::run` starts this there).
    let Ok(control) = app.postgres().map(|pg| pg.control.clone()) else {
        return;
    };
    let mut min_age_ms = 0;
    loop {
        retry_lost(&app).await;
        match branch::prepared(&control, min_age_ms).await {
            Ok(branches) => {
                for b in branches {
                    let id = BranchId {
                        txn_id: b.txn_id,
                        step: b.step,
                    };
                    if let Some(url) = b.coordinator_url.as_deref()
                        && let Err(p) = ask_and_finish(&app, &http, id, url).await
                    {
                        tracing::warn!(branch = %id, problem = %p, "2pc: in doubt; asking again later");
                    }
                }
            }
            Err(p) => tracing::warn!(problem = %p, "2pc: could not list prepared branches"),
        }
        min_age_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
        tokio::time::sleep(every).await;
    }
}

#[derive(Debug, Deserialize)]
struct Decision {
    decision: String,
}

/// The core's `Send(Query)`: ask, then feed the answer.
async fn ask_and_finish(
    app: &App,
    http: &reqwest::Client,
    id: BranchId,
    coordinator_url: &str,
) -> Result<(), Problem> {
    let mut driver = Driver::new(app, id);
    driver.restart().await?;
    if !driver.sent.contains(&Msg::Query) {
        return Ok(());
    }
    let url = format!(
        "{}/transactions/{}/decision",
        coordinator_url.trim_end_matches('/'),
        id.txn_id
    );
    crate::stats::message_sent(&app.db, "query");
    let resp = http
        .get(&url)
        .send()
        .await
        .map_err(|e| Problem::unavailable(format!("GET {url}: {e}")))?;
    crate::stats::message_received(&app.db, "decision");
    if !resp.status().is_success() {
        return Err(Problem::unavailable(format!(
            "GET {url}: {}",
            resp.status()
        )));
    }
    let decision: Decision = resp
        .json()
        .await
        .map_err(|e| Problem::unavailable(format!("GET {url}: {e}")))?;
    let outcome = match decision.decision.as_str() {
        "commit" => Outcome::Commit,
        "abort" => Outcome::Abort,
        other => {
            return Err(Problem::unavailable(format!(
                "GET {url}: decision {other:?}"
            )));
        }
    };
    tracing::info!(branch = %id, ?outcome, "2pc: the coordinator answered");
    driver.receive(Msg::Outcome(outcome)).await
}
