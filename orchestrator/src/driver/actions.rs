//! Operators' actions on a saga — cancel, retry-now, resume ([`crate::saga::Action`]) — through
//! one path: [`Driver::act`].
//!
//! An action is an input of the pure engine ([`crate::saga::Input::Operator`]), so it is applied
//! by the lease holder like every other input. The instance that receives the request **takes
//! the lease itself** (epoch + 1) and applies it at once, instead of recording a request for the
//! owner to pick up: the new epoch fences whatever the old owner was about to write (the outcome
//! of a call in flight, a retry it was waiting for), so the old owner drops the saga at its next
//! write, and the answer already shows the action's effect. The old owner may be another
//! instance or a task of this one ([`crate::worker::Slots::take_over`]).
//!
//! - cancel and retry-now steal a live lease (a running saga is always leased while it waits
//!   for a short retry or has a call in flight);
//! - resume takes only a free lease (a failed saga is parked, unleased): two resumes at once, the
//!   second one is told the first is in progress.
//!
//! Before taking anything the saga's state is checked ([`crate::saga::admit`]), so a refused
//! action (409) never disturbs the owner. If the state changed between that check and the take
//! (the saga settled, another cancel landed), the action is answered from the fresh state and
//! the saga is driven on from where it is (`Wake`).

use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;

use super::Driver;
use super::run::Active;
use crate::error::{Error, Result};
use crate::lease::Take;
use crate::saga::{Action, Admission, Input, Refusal, admit};
use crate::store::SagaRow;

/// What an operator's action did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acted {
    /// Applied (its event logged) and the saga is driven here.
    Applied,
    /// Nothing to do: a cancel of a saga already compensating.
    AlreadyDone,
    /// Not possible in the saga's state.
    Refused(Refusal),
    /// A resume of a saga another resume is applying right now.
    InProgress,
}

impl From<Admission> for Acted {
    fn from(a: Admission) -> Self {
        match a {
            Admission::Apply => Acted::Applied,
            Admission::AlreadyDone => Acted::AlreadyDone,
            Admission::Refused(r) => Acted::Refused(r),
        }
    }
}

impl Driver {
    /// Apply `action` to saga `id` at the request of `by` (see the module docs).
    pub async fn act(self: &Arc<Self>, id: Uuid, action: Action, by: &str) -> Result<Acted> {
        let store = self.work.leases.store();
        let row = store
            .saga(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no saga {id}")))?;
        let admitted = admit(&row.state, action, Utc::now());
        if admitted != Admission::Apply {
            return Ok(admitted.into());
        }
        let (mode, also) = match action {
            Action::Resume => (Take::IfFree, "status = 'failed'"),
            Action::Cancel => (Take::Steal, "status = 'running'"),
            Action::RetryNow => (Take::Steal, "status IN ('running', 'compensating')"),
        };
        let Some(row) = self.work.leases.take::<SagaRow>(id, mode, also).await? else {
            // Changed since the check: settled, cancelled, or (resume) held by another resume.
            let row = store
                .saga(id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("no saga {id}")))?;
            return Ok(match admit(&row.state, action, Utc::now()) {
                Admission::Apply => Acted::InProgress,
                other => other.into(),
            });
        };
        let def = self
            .registry
            .get(&row.run.definition, &row.run.version)
            .await?
            .ok_or_else(|| Error::Corrupt {
                what: "saga",
                message: format!("saga {id} runs a definition that is not stored"),
            })?;
        let Some(permit) = self.work.slots.take_over(id) else {
            // Every slot busy: hand the lease back (due now) for whoever has room.
            self.work.releaser.release_later(id, row.lease.epoch);
            return Err(Error::Busy(id));
        };
        let admitted = admit(&row.state, action, Utc::now());
        let mut a = Active::new(row, def);
        // The steps this action starts belong to the operator's request's trace.
        a.traceparent = tandem_kit::telemetry::current();
        let input = match admitted {
            Admission::Apply => Input::Operator {
                action,
                by: by.to_string(),
            },
            // Leased now, so driven on from where it is.
            _ => Input::Wake,
        };
        match self.step(&mut a, input).await {
            Some(command) => self.spawn_run(a, command, permit),
            None => self.work.finish(id, permit),
        }
        Ok(admitted.into())
    }
}
