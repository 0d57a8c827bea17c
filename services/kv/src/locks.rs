//! The lock table of one shard: shared / exclusive locks per key, with **wait-die** deadlock
//! prevention. Pure (no IO, no async): the shard calls [`LockTable::acquire`] under its mutex
//! and, on [`Acquire::Wait`], waits for any release and asks again.
//!
//! Wait-die: every transaction has an age ([`TxKey`]: its priority — a begin timestamp the
//! client keeps across retries — then its id). A requester that conflicts only with *younger*
//! holders waits; one that conflicts with any *older* holder dies (its transaction aborts and
//! is retried by the client with its old age, so it eventually becomes the oldest and wins).
//! Every wait edge goes from older to younger, so no cycle of waits — no deadlock — can form.
//! A holder is never aborted by someone else's request: that is what lets a **prepared**
//! transaction keep its locks until it learns the outcome.

use std::collections::{BTreeSet, HashMap};

use uuid::Uuid;

/// A transaction's age and identity; smaller is older.
pub type TxKey = (u64, Uuid);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    Shared,
    Exclusive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    Granted,
    /// Conflicts only with younger holders: wait for a release, then ask again.
    Wait,
    /// Conflicts with an older holder: abort the requester.
    Die,
}

#[derive(Debug, Default)]
struct Entry {
    shared: BTreeSet<TxKey>,
    exclusive: Option<TxKey>,
}

#[derive(Debug, Default)]
pub struct LockTable {
    locks: HashMap<String, Entry>,
}

impl LockTable {
    /// Take `key` in `mode` for `tx` if compatible (re-entrant; shared upgrades to exclusive
    /// when `tx` is the only holder), else say whether to wait or die.
    pub fn acquire(&mut self, key: &str, tx: TxKey, mode: Mode) -> Acquire {
        let entry = self.locks.entry(key.to_string()).or_default();
        let conflicts: Vec<TxKey> = match mode {
            Mode::Shared => entry.exclusive.filter(|h| *h != tx).into_iter().collect(),
            Mode::Exclusive => entry
                .exclusive
                .iter()
                .chain(entry.shared.iter())
                .copied()
                .filter(|h| *h != tx)
                .collect(),
        };
        if conflicts.is_empty() {
            match mode {
                Mode::Shared if entry.exclusive != Some(tx) => {
                    entry.shared.insert(tx);
                }
                Mode::Shared => {}
                Mode::Exclusive => {
                    entry.shared.remove(&tx);
                    entry.exclusive = Some(tx);
                }
            }
            Acquire::Granted
        } else if conflicts.iter().all(|h| tx < *h) {
            Acquire::Wait
        } else {
            Acquire::Die
        }
    }

    /// Release `tx`'s lock on `key` (shared or exclusive).
    pub fn release(&mut self, key: &str, tx: TxKey) {
        if let Some(entry) = self.locks.get_mut(key) {
            entry.shared.remove(&tx);
            if entry.exclusive == Some(tx) {
                entry.exclusive = None;
            }
            if entry.shared.is_empty() && entry.exclusive.is_none() {
                self.locks.remove(key);
            }
        }
    }

    /// Keys with at least one holder.
    pub fn len(&self) -> usize {
        self.locks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }

    /// Who holds `key` exclusively (tests, status).
    pub fn exclusive_holder(&self, key: &str) -> Option<TxKey> {
        self.locks.get(key).and_then(|e| e.exclusive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(age: u64) -> TxKey {
        (age, Uuid::from_u128(u128::from(age)))
    }

    #[test]
    fn shared_locks_share_and_exclusive_excludes() {
        let mut t = LockTable::default();
        assert_eq!(t.acquire("k", tx(2), Mode::Shared), Acquire::Granted);
        assert_eq!(t.acquire("k", tx(3), Mode::Shared), Acquire::Granted);
        // older writer waits for younger readers; younger writer dies
        assert_eq!(t.acquire("k", tx(1), Mode::Exclusive), Acquire::Wait);
        assert_eq!(t.acquire("k", tx(4), Mode::Exclusive), Acquire::Die);
        // a reader that is one of two holders cannot upgrade past an older one
        assert_eq!(t.acquire("k", tx(3), Mode::Exclusive), Acquire::Die);
        t.release("k", tx(3));
        assert_eq!(
            t.acquire("k", tx(2), Mode::Exclusive),
            Acquire::Granted,
            "sole holder upgrades"
        );
        assert_eq!(t.exclusive_holder("k"), Some(tx(2)));
        assert_eq!(
            t.acquire("k", tx(2), Mode::Shared),
            Acquire::Granted,
            "re-entrant"
        );
        assert_eq!(t.acquire("k", tx(5), Mode::Shared), Acquire::Die);
        assert_eq!(t.acquire("k", tx(1), Mode::Shared), Acquire::Wait);
        t.release("k", tx(2));
        assert!(t.is_empty());
        assert_eq!(t.acquire("k", tx(5), Mode::Shared), Acquire::Granted);
    }

    #[test]
    fn waits_only_ever_go_from_older_to_younger() {
        // Exhaustive over small cases: whenever `Wait` is answered, the requester is older than
        // every conflicting holder — the invariant that rules out deadlock.
        for holder in 0..4u64 {
            for req in 0..4u64 {
                for (hm, rm) in [
                    (Mode::Shared, Mode::Exclusive),
                    (Mode::Exclusive, Mode::Shared),
                    (Mode::Exclusive, Mode::Exclusive),
                ] {
                    let mut t = LockTable::default();
                    t.acquire("k", tx(holder), hm);
                    let got = t.acquire("k", tx(req), rm);
                    let want = if holder == req {
                        Acquire::Granted
                    } else if req < holder {
                        Acquire::Wait
                    } else {
                        Acquire::Die
                    };
                    assert_eq!(got, want, "holder {holder} {hm:?}, requester {req} {rm:?}");
                }
            }
        }
    }
}
