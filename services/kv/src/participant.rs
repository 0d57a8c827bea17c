//! The shard's 2PC participant driver: it runs `tandem_protocols::two_phase::Participant`
//! and executes its actions and nothing else.
//!
//! | core action | here |
//! |---|---|
//! | `ForceWrite(Prepared)` | the write set, the participants and this shard's index, forced to redb; then shared locks are released (exclusive ones stay) |
//! | `ForceWrite(Committed)` | the writes applied, the prepared record replaced by a decided one — one durable redb transaction |
//! | `Write(Aborted)` | the prepared record removed |
//! | `Decide(o)` | the transaction ends: locks released, the waiting commit request answered |
//! | `Send` | an [`Envelope`] to the coordinator |
//! | `SetTimer` / `CancelTimer` | a tokio sleep that feeds `Timeout` unless re-armed or cancelled |
//!
//! Initiation: the client's commit request goes to the lowest participant, which feeds the
//! core `Input::Begin` (its `BeginCommit` to the coordinator is its YES vote, Gray & Lamport's
//! counting). Other shards create their participant when the coordinator's `Prepare` arrives:
//! voting YES if the transaction is open here, NO if this shard does not know it (it timed out,
//! or the shard restarted before preparing — the buffered writes are gone).
//!
//! Recovery: each prepared record becomes `Participant::recover(index, [Prepared])`, which asks
//! the coordinator (`Query`) on a timer until it learns the outcome. A participant is dropped from
//! memory once decided; a late message rebuilds it from the durable records.
//!
//! A failed forced write ends the process (exit code 70): continuing would let the core act on
//! a record that is not on disk; the restarted shard recovers from what is.

use std::sync::Arc;

use kv_client::wire::TxnOutcome;
use tandem_protocols::two_phase::{Msg, Participant, Record, Timer};
use tandem_protocols::{Action, Input, NodeId, Role, Vote};
use uuid::Uuid;

use crate::driver::{Slots, Task, fatal, force, lazy};
use crate::net::{Envelope, Timers};
use crate::shard::{Shard, Status};
use crate::store::PreparedRecord;

type Act = Action<Msg, Record, Timer>;

/// One participant instance.
pub(crate) struct Slot {
    core: Participant,
    index: u8,
    participants: Vec<u16>,
    timers: Timers,
    /// Actions from construction or recovery, not yet executed.
    pending: Vec<Act>,
}

impl AsRef<Timers> for Slot {
    fn as_ref(&self) -> &Timers {
        &self.timers
    }
}

/// The live participant instances of a shard.
pub(crate) type Parts = Slots<Slot>;

impl Shard {
    /// Rebuild the participant of a prepared record (called before serving).
    pub(crate) fn recover_participant(&self, record: &PreparedRecord) {
        let (p, actions) = Participant::recover(record.index, &[Record::Prepared]);
        let slot = Slot {
            core: p,
            index: record.index,
            participants: record.participants.clone(),
            timers: Timers::default(),
            pending: actions,
        };
        self.inner
            .parts
            .map()
            .insert(record.id, Arc::new(tokio::sync::Mutex::new(slot)));
    }

    /// Execute the recovery actions (the in-doubt queries) once the runtime serves.
    pub(crate) fn resume_recovered(&self) {
        for id in self.inner.parts.ids() {
            let shard = self.clone();
            tokio::spawn(async move { shard.deliver(id, None).await });
        }
    }

    /// Start 2PC for `id` as its initiator (core participant 0).
    pub(crate) async fn initiate(&self, id: Uuid, participants: Vec<u16>) {
        self.ensure_slot(id, 0, participants);
        self.deliver(id, Some(Input::Begin)).await;
    }

    /// A protocol message from the coordinator.
    pub(crate) async fn on_envelope(&self, env: Envelope) -> Result<(), String> {
        let NodeId::Participant(index) = env.to else {
            return Err("not addressed to a participant".into());
        };
        if env.participants.get(usize::from(index)) != Some(&self.inner.index) {
            return Err(format!(
                "participant {index} of {:?} is not shard {}",
                env.participants, self.inner.index
            ));
        }
        self.ensure_slot(env.txn, index, env.participants.clone());
        let input = Input::Receive {
            from: env.from,
            msg: env.msg,
        };
        self.deliver(env.txn, Some(input)).await;
        Ok(())
    }

