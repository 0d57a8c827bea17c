//! The Rust client of Tandem's sharded transactional key-value store (`services/kv`), and the
//! tools that check it.
//!
//! - [`wire`]: the HTTP request / response bodies and limits shared with the server, and
//!   [`wire::shard_for`], the hash sharding every client and shard agrees on.
//! - [`client`]: [`Client`] and [`Txn`]: begin lazily on each shard a transaction touches,
//!   read / write / delete, commit (one phase on one shard, 2PC through the first participant
//!   otherwise), and [`Client::transaction`], a closure retried on conflict.
//! - [`history`]: the record of a concurrent run (every operation's invocation and result:
//!   ok, fail or unknown).
//! - [`checker`]: a Jepsen-Elle-style list-append checker: aborted reads (G1a), intermediate
//!   reads (G1b), dependency cycles (G0, G1c, G2), lost and incompatible writes.
//! - [`workload`]: the list-append and bank workloads that produce histories (used by the
//!   tests, `tandem kv bench` and the kill -9 runs).

pub mod checker;
pub mod client;
pub mod history;
pub mod wire;
pub mod workload;

pub use client::{Client, Error, Txn};
