//! In-process test hooks: hold a request at an exact place so a test can interleave another
//! one with it. Only Rust code holding the service's [`crate::service::App`] can install one
//! (no environment variable, no HTTP endpoint), so a production process never has any; with
//! none installed a hook costs one atomic load.
//!
//! One place exists today: [`TestHooks::pause_before_commit`] — a saga call under a given
//! `Idempotency-Key` stops after its effect and its barrier row, before `COMMIT`, holding its
//! locks, until the test releases it. (A crash point cannot do this: it aborts the process.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::barrier::IdempotencyKey;

/// The hooks of one service instance (tests run many instances in one process). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    armed: Arc<AtomicUsize>,
    pauses: Arc<Mutex<Vec<Slot>>>,
}

#[derive(Debug)]
struct Slot {
    key: String,
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// A test's handle on a pause: wait until a request reaches it, then let it go.
#[derive(Debug)]
pub struct Pause {
    reached: Option<oneshot::Receiver<()>>,
    release: Option<oneshot::Sender<()>>,
}

impl Pause {
    /// Resolves when a request stops at the pause.
    pub async fn reached(&mut self) {
        if let Some(rx) = self.reached.take() {
            rx.await.expect("the paused request went away");
        }
    }

    /// Let the paused request go on (dropping the handle does too).
    pub fn release(mut self) {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(());
        }
    }
}

impl TestHooks {
    /// The first saga call with exactly this `Idempotency-Key` (`saga:step:op`) stops between
    /// its effect and its commit (see the module docs). One request per pause.
    pub fn pause_before_commit(&self, key: &str) -> Pause {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        self.lock().push(Slot {
            key: key.to_string(),
            reached: reached_tx,
            release: release_rx,
        });
        self.armed.fetch_add(1, Ordering::SeqCst);
        Pause {
            reached: Some(reached_rx),
            release: Some(release_tx),
        }
    }

    /// Called by the barrier before `COMMIT`.
    pub(crate) async fn before_commit(&self, key: &IdempotencyKey) {
        if self.armed.load(Ordering::Relaxed) == 0 {
            return;
        }
        let text = key.to_string();
        let slot = {
            let mut pauses = self.lock();
            let found = pauses.iter().position(|s| s.key == text);
            found.map(|i| pauses.remove(i))
        };
        let Some(slot) = slot else { return };
        self.armed.fetch_sub(1, Ordering::SeqCst);
        tracing::info!(%key, "test hook: paused before commit");
        let _ = slot.reached.send(());
        // Released, or the test dropped its handle: go on either way.
        let _ = slot.release.await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.pauses.lock().unwrap_or_else(|e| e.into_inner())
    }
}
