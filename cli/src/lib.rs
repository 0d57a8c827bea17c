//! The `tandem` command line, as a library so the end-to-end tests reuse it.
//!
//! - [`launch`]: the one launcher of the checkout stack — database names, ports, the
//!   environment of the real binaries (`launch::procs`), the whole stack in this process
//!   (`launch::stack`); used by `tandem up`, `tandem demo`, `tandem bench` and the tests.
//! - [`bench`]: `tandem bench`, throughput and latency against the commit ceiling and the
//!   direct baseline (docs/benchmarks.md); one module per workload under `bench::workloads`.
//! - [`choreo`]: `tandem choreo show ORDER | demo`, the choreographed checkout.
//! - [`client`]: a small HTTP client for the orchestrator and the services' audit endpoints.
//! - [`commands`]: `tandem up` and `tandem demo`.
//! - [`db`]: `tandem db provision`, the least-privilege Postgres roles and databases.
//! - [`demo`]: the checkout demo's scenarios, their expected outcomes and the timeline printer.
//! - [`saga`]: `tandem saga list | show | cancel | retry | resume` against a running orchestrator.
//! - `commit` (in the binary): `tandem commit compare` (the atomic-commit protocol comparison),
//!   `demo 2pc-blocking` / `demo paxos` / `demo 3pc-unblocks` / `demo 3pc-partition` (the
//!   protocols on the real processes), `resolve` (an operator's heuristic decision).
//! - [`paxos_demo`], [`three_pc_demo`], [`three_pc_partition_demo`]: the scripted demos of Paxos
//!   Commit, of 3PC beside 2PC, and of 3PC split by a partition, over the real binaries (the
//!   end-to-end tests run them too).

pub mod bench;
pub mod choreo;
pub mod client;
pub mod commands;
pub mod db;
pub mod demo;
pub mod launch;
pub mod paxos_demo;
pub mod saga;
pub mod three_pc_demo;
pub mod three_pc_partition_demo;
