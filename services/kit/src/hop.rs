//! Message delays on the critical path, measured: a hop count carried on every protocol message
//! (the `Tandem-Hop` header), a Lamport clock of message delays.
//!
//! - Every server request runs inside a clock ([`serve`], called by the shared middleware
//!   [`crate::http::observe`]) that starts at the request's `Tandem-Hop` (0 when absent: a
//!   client's request); its answer carries the clock at the end plus one.
//! - Every outgoing protocol call goes through [`send`]: the request carries the clock plus
//!   one, and the answer's `Tandem-Hop` moves the clock forward to it (never back).
//! - A task that works for the request (a transaction's coordinator, a saga's run) is started
//!   with [`spawn`]: it shares the clock of the task that started it, so the answers any of
//!   them receive advance the one clock of the transaction. A task that sends one message the
//!   starter just decided (a coordinator's parallel sends) is started with [`spawn_send`]: it
//!   shares the clock too, but its request carries the count of the moment it was decided,
//!   however late the runtime runs it.
//! - A message handed from one task to another inside a process (an acceptor's bundle
//!   delivered to the leader's loop) travels as [`Carried`]: opened, it advances the receiver.
//!
//! A clock started by a client's request (no `Tandem-Hop`) or by a background task is a *root*:
//! when its last holder ends, its value — the longest chain of message delays from that request
//! to the last answer any of its tasks received — is counted in [`crate::stats::critical_path`]
//! (`GET /stats` → `critical_paths`), if any message was sent at all. A clock is per process:
//! merging with `max` may count a concurrent branch as the critical one, never less than the
//! longest chain. The choreographed saga carries the same count in its events
//! ([`crate::choreo::event::Event::hop`]).
//!
//! A protocol's delay formula describes a run where no message is lost and no timer fires. A
//! clock whose sends failed (a transport error or a timeout in [`send`]) or whose holder saw a
//! timer fire ([`disturbed`]: the coordinators' timers, a retried prepare) took another path — a
//! resend after later answers moved the clock on costs two hops more — so its root is counted
//! apart ([`crate::stats::critical_path`]'s `disturbed`), never mixed into the failure-free
//! figures.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use axum::http::HeaderMap;

/// The header carrying the hop count.
pub const HEADER: &str = "tandem-hop";

struct Inner {
    hops: AtomicU32,
    root: bool,
    /// A message was lost or a timer fired on this clock's path.
    disturbed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let hops = *self.hops.get_mut();
        if self.root && hops > 0 {
            crate::stats::critical_path(hops, *self.disturbed.get_mut());
        }
    }
}

/// One clock: shared by the tasks working for one request (or one background run).
#[derive(Clone)]
pub struct Clock(Arc<Inner>);

impl Clock {
    fn new(hops: u32, root: bool) -> Clock {
        Clock(Arc::new(Inner {
            hops: AtomicU32::new(hops),
            root,
            disturbed: AtomicBool::new(false),
        }))
    }

    fn get(&self) -> u32 {
        self.0.hops.load(Ordering::Relaxed)
    }

    fn witness(&self, hops: u32) {
        self.0.hops.fetch_max(hops, Ordering::Relaxed);
    }
}

tokio::task_local! {
    static CLOCK: Clock;
    /// A send task's own count ([`spawn_send`]): the clock when its message was decided, then
    /// what its own answers carried.
    static PINNED: Cell<u32>;
}

fn current() -> Option<Clock> {
    CLOCK.try_with(Clock::clone).ok()
}

/// The current task's hop count (None outside any clock): a send task's own
/// ([`spawn_send`]), otherwise its clock's.
pub fn now() -> Option<u32> {
    PINNED
        .try_with(Cell::get)
        .ok()
        .or_else(|| current().map(|c| c.get()))
}

/// A message arrived carrying `hops`: the current clock (and a send task's own count) moves
/// forward to it.
pub fn witness(hops: u32) {
    if let Some(c) = current() {
        c.witness(hops);
    }
    let _ = PINNED.try_with(|p| p.set(p.get().max(hops)));
}

/// A timer fired, or a message is sent again, for the current clock's request: its path is not
/// the failure-free one the formulas describe (counted apart when its root ends).
pub fn disturbed() {
    if let Some(c) = current() {
        c.0.disturbed.store(true, Ordering::Relaxed);
    }
}

/// The `Tandem-Hop` of `headers`, if present and a number.
pub fn of(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Run `fut` (a request's handler) in a clock starting at `incoming` (a root when None); also
/// returns the clock's value when it ended (its answer's hop is that plus one).
pub async fn serve<F: Future>(incoming: Option<u32>, fut: F) -> (F::Output, u32) {
    let clock = Clock::new(incoming.unwrap_or(0), incoming.is_none());
    let out = CLOCK.scope(clock.clone(), fut).await;
    let hops = clock.get();
    (out, hops)
}

/// `tokio::spawn`, the task sharing the current clock (a new root clock outside any).
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let clock = current().unwrap_or_else(|| Clock::new(0, true));
    tokio::spawn(CLOCK.scope(clock, fut))
}

/// Spawn a task that sends a message the current task decided to send now (with its answer
/// and any retries): it shares the clock, so its answers advance the transaction's, but its
/// requests carry the count of **this** moment — not of whenever the runtime gets to run it.
/// With [`spawn`], a send task that ran after another participant's answer had moved the
/// shared clock on stamped its message two hops later than the decision it carries (CI saw a
/// 3PC checkout measure 10 delays, not 8, on a loaded machine).
pub fn spawn_send<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let clock = current().unwrap_or_else(|| Clock::new(0, true));
    let at = now().unwrap_or(0);
    tokio::spawn(CLOCK.scope(clock, PINNED.scope(Cell::new(at), fut)))
}

