//! The record of a concurrent run, as Jepsen keeps it: one [`Op`] per transaction attempt,
//! with its micro-operations, when it was invoked and completed, and its result — `Ok`
//! (committed), `Fail` (definitely not committed) or `Info` (unknown: the answer was lost).
//!
//! Reads of an `Ok` operation carry the list they saw; reads of other operations carry none
//! (nothing they saw can be trusted).

use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One micro-operation of a list-append transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mop {
    /// Append the (globally unique) `value` to the list at `key`.
    Append { key: String, value: u64 },
    /// Read the list at `key`; `None` until the operation completed `Ok`.
    Read {
        key: String,
        value: Option<Vec<u64>>,
    },
}

impl Mop {
    pub fn key(&self) -> &str {
        match self {
            Mop::Append { key, .. } | Mop::Read { key, .. } => key,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Ok,
    Fail,
    Info,
}

/// One transaction attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history (set by [`History::push`]).
    pub index: usize,
    /// The client (Jepsen's "process") that ran it.
    pub process: usize,
    pub invoke_us: u64,
    pub complete_us: u64,
    pub mops: Vec<Mop>,
    pub result: OpResult,
    /// Why it failed or is unknown.
    pub error: Option<String>,
}

/// A history being recorded by many clients at once.
#[derive(Debug)]
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for History {
    fn default() -> Self {
        History {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }
}

impl History {
    /// Microseconds since the history began.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Append a completed operation; its `index` is set here.
    pub fn push(&self, mut op: Op) {
        let mut ops = self
            .ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        op.index = ops.len();
        ops.push(op);
    }

    /// The operations recorded so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
