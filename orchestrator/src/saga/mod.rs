//! The pure saga engine: no IO, no clock, no randomness of its own.
//!
//! - [`definition`]: saga definitions as data (JSON): steps, call specs, body templates
//!   (`{"$from": "/input/..."}` JSON Pointers), per-step policy, input schema, business key,
//!   content-hash versions.
//! - [`state`]: the persisted state of one saga (serialised as JSON into the store).
//! - [`engine`]: the transition function
//!   `transition(def, saga_id, input, state, event, now, rand) -> Transition`.
//! - [`classify`]: the step result protocol — a call's status, `Retry-After` and body to a
//!   [`engine::CallOutcome`] (an answer Postgres cannot store is a failed call).
//! - [`engine::admit`] / [`engine::Input::Operator`]: operators' actions (cancel, retry-now,
//!   resume) — inputs like any other, applied by the lease holder.
//! - `tests`: unit tests per rule and property tests (a simulator answering every call at random).
//!
//! The driver (`crate::driver`) persists every [`engine::Transition`] **before** it performs the
//! [`engine::Command`] the transition allows, and feeds the call's outcome back as
//! [`engine::Input::Result`].

pub mod classify;
pub mod definition;
pub mod engine;
pub mod state;

pub use classify::classify;
pub use definition::{
    Backoff, CallSpec, Definition, DefinitionError, FieldError, Policy, StepDef, render,
};
pub use engine::{
    Action, Admission, CallOutcome, Command, EventKind, EventRecord, Input, Refusal, Request,
    Transition, admit, backoff_delay, context, implied_command, initial_state, next_compensation,
    transition,
};
pub use state::{Phase, SagaState, SagaStatus, StepState, StepStatus};

#[cfg(test)]
mod tests;