/// The hop an outgoing request carries: the clock plus one (1 outside any clock).
pub fn outgoing() -> u32 {
    now().unwrap_or(0).saturating_add(1)
}

/// Send a protocol request with its `Tandem-Hop`; its answer's `Tandem-Hop` advances the clock.
/// A request that got no answer (transport error, timeout) marks the clock [`disturbed`].
pub async fn send(req: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
    let resp = req
        .header(HEADER, outgoing())
        .send()
        .await
        .inspect_err(|_| disturbed())?;
    if let Some(h) = of(resp.headers()) {
        witness(h);
    }
    Ok(resp)
}

/// A value handed between tasks with the hop count of the moment it was sent.
#[derive(Debug)]
pub struct Carried<T> {
    hops: Option<u32>,
    value: T,
}

/// Carry `value` to another task with the current hop count.
pub fn carry<T>(value: T) -> Carried<T> {
    Carried { hops: now(), value }
}

impl<T> Carried<T> {
    /// The value; the receiving task's clock moves forward to the sender's.
    pub fn open(self) -> T {
        if let Some(h) = self.hops {
            witness(h);
        }
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(hops: u32) -> u64 {
        crate::stats::critical_paths()
            .get(&hops)
            .copied()
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn a_request_s_tasks_share_one_clock_and_a_root_counts_its_longest_chain() {
        // A participant's request at hop 3 that sends nothing answers at 4; not a root.
        let ((), end) = serve(Some(3), async {}).await;
        assert_eq!(end, 3);
        // A client's request (a root) whose spawned task hears an answer at hop 2, then
        // another at 4: the clock ends at 4, and a root counts it once it is dropped.
        let before = recorded(4_000_017);
        let ((), end) = serve(None, async {
            assert_eq!(outgoing(), 1);
            spawn(async {
                witness(2);
                assert_eq!(outgoing(), 3);
                let c = carry("bundle");
                witness(4_000_017);
                c
            })
            .await
            .unwrap()
            .open();
            // Never back: a message carried at 3 does not lower the clock.
            carry(()).open();
            witness(1);
        })
        .await;
        assert_eq!(end, 4_000_017);
        assert_eq!(recorded(4_000_017), before + 1);
        // Outside any clock: a request carries 1, and nothing is counted.
        assert_eq!(now(), None);
        assert_eq!(outgoing(), 1);
    }

    #[tokio::test]
    async fn a_send_task_stamps_the_hop_of_its_decision_however_late_it_runs() {
        let ((), end) = serve(Some(4), async {
            // Decided at 4: the task runs only after another answer (at 6) moved the clock.
            let (go, wait) = tokio::sync::oneshot::channel::<()>();
            let task = spawn_send(async move {
                wait.await.unwrap();
                let first = outgoing();
                witness(9);
                (first, outgoing())
            });
            witness(6);
            go.send(()).unwrap();
            assert_eq!(task.await.unwrap(), (5, 10));
            // Its answer advanced the shared clock too.
            assert_eq!(now(), Some(9));
            assert_eq!(outgoing(), 10);
        })
        .await;
        assert_eq!(end, 9);
    }

    #[tokio::test]
    async fn a_path_with_a_lost_message_or_a_fired_timer_is_counted_apart() {
        let apart_of = |hops| {
            crate::stats::critical_paths_disturbed()
                .get(&hops)
                .copied()
                .unwrap_or(0)
        };
        let (clean, apart) = (recorded(3_000_011), apart_of(3_000_011));
        // A timer fired in a task of the request: the root is counted apart.
        serve(None, async {
            spawn(async {
                witness(3_000_011);
                disturbed();
            })
            .await
            .unwrap();
        })
        .await;
        assert_eq!(
            (recorded(3_000_011), apart_of(3_000_011)),
            (clean, apart + 1)
        );
        // A send that got no answer (nothing listens on port 1) marks it too.
        let (clean, apart) = (recorded(3_000_013), apart_of(3_000_013));
        serve(None, async {
            witness(3_000_012);
            let http = reqwest::Client::new();
            assert!(send(http.get("http://127.0.0.1:1/")).await.is_err());
            witness(3_000_013);
        })
        .await;
        assert_eq!(
            (recorded(3_000_013), apart_of(3_000_013)),
            (clean, apart + 1)
        );
        // The failure-free path is not.
        let clean = recorded(3_000_015);
        serve(None, async { witness(3_000_015) }).await;
        assert_eq!(recorded(3_000_015), clean + 1);
    }

    #[tokio::test]
    async fn a_root_that_sent_nothing_is_not_counted_and_headers_parse() {
        let before = crate::stats::critical_paths().get(&0).copied();
        let ((), end) = serve(None, async {}).await;
        assert_eq!(end, 0);
        assert_eq!(crate::stats::critical_paths().get(&0).copied(), before);
        let mut h = HeaderMap::new();
        assert_eq!(of(&h), None);
        h.insert(HEADER, "7".parse().unwrap());
        assert_eq!(of(&h), Some(7));
        h.insert(HEADER, "seven".parse().unwrap());
        assert_eq!(of(&h), None);
    }
}
