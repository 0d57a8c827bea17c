//! What the two 2PC drivers ([`crate::participant`] and [`crate::coordinator`]) share: the map
//! of live protocol instances, forced and lazy writes on the blocking pool, the exit on a failed
//! forced write, and a poison-tolerant lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use uuid::Uuid;

use crate::Error;
use crate::net::Timers;
use tandem_protocols::two_phase::Timer;

/// A timer's callback: boxed with an explicit `Send` bound, because the timer task calls back
/// into the driver's `deliver`, whose future holds this one, and the compiler cannot infer
/// `Send` through that cycle.
pub(crate) type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Lock `m`, ignoring poisoning: every critical section leaves its state consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The live protocol instances of one process, one async mutex each.
pub(crate) struct Slots<S> {
    map: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<S>>>>,
}

impl<S> Default for Slots<S> {
    fn default() -> Self {
        Slots {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<S: AsRef<Timers>> Slots<S> {
    pub(crate) fn map(&self) -> MutexGuard<'_, HashMap<Uuid, Arc<tokio::sync::Mutex<S>>>> {
        lock(&self.map)
    }

    pub(crate) fn get(&self, id: Uuid) -> Option<Arc<tokio::sync::Mutex<S>>> {
        self.map().get(&id).cloned()
    }

    pub(crate) fn ids(&self) -> Vec<Uuid> {
        self.map().keys().copied().collect()
    }

    /// Whether the arming `generation` of timer `t` of instance `id` is still the live one.
    pub(crate) async fn timer_live(&self, id: Uuid, t: &Timer, generation: u64) -> bool {
        let Some(slot) = self.get(id) else {
            return false;
        };
        slot.lock().await.as_ref().is_live(t, generation)
    }
}

/// A failed forced write ends the process (exit code 70): continuing would let the core act on
/// a record that is not on disk; the restarted process recovers from what is.
pub(crate) fn fatal(what: &str, e: &dyn std::fmt::Display) -> ! {
    tracing::error!(error = %e, "{what} failed; exiting so that recovery starts from disk");
    std::process::exit(70)
}

/// `ForceWrite`: run `write` on the blocking pool; when this returns, the record is on disk.
pub(crate) async fn force(what: &str, write: impl FnOnce() -> Result<(), Error> + Send + 'static) {
    match tokio::task::spawn_blocking(write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => fatal(what, &e),
        Err(e) => fatal(what, &e),
    }
}

/// `Write` (lazy): a failure is only logged, since the protocols tolerate losing the record
/// (a lost `Aborted` or `End` only causes a query or a resend).
pub(crate) async fn lazy(
    id: Uuid,
    record: &str,
    write: impl FnOnce() -> Result<(), Error> + Send + 'static,
) {
    if let Ok(Err(e)) = tokio::task::spawn_blocking(write).await {
        tracing::warn!(txn = %id, error = %e, "lazy {record} record not written");
    }
}
