//! The `tandem` command line, as a library so the end-to-end tests reuse it.
//!
//! - [`stack`]: start the whole checkout stack (orchestrator + inventory + payment + shipping)
//!   in one process, each on its own port and its own database (`tandem up`, `tandem demo`, tests).
//! - [`bench`]: `tandem bench`, throughput and latency against the commit ceiling and the
//!   direct baseline (docs/benchmarks.md).
//! - [`client`]: a small HTTP client for the orchestrator and the services' audit endpoints.
//! - [`demo`]: the checkout demo's scenarios, their expected outcomes and the timeline printer.
//! - `commit` (in the binary): `tandem commit compare`, the atomic-commit protocol comparison.

pub mod bench;
pub mod client;
pub mod commands;
pub mod demo;
pub mod stack;
