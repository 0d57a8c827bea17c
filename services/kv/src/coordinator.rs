//! The coordinator service: the 2PC transaction manager of cross-shard transactions. It runs
//! `tandem_protocols::two_phase::Coordinator` (presumed abort) and executes its actions:
//!
//! | core action | here |
//! |---|---|
//! | `ForceWrite(Commit)` | the transaction and its participants forced to redb — **the commit point** |
//! | `Write(End)` | that record removed (every participant acknowledged) |
//! | `Send` | an [`Envelope`] to the participant's shard |
//! | `SetTimer` / `CancelTimer` | vote collection deadline, COMMIT resends |
//! | `Forget` | the instance dropped from memory |
//!
//! A coordinator instance is created by the first message about a transaction (normally the
//! initiator's `BeginCommit`). After a restart, every logged `Commit` is recovered and resent
//! until acknowledged; a transaction with no record is unknown, and the core answers an in-doubt
//! participant's query with ABORT (presumed abort). Aborted and unknown instances are dropped
//! after [`FORGET_AFTER`]: by then no message sent to the previous instance can still arrive
//! (sends time out after 5 s), and a participant only re-sends queries, which a fresh instance
//! also answers with ABORT.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_protocols::two_phase::{CoordState, Coordinator as Core, Msg, Record, Timer};
use tandem_protocols::{Action, Input, NodeId, Outcome, Role};
use uuid::Uuid;

use crate::driver::{Slots, Task, force, lazy, lock};
use crate::net::{Envelope, Net, Timers};
use crate::store::Store;
use crate::{Config, Error, Timing};

type Act = Action<Msg, Record, Timer>;
type SlotRef = Arc<tokio::sync::Mutex<Slot>>;

/// How long an aborted or unknown coordinator instance stays in memory.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);

struct Slot {
    core: Core,
    participants: Vec<u16>,
    timers: Timers,
    pending: Vec<Act>,
    touched: Instant,
}

impl AsRef<Timers> for Slot {
    fn as_ref(&self) -> &Timers {
        &self.timers
    }
}

#[derive(Default, Debug)]
struct Counters {
    commits: u64,
    aborts: u64,
}

struct Inner {
    store: Store,
    shards: Vec<String>,
    timing: Timing,
    net: Net,
    slots: Slots<Slot>,
    counters: Mutex<Counters>,
}

/// The coordinator. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

impl Coordinator {
    /// The token settings of this process.
    pub(crate) fn auth(&self) -> &tandem_kit::auth::Auth {
        self.inner.net.auth()
    }

