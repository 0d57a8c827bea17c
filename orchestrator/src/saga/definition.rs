//! Saga definitions are data. See `definitions/checkout.json` for the shipped example and
//! `docs/sagas.md` for the format.
//!
//! A definition is immutable once loaded: its version is the SHA-256 of its canonical JSON
//! (object keys sorted), so the same text always yields the same version and any change yields a
//! new one.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A parsed, validated saga definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// JSON Pointer into the saga input naming the business key (checkout: `/order_id`).
    #[serde(default)]
    pub business_key: Option<String>,
    /// JSON Schema (draft 2020-12) the input must satisfy.
    #[serde(default)]
    pub input_schema: Option<Value>,
    /// Default policy for every step; a step's own `policy` fields override it field by field.
    #[serde(default)]
    pub policy: Policy,
    pub steps: Vec<StepDef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDef {
    /// Unique within the definition; `[a-z0-9_]+` (it appears in idempotency keys).
    pub name: String,
    pub action: CallSpec,
    /// `None`: the step needs no compensation (e.g. a read).
    #[serde(default)]
    pub compensation: Option<CallSpec>,
    /// Overrides of the definition's policy (after `Definition::parse`, fully resolved).
    #[serde(default)]
    pub policy: Option<Policy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallSpec {
    /// Service name, resolved to a base URL by the orchestrator's configuration.
    pub service: String,
    /// HTTP method, upper case.
    pub method: String,
    /// Path beginning with `/`.
    pub path: String,
    /// Body template: any JSON; an object `{"$from": "<JSON Pointer>"}` is replaced by the value
    /// the pointer selects in the context `{"saga": {"id"}, "input": ..., "steps": {name: output}}`.
    #[serde(default)]
    pub body: Value,
}

/// Retry / timeout policy. All durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Per-call timeout; a timeout counts as a transient failure.
    pub timeout_ms: u64,
    /// Attempts of an action (first send included) before the saga compensates.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Interval between resends while a service answers 425.
    pub poll_interval_ms: u64,
    /// A step answering 425 is given up (counted as a failed attempt) this long after its first send.
    pub deadline_ms: u64,
    /// Attempts of a compensation before the saga is parked as `failed`.
    pub compensation_max_attempts: u32,
    /// Cap applied to a service's `Retry-After`.
    pub max_retry_after_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Backoff {
    pub initial_ms: u64,
    pub multiplier: f64,
    pub max_ms: u64,
    /// Fraction in [0, 1]: the delay is scaled by a factor drawn from [1 - jitter, 1 + jitter].
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial_ms: 100, multiplier: 2.0, max_ms: 5_000, jitter: 0.2 }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            timeout_ms: 5_000,
            max_attempts: 5,
            backoff: Backoff::default(),
            poll_interval_ms: 250,
            deadline_ms: 30_000,
            compensation_max_attempts: 30,
            max_retry_after_ms: 30_000,
        }
    }
}

/// One problem with an input or a definition, located by JSON Pointer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldError {
    /// JSON Pointer to the offending field (`""` for the document itself).
    pub pointer: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DefinitionError {
    #[error("invalid definition: {0:?}")]
    Invalid(Vec<FieldError>),
}

impl Definition {
    /// Parse and validate a definition document (unknown fields rejected, step names unique and
    /// well-formed, methods/paths sane, the input schema compiles, policy values in range), and
    /// resolve each step's effective policy.
    pub fn parse(_doc: &Value) -> Result<Definition, DefinitionError> {
        todo!()
    }

    /// Content hash of the canonical JSON of the *document* this definition was parsed from
    /// (hex SHA-256, 64 chars).
    pub fn version_of(_doc: &Value) -> String {
        todo!()
    }

    /// Validate a saga input against the input schema. Errors name fields by JSON Pointer.
    pub fn validate_input(&self, _input: &Value) -> Result<(), Vec<FieldError>> {
        todo!()
    }

    /// The business key selected from the input, if the definition names one (strings as is,
    /// other scalars by their JSON text).
    pub fn business_key(&self, _input: &Value) -> Option<String> {
        todo!()
    }

    /// The step's effective policy.
    pub fn policy(&self, _step: usize) -> &Policy {
        todo!()
    }
}

/// Render a body template against a context. Missing pointers are an error naming the pointer.
pub fn render(_template: &Value, _ctx: &Value) -> Result<Value, String> {
    todo!()
}