    /// Create the participant for `id` if it is not live: YES if the transaction is open here,
    /// rebuilt from the records if it prepared or committed, NO otherwise.
    fn ensure_slot(&self, id: Uuid, index: u8, participants: Vec<u16>) {
        let mut map = self.inner.parts.map();
        if map.contains_key(&id) {
            return;
        }
        let open = {
            let mut st = self.state();
            match st.txns.get_mut(&id) {
                Some(t) if matches!(t.status, Status::Active | Status::Preparing) => {
                    t.status = Status::Preparing;
                    true
                }
                _ => false,
            }
        };
        let (core, pending) = if open {
            Participant::new(index, Vote::Yes)
        } else {
            let log = match self.inner.store.decided(id) {
                Ok(Some(d)) if d.committed => vec![Record::Prepared, Record::Committed],
                Ok(_) => vec![],
                Err(e) => fatal("reading the decided record", &e),
            };
            if log.is_empty() {
                Participant::new(index, Vote::No)
            } else {
                Participant::recover(index, &log)
            }
        };
        let slot = Slot {
            core,
            index,
            participants,
            timers: Timers::default(),
            pending,
        };
        map.insert(id, Arc::new(tokio::sync::Mutex::new(slot)));
    }

    /// Feed `input` (after any pending actions) and execute what the core answers, in order.
    async fn deliver(&self, id: Uuid, input: Option<Input<Msg, Timer>>) {
        let Some(slot) = self.inner.parts.get(id) else {
            return;
        };
        let mut s = slot.lock().await;
        let mut actions = std::mem::take(&mut s.pending);
        if let Some(input) = input {
            actions.extend(s.core.handle(input));
        }
        let mut decided = false;
        for action in actions {
            decided |= matches!(action, Action::Decide(_) | Action::Forget);
            self.execute(id, &mut s, action).await;
        }
        if decided {
            let mut map = self.inner.parts.map();
            if map.get(&id).is_some_and(|live| Arc::ptr_eq(live, &slot)) {
                map.remove(&id);
            }
        }
    }

    async fn execute(&self, id: Uuid, s: &mut Slot, action: Act) {
        match action {
            Action::ForceWrite(Record::Prepared) => self.force_prepared(id, s).await,
            Action::ForceWrite(Record::Committed) => {
                let store = self.inner.store.clone();
                force("forcing Committed", move || store.commit_prepared(id)).await;
            }
            Action::Write(Record::Aborted) => {
                let store = self.inner.store.clone();
                lazy(id, "Aborted", move || store.abort_prepared(id)).await;
            }
            Action::ForceWrite(_) | Action::Write(_) => {}
            Action::Decide(outcome) => {
                let outcome = match outcome {
                    tandem_protocols::Outcome::Commit => {
                        self.count(|c| c.two_phase += 1);
                        TxnOutcome::Committed
                    }
                    tandem_protocols::Outcome::Abort => TxnOutcome::Aborted,
                };
                self.finish(id, outcome);
            }
            Action::Send { to, msg } => {
                let env = Envelope {
                    txn: id,
                    from: NodeId::Participant(s.index),
                    to,
                    msg,
                    participants: s.participants.clone(),
                };
                self.inner.net.send(&self.inner.coordinator_url, env);
            }
            Action::SetTimer(t) => {
                let (shard, delay) = (self.clone(), self.inner.timing.of(&t));
                s.timers.arm(t, delay, |t, g| shard.fire(id, t, g));
            }
            Action::CancelTimer(t) => s.timers.cancel(&t),
            Action::Forget => {}
        }
    }

    /// A timer fired: feed `Timeout` unless it was re-armed or cancelled meanwhile.
    fn fire(self, id: Uuid, t: Timer, generation: u64) -> Task {
        Box::pin(async move {
            if self.inner.parts.timer_live(id, &t, generation).await {
                self.deliver(id, Some(Input::Timeout(t))).await;
            }
        })
    }

    /// `ForceWrite(Prepared)`: persist the write set, then mark the transaction prepared and
    /// release its shared locks (it will never acquire another lock).
    async fn force_prepared(&self, id: Uuid, s: &Slot) {
        let record = {
            let st = self.state();
            st.txns.get(&id).map(|t| PreparedRecord {
                id,
                priority: t.key.0,
                index: s.index,
                participants: s.participants.clone(),
                writes: t.writes.clone(),
            })
        };
        let Some(record) = record else {
            fatal(
                "preparing",
                &format!("transaction {id} vanished while preparing"),
            );
        };
        let store = self.inner.store.clone();
        force("forcing Prepared", move || store.put_prepared(&record)).await;
        {
            let mut st = self.state();
            let crate::shard::State { txns, locks, .. } = &mut *st;
            if let Some(t) = txns.get_mut(&id) {
                t.status = Status::Prepared;
                let key = t.key;
                t.locked.retain(|k, mode| {
                    let keep = *mode == crate::locks::Mode::Exclusive;
                    if !keep {
                        locks.release(k, key);
                    }
                    keep
                });
            }
        }
        self.inner.released.notify_waiters();
    }
}