    /// Open the log and rebuild every committed, unacknowledged transaction.
    pub(crate) fn recover(config: &Config, store: Store) -> Result<Self, Error> {
        let logged = store.commits()?;
        let c = Coordinator {
            inner: Arc::new(Inner {
                store,
                shards: config.shards.clone(),
                timing: config.timing(),
                net: Net::new(config.auth()?),
                slots: Slots::default(),
                counters: Mutex::new(Counters::default()),
            }),
        };
        for (id, participants) in logged {
            let n = u8::try_from(participants.len()).unwrap_or(u8::MAX);
            let (core, pending) = Core::recover(n, &[Record::Commit]);
            c.slots().insert(
                id,
                Arc::new(tokio::sync::Mutex::new(Slot {
                    core,
                    participants,
                    timers: Timers::default(),
                    pending,
                    touched: Instant::now(),
                })),
            );
        }
        Ok(c)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Uuid, SlotRef>> {
        self.inner.slots.map()
    }

    /// Resend recovered commits; forget old aborted instances.
    pub(crate) fn start(&self) -> tokio::task::JoinHandle<()> {
        for id in self.inner.slots.ids() {
            let c = self.clone();
            tokio::spawn(async move { c.deliver(id, None).await });
        }
        let c = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                c.forget_finished().await;
            }
        })
    }

    async fn forget_finished(&self) {
        let slots: Vec<(Uuid, SlotRef)> =
            self.slots().iter().map(|(k, v)| (*k, v.clone())).collect();
        for (id, slot) in slots {
            let s = slot.lock().await;
            let idle = matches!(
                s.core.state,
                CoordState::Aborted | CoordState::Unknown | CoordState::Fresh
            );
            if idle && s.touched.elapsed() > FORGET_AFTER {
                self.slots().remove(&id);
            }
        }
    }

    /// `POST /2pc` on the coordinator.
    pub(crate) async fn on_envelope(&self, env: Envelope) -> Result<(), String> {
        let n = env.participants.len();
        if !(2..=usize::from(u8::MAX)).contains(&n)
            || env
                .participants
                .iter()
                .any(|&p| usize::from(p) >= self.inner.shards.len())
        {
            return Err(format!("bad participants {:?}", env.participants));
        }
        let NodeId::Participant(p) = env.from else {
            return Err("only participants talk to the coordinator".into());
        };
        if usize::from(p) >= n {
            return Err(format!("participant {p} of {n}"));
        }
        {
            let mut slots = self.slots();
            slots.entry(env.txn).or_insert_with(|| {
                let core = Core::new(u8::try_from(n).unwrap_or(u8::MAX));
                Arc::new(tokio::sync::Mutex::new(Slot {
                    core,
                    participants: env.participants.clone(),
                    timers: Timers::default(),
                    pending: Vec::new(),
                    touched: Instant::now(),
                }))
            });
        }
        let input = Input::Receive {
            from: env.from,
            msg: env.msg,
        };
        self.deliver(env.txn, Some(input)).await;
        Ok(())
    }

    async fn deliver(&self, id: Uuid, input: Option<Input<Msg, Timer>>) {
        let Some(slot) = self.inner.slots.get(id) else {
            return;
        };
        let mut s = slot.lock().await;
        s.touched = Instant::now();
        let mut actions = std::mem::take(&mut s.pending);
        if let Some(input) = input {
            actions.extend(s.core.handle(input));
        }
        for action in actions {
            self.execute(id, &mut s, action).await;
        }
    }

    async fn execute(&self, id: Uuid, s: &mut Slot, action: Act) {
        match action {
            Action::ForceWrite(Record::Commit) => {
                let store = self.inner.store.clone();
                let participants = s.participants.clone();
                force("forcing Commit", move || {
                    store.put_commit(id, &participants)
                })
                .await;
                tandem_kit::crash::point("kv.coordinator.after_commit_record");
            }
            Action::Write(Record::End) => {
                let store = self.inner.store.clone();
                lazy(id, "End", move || store.end(id)).await;
            }
            Action::ForceWrite(_) | Action::Write(_) => {}
            Action::Decide(o) => {
                let mut c = lock(&self.inner.counters);
                match o {
                    Outcome::Commit => c.commits += 1,
                    Outcome::Abort => c.aborts += 1,
                }
            }
            Action::Send { to, msg } => {
                let NodeId::Participant(p) = to else {
                    return;
                };
                let Some(&shard) = s.participants.get(usize::from(p)) else {
                    return;
                };
                let env = Envelope {
                    txn: id,
                    from: NodeId::Coordinator(0),
                    to,
                    msg,
                    participants: s.participants.clone(),
                };
                self.inner
                    .net
                    .send(&self.inner.shards[usize::from(shard)], env);
            }
            Action::SetTimer(t) => {
                let (c, delay) = (self.clone(), self.inner.timing.of(&t));
                s.timers.arm(t, delay, |t, g| c.fire(id, t, g));
            }
            Action::CancelTimer(t) => s.timers.cancel(&t),
            Action::Forget => {
                self.slots().remove(&id);
            }
        }
    }

    /// A timer fired: feed `Timeout` unless it was re-armed or cancelled meanwhile.
    fn fire(self, id: Uuid, t: Timer, generation: u64) -> Task {
        Box::pin(async move {
            if self.inner.slots.timer_live(id, &t, generation).await {
                self.deliver(id, Some(Input::Timeout(t))).await;
            }
        })
    }

    /// `GET /status`.
    pub fn status(&self) -> serde_json::Value {
        let c = lock(&self.inner.counters);
        serde_json::json!({
            "role": "coordinator",
            "shards": self.inner.shards,
            "durability": crate::store::durability(),
            "in_memory": self.slots().len(),
            "commits": c.commits,
            "aborts": c.aborts,
            "durable_commits": self.inner.store.durable_commits(),
        })
    }
}
