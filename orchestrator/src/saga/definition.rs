//! Saga definitions are data. See `definitions/checkout.json` for the shipped example and
//! `docs/sagas.md` for the format.
//!
//! A definition is immutable once loaded: its version is the SHA-256 of its canonical JSON
//! (object keys sorted), so the same text always yields the same version and any change yields a
//! new one.
//!
//! [`Definition::parse`] walks the document by hand rather than through `serde` alone, so that
//! every problem is reported with a JSON Pointer into the document (`/steps/1/action/method`,
//! `/policy/backoff/jitter` …) and all problems are reported at once.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A parsed, validated saga definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// `input_schema` compiled once by [`Definition::parse`] (compiling it per saga was the
    /// hottest spot of `POST /sagas`). Not part of the document.
    #[serde(skip)]
    pub compiled_schema: CompiledSchema,
}

/// A compiled input schema, shared by every saga of the definition. Two definitions compare
/// equal whatever their compiled schemas (it is derived from `input_schema`).
#[derive(Clone, Default)]
pub struct CompiledSchema(Option<std::sync::Arc<jsonschema::Validator>>);

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "CompiledSchema(compiled)"
        } else {
            "CompiledSchema(none)"
        })
    }
}

impl PartialEq for CompiledSchema {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
#[serde(default, deny_unknown_fields)]
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
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    pub initial_ms: u64,
    pub multiplier: f64,
    pub max_ms: u64,
    /// Fraction in [0, 1]: the delay is scaled by a factor drawn from [1 - jitter, 1 + jitter].
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 100,
            multiplier: 2.0,
            max_ms: 5_000,
            jitter: 0.2,
        }
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

/// Upper bound of every duration in a policy (30 days): keeps time arithmetic far from overflow.
pub const MAX_DURATION_MS: u64 = 30 * 24 * 3600 * 1000;
/// Upper bound of `max_attempts` / `compensation_max_attempts`.
pub const MAX_ATTEMPTS: u32 = 1_000_000;
/// Longest step name (it goes into idempotency keys, which services accept up to 255 chars).
pub const MAX_STEP_NAME: usize = 64;
/// Longest definition name.
pub const MAX_DEFINITION_NAME: usize = 128;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Escape one reference token of a JSON Pointer (RFC 6901: `~` → `~0`, `/` → `~1`).
pub fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Append a token to a pointer.
fn join(pointer: &str, token: &str) -> String {
    format!("{pointer}/{}", escape_token(token))
}

/// Split a JSON Pointer into unescaped tokens; `None` if it is not a valid pointer (must be empty
/// or start with `/`; `~` only as `~0` / `~1`).
pub fn pointer_tokens(pointer: &str) -> Option<Vec<String>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    let rest = pointer.strip_prefix('/')?;
    rest.split('/')
        .map(|raw| {
            let mut out = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return None,
                    }
                } else {
                    out.push(c);
                }
            }
            Some(out)
        })
        .collect()
}

fn is_step_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_STEP_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn is_definition_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_DEFINITION_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Collects problems while walking the document.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, pointer: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            pointer: pointer.into(),
            message: message.into(),
        });
    }

    /// `value` must be an object whose keys are all in `allowed`.
    fn object<'v>(
        &mut self,
        value: &'v Value,
        pointer: &str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Some(map) = value.as_object() else {
            self.push(
                pointer,
                format!("must be an object, found {}", kind_of(value)),
            );
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                self.push(
                    join(pointer, key),
                    format!(
                        "unknown field `{key}`; expected one of: {}",
                        allowed.join(", ")
                    ),
                );
            }
        }
        Some(map)
    }

    /// Deserialize `map[key]` if present (`Ok(None)` if absent; `None` also on error, recorded).
    fn field<T: DeserializeOwned>(
        &mut self,
        map: &Map<String, Value>,
        pointer: &str,
        key: &str,
    ) -> Option<T> {
        let value = map.get(key)?;
        match T::deserialize(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(join(pointer, key), format!("invalid value: {e}"));
                None
            }
        }
    }

    /// Like [`Errors::field`] but the field must be present.
    fn required<T: DeserializeOwned>(
        &mut self,
        map: &Map<String, Value>,
        pointer: &str,
        key: &str,
    ) -> Option<T> {
        if !map.contains_key(key) {
            self.push(
                join(pointer, key),
                format!("missing required field `{key}`"),
            );
            return None;
        }
        self.field(map, pointer, key)
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const POLICY_FIELDS: [&str; 7] = [
    "timeout_ms",
    "max_attempts",
    "backoff",
    "poll_interval_ms",
    "deadline_ms",
    "compensation_max_attempts",
    "max_retry_after_ms",
];
const BACKOFF_FIELDS: [&str; 4] = ["initial_ms", "multiplier", "max_ms", "jitter"];

/// Apply the fields present in `value` (a possibly partial policy object) over `base`, checking
/// types and ranges. Range checks are made on the merged result, reported at the field's pointer
/// in this document when the field is set here.
fn merge_policy(
    base: &Policy,
    value: &Value,
    pointer: &str,
    report_inherited: bool,
    errs: &mut Errors,
) -> Policy {
    let mut p = base.clone();
    let Some(map) = errs.object(value, pointer, &POLICY_FIELDS) else {
        return p;
    };
    macro_rules! set {
        ($field:ident) => {
            if let Some(v) = errs.field(map, pointer, stringify!($field)) {
                p.$field = v;
            }
        };
    }
    set!(timeout_ms);
    set!(max_attempts);
    set!(poll_interval_ms);
    set!(deadline_ms);
    set!(compensation_max_attempts);
    set!(max_retry_after_ms);
    let backoff_ptr = join(pointer, "backoff");
    if let Some(b) = map.get("backoff")
        && let Some(bmap) = errs.object(b, &backoff_ptr, &BACKOFF_FIELDS)
    {
        macro_rules! set_b {
            ($field:ident) => {
                if let Some(v) = errs.field(bmap, &backoff_ptr, stringify!($field)) {
                    p.backoff.$field = v;
                }
            };
        }
        set_b!(initial_ms);
        set_b!(multiplier);
        set_b!(max_ms);
        set_b!(jitter);
    }

    PolicyFields {
        map,
        pointer,
        backoff_ptr,
        report_inherited,
    }
    .check(&p, errs);
    p
}

/// Where the fields of one policy object are, for reporting range problems.
struct PolicyFields<'a> {
    map: &'a serde_json::Map<String, Value>,
    pointer: &'a str,
    backoff_ptr: String,
    /// Report a problem of an inherited value at the policy itself (the definition's own
    /// policy); a step override leaves that to the definition's policy.
    report_inherited: bool,
}

impl PolicyFields<'_> {
    fn sets_backoff(&self, key: &str) -> bool {
        self.map
            .get("backoff")
            .and_then(Value::as_object)
            .is_some_and(|b| b.contains_key(key))
    }

    /// Where to report a problem of `key`: at the field when this object sets it.
    fn at(&self, key: &str) -> Option<String> {
        if self.map.contains_key(key) {
            Some(join(self.pointer, key))
        } else {
            self.report_inherited.then(|| self.pointer.to_string())
        }
    }

    fn at_b(&self, key: &str) -> Option<String> {
        if self.sets_backoff(key) {
            Some(join(&self.backoff_ptr, key))
        } else {
            self.report_inherited.then(|| self.pointer.to_string())
        }
    }

    /// Range checks on the merged policy `p`.
    fn check(&self, p: &Policy, errs: &mut Errors) {
        let durations = [
            (self.at("timeout_ms"), "timeout_ms", p.timeout_ms),
            (
                self.at("poll_interval_ms"),
                "poll_interval_ms",
                p.poll_interval_ms,
            ),
            (self.at("deadline_ms"), "deadline_ms", p.deadline_ms),
            (
                self.at("max_retry_after_ms"),
                "max_retry_after_ms",
                p.max_retry_after_ms,
            ),
            (
                self.at_b("initial_ms"),
                "backoff.initial_ms",
                p.backoff.initial_ms,
            ),
            (self.at_b("max_ms"), "backoff.max_ms", p.backoff.max_ms),
        ];
        for (ptr, name, v) in durations {
            if let Some(ptr) = ptr
                && (v == 0 || v > MAX_DURATION_MS)
            {
                errs.push(
                    ptr,
                    format!("{name} must be between 1 and {MAX_DURATION_MS} ms, got {v}"),
                );
            }
        }
        for (key, v) in [
            ("max_attempts", p.max_attempts),
            ("compensation_max_attempts", p.compensation_max_attempts),
        ] {
            if let Some(ptr) = self.at(key)
                && (v == 0 || v > MAX_ATTEMPTS)
            {
                errs.push(
                    ptr,
                    format!("{key} must be between 1 and {MAX_ATTEMPTS}, got {v}"),
                );
            }
        }
        self.check_backoff(p, errs);
    }

    /// Range checks of the merged backoff.
    fn check_backoff(&self, p: &Policy, errs: &mut Errors) {
        let cross = if self.sets_backoff("max_ms") || !self.sets_backoff("initial_ms") {
            self.at_b("max_ms")
        } else {
            self.at_b("initial_ms")
        };
        if let Some(ptr) = cross
            && p.backoff.max_ms < p.backoff.initial_ms
        {
            errs.push(
                ptr,
                format!(
                    "backoff.max_ms ({}) must be at least backoff.initial_ms ({})",
                    p.backoff.max_ms, p.backoff.initial_ms
                ),
            );
        }
        let factors = [
            (
                self.at_b("multiplier"),
                "backoff.multiplier",
                p.backoff.multiplier,
                1.0,
                100.0,
            ),
            (
                self.at_b("jitter"),
                "backoff.jitter",
                p.backoff.jitter,
                0.0,
                1.0,
            ),
        ];
        for (ptr, name, v, lo, hi) in factors {
            if let Some(ptr) = ptr
                && !(v.is_finite() && (lo..=hi).contains(&v))
            {
                errs.push(
                    ptr,
                    format!("{name} must be between {lo} and {hi}, got {v}"),
                );
            }
        }
    }
}

/// The id `{"$id": name}` stands for in run `run` (a saga or a transaction): a UUID (version 8)
/// from the first 16 bytes of SHA-256(`run` ":" `name`) — the same on every render, so it needs
/// no storage, and the same in sagas and transactions.
pub fn derived_id(run: &str, name: &str) -> uuid::Uuid {
    let digest = Sha256::digest(format!("{run}:{name}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Every `{"$from": "/steps/..."}` under `template` (at `pointer`): (where, the pointer read).
fn step_reads(template: &Value, pointer: &str, out: &mut Vec<(String, String)>) {
    match template {
        Value::Object(map) if map.len() == 1 && map.get("$from").is_some_and(Value::is_string) => {
            let from = map["$from"].as_str().unwrap_or_default();
            if from.starts_with("/steps") {
                out.push((pointer.to_string(), from.to_string()));
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                step_reads(v, &join(pointer, k), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                step_reads(v, &join(pointer, &i.to_string()), out);
            }
        }
        _ => {}
    }
}

/// Check every `{"$from": ...}` in a body template; `visible`: the steps whose output it may read.
fn check_template(template: &Value, pointer: &str, visible: &[String], errs: &mut Errors) {
    match template {
        Value::Object(map) if map.contains_key("$id") => {
            if map.len() != 1 {
                errs.push(pointer, "an object with `$id` must have no other field");
            }
            if !map["$id"].as_str().is_some_and(is_step_name) {
                errs.push(
                    join(pointer, "$id"),
                    format!("`$id` must name the id: 1 to {MAX_STEP_NAME} characters of [a-z0-9_]"),
                );
            }
        }
        Value::Object(map) if map.contains_key("$from") => {
            let from_ptr = join(pointer, "$from");
            if map.len() != 1 {
                errs.push(pointer, "an object with `$from` must have no other field");
            }
            let Some(p) = map["$from"].as_str() else {
                errs.push(from_ptr, "`$from` must be a string (a JSON Pointer)");
                return;
            };
            if let Err(msg) = check_from(p, visible) {
                errs.push(from_ptr, msg);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                check_template(v, &join(pointer, k), visible, errs);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_template(v, &join(pointer, &i.to_string()), visible, errs);
            }
        }
        _ => {}
    }
}

fn check_from(pointer: &str, visible: &[String]) -> Result<(), String> {
    let Some(tokens) = pointer_tokens(pointer) else {
        return Err(format!("`{pointer}` is not a valid JSON Pointer"));
    };
    match tokens.first().map(String::as_str) {
        Some("input") => Ok(()),
        Some("saga") => match tokens.get(1).map(String::as_str) {
            None | Some("id") if tokens.len() <= 2 => Ok(()),
            _ => Err(format!("`{pointer}`: the saga context only has `/saga/id`")),
        },
        Some("steps") => match tokens.get(1) {
            None => Err(format!(
                "`{pointer}` must name a step: /steps/<step name>/..."
            )),
            Some(name) if visible.contains(name) => Ok(()),
            Some(name) => Err(format!(
                "`{pointer}` reads step `{name}`, which is not an earlier step of this definition"
            )),
        },
        _ => Err(format!(
            "`{pointer}` must begin with /input, /steps/<earlier step> or /saga"
        )),
    }
}

fn parse_call(
    value: &Value,
    pointer: &str,
    visible: &[String],
    errs: &mut Errors,
) -> Option<CallSpec> {
    let map = errs.object(value, pointer, &["service", "method", "path", "body"])?;
    let service: Option<String> = errs.required(map, pointer, "service");
    let method: Option<String> = errs.required(map, pointer, "method");
    let path: Option<String> = errs.required(map, pointer, "path");
    let body = map.get("body").cloned().unwrap_or(Value::Null);
    if let Some(s) = &service
        && s.trim().is_empty()
    {
        errs.push(join(pointer, "service"), "service must not be empty");
    }
    if let Some(m) = &method
        && !METHODS.contains(&m.as_str())
    {
        errs.push(
            join(pointer, "method"),
            format!("method must be one of {}, got `{m}`", METHODS.join(", ")),
        );
    }
    if let Some(p) = &path
        && (!p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        errs.push(
            join(pointer, "path"),
            format!("path must begin with `/` and contain no whitespace, got `{p}`"),
        );
    }
    check_template(&body, &join(pointer, "body"), visible, errs);
    Some(CallSpec {
        service: service?,
        method: method?,
        path: path?,
        body,
    })
}

/// Write `value` as canonical JSON: object keys sorted (by their UTF-8 bytes), no whitespace.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Canonical JSON text of a value (sorted keys, no whitespace).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

/// The input schema (if any), compiled once.
fn parse_schema(
    map: &serde_json::Map<String, Value>,
    errs: &mut Errors,
) -> (Option<Value>, CompiledSchema) {
    match map.get("input_schema") {
        None | Some(Value::Null) => (None, CompiledSchema::default()),
        Some(schema) => {
            let compiled = match jsonschema::validator_for(schema) {
                Ok(v) => CompiledSchema(Some(std::sync::Arc::new(v))),
                Err(e) => {
                    let at = e.instance_path().as_str();
                    errs.push(
                        format!("/input_schema{at}"),
                        format!("input_schema does not compile: {e}"),
                    );
                    CompiledSchema::default()
                }
            };
            (Some(schema.clone()), compiled)
        }
    }
}

/// The `steps` array, each step's policy merged over the definition's `policy`.
fn parse_steps(
    map: &serde_json::Map<String, Value>,
    policy: &Policy,
    errs: &mut Errors,
) -> Vec<StepDef> {
    let mut steps = Vec::new();
    match map.get("steps") {
        None => errs.push("/steps", "missing required field `steps`"),
        Some(Value::Array(items)) if items.is_empty() => {
            errs.push("/steps", "a saga needs at least one step")
        }
        Some(Value::Array(items)) => {
            let mut names: Vec<String> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                steps.extend(parse_step(item, i, policy, &mut names, errs));
            }
        }
        Some(other) => errs.push(
            "/steps",
            format!("must be an array, found {}", kind_of(other)),
        ),
    }
    steps
}

/// Step `i`; `names`: the names of the steps before it (its name is added).
fn parse_step(
    item: &Value,
    i: usize,
    policy: &Policy,
    names: &mut Vec<String>,
    errs: &mut Errors,
) -> Option<StepDef> {
    let ptr = format!("/steps/{i}");
    let smap = errs.object(item, &ptr, &["name", "action", "compensation", "policy"])?;
    let sname: Option<String> = errs.required(smap, &ptr, "name");
    if let Some(n) = &sname {
        if !is_step_name(n) {
            errs.push(
                format!("{ptr}/name"),
                format!(
                    "step name must be 1 to {MAX_STEP_NAME} characters of [a-z0-9_], got `{n}`"
                ),
            );
        } else if names.contains(n) {
            errs.push(format!("{ptr}/name"), format!("duplicate step name `{n}`"));
        }
    }
    let action = match smap.get("action") {
        Some(v) => parse_call(v, &format!("{ptr}/action"), names, errs),
        None => {
            errs.push(format!("{ptr}/action"), "missing required field `action`");
            None
        }
    };
    // A compensation may also read its own step's output.
    let mut with_self = names.clone();
    with_self.extend(sname.clone());
    let compensation = match smap.get("compensation") {
        None | Some(Value::Null) => None,
        Some(v) => parse_call(v, &format!("{ptr}/compensation"), &with_self, errs),
    };
    let step_policy = match smap.get("policy") {
        None | Some(Value::Null) => policy.clone(),
        Some(v) => merge_policy(policy, v, &format!("{ptr}/policy"), false, errs),
    };
    if let Some(n) = &sname {
        names.push(n.clone());
    }
    Some(StepDef {
        name: sname?,
        action: action?,
        compensation,
        policy: Some(step_policy),
    })
}

impl Definition {
    /// Parse and validate a definition document (unknown fields rejected, step names unique and
    /// well-formed, methods/paths sane, the input schema compiles, policy values in range), and
    /// resolve each step's effective policy.
    pub fn parse(doc: &Value) -> Result<Definition, DefinitionError> {
        let mut errs = Errors::default();
        let Some(map) = errs.object(
            doc,
            "",
            &[
                "name",
                "description",
                "business_key",
                "input_schema",
                "policy",
                "steps",
            ],
        ) else {
            return Err(DefinitionError::Invalid(errs.0));
        };

        let name: Option<String> = errs.required(map, "", "name");
        if let Some(n) = &name
            && !is_definition_name(n)
        {
            errs.push(
                "/name",
                format!("name must be 1 to {MAX_DEFINITION_NAME} characters of [A-Za-z0-9_.-], got `{n}`"),
            );
        }
        let description: String = errs.field(map, "", "description").unwrap_or_default();

        let business_key: Option<String> = errs
            .field::<Option<String>>(map, "", "business_key")
            .flatten();
        if let Some(bk) = &business_key
            && (bk.is_empty() || pointer_tokens(bk).is_none())
        {
            errs.push("/business_key", format!("business_key must be a JSON Pointer into the input such as `/order_id`, got `{bk}`"));
        }

        let (input_schema, compiled_schema) = parse_schema(map, &mut errs);

        let policy = match map.get("policy") {
            Some(v) => merge_policy(&Policy::default(), v, "/policy", true, &mut errs),
            None => Policy::default(),
        };

        let steps = parse_steps(map, &policy, &mut errs);

        if !errs.0.is_empty() {
            return Err(DefinitionError::Invalid(errs.0));
        }
        Ok(Definition {
            name: name.expect("checked above"),
            description,
            business_key,
            input_schema,
            policy,
            steps,
            compiled_schema,
        })
    }

    /// Content hash of the canonical JSON of the *document* this definition was parsed from
    /// (hex SHA-256, 64 chars).
    pub fn version_of(doc: &Value) -> String {
        hex::encode(Sha256::digest(canonical_json(doc).as_bytes()))
    }

    /// Validate a saga input against the input schema. Errors name fields by JSON Pointer.
    ///
    /// The input must be a JSON object in any case; without a schema any object is accepted.
    pub fn validate_input(&self, input: &Value) -> Result<(), Vec<FieldError>> {
        if !input.is_object() {
            return Err(vec![FieldError {
                pointer: String::new(),
                message: format!(
                    "the saga input must be a JSON object, found {}",
                    kind_of(input)
                ),
            }]);
        }
        let Some(schema) = &self.input_schema else {
            return Ok(());
        };
        let compiled;
        let validator = match &self.compiled_schema.0 {
            Some(v) => v.as_ref(),
            None => match jsonschema::validator_for(schema) {
                Ok(v) => {
                    compiled = v;
                    &compiled
                }
                Err(e) => {
                    // `parse` compiled it already; only a hand-built Definition can get here.
                    return Err(vec![FieldError {
                        pointer: String::new(),
                        message: format!("the definition's input schema does not compile: {e}"),
                    }]);
                }
            },
        };
        let mut out: Vec<FieldError> = Vec::new();
        for error in validator.iter_errors(input) {
            let at = error.instance_path().as_str().to_string();
            match error.kind() {
                jsonschema::error::ValidationErrorKind::Required { property } => {
                    let prop = property
                        .as_str()
                        .map_or_else(|| property.to_string(), str::to_string);
                    out.push(FieldError {
                        pointer: join(&at, &prop),
                        message: format!("`{prop}` is required"),
                    });
                }
                jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                    for prop in unexpected {
                        out.push(FieldError {
                            pointer: join(&at, prop),
                            message: format!("unknown field `{prop}`"),
                        });
                    }
                }
                _ => out.push(FieldError {
                    pointer: at,
                    message: error.to_string(),
                }),
            }
        }
        if out.is_empty() { Ok(()) } else { Err(out) }
    }

    /// The business key selected from the input, if the definition names one (strings as is,
    /// other scalars by their JSON text; `null`, arrays and objects yield `None`).
    pub fn business_key(&self, input: &Value) -> Option<String> {
        match input.pointer(self.business_key.as_deref()?)? {
            Value::String(s) => Some(s.clone()),
            v @ (Value::Number(_) | Value::Bool(_)) => Some(v.to_string()),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }

    /// The step's effective policy (the definition's policy if the step has none resolved).
    pub fn policy(&self, step: usize) -> &Policy {
        self.steps[step].policy.as_ref().unwrap_or(&self.policy)
    }

    /// Index of the step named `name`.
    /// The body values that read another step's output (`{"$from": "/steps/..."}`), as
    /// (JSON Pointer into the definition, the pointer read). A commit protocol sends every
    /// Prepare in one round, so it refuses a definition that has any.
    pub fn step_output_reads(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            step_reads(&s.action.body, &format!("/steps/{i}/action/body"), &mut out);
            if let Some(c) = &s.compensation {
                step_reads(&c.body, &format!("/steps/{i}/compensation/body"), &mut out);
            }
        }
        out
    }

    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }
}

/// Render a body template against a context. Missing pointers are an error naming the pointer.
pub fn render(template: &Value, ctx: &Value) -> Result<Value, String> {
    match template {
        Value::Object(map) if map.len() == 1 && map.get("$id").is_some_and(Value::is_string) => {
            let run = ctx
                .pointer("/saga/id")
                .and_then(Value::as_str)
                .ok_or("`$id` needs the run's id (/saga/id) in the context")?;
            Ok(Value::String(
                derived_id(run, map["$id"].as_str().unwrap_or_default()).to_string(),
            ))
        }
        Value::Object(map) if map.len() == 1 && map.get("$from").is_some_and(Value::is_string) => {
            let pointer = map["$from"].as_str().unwrap_or_default();
            ctx.pointer(pointer)
                .cloned()
                .ok_or_else(|| format!("template pointer `{pointer}` selects nothing"))
        }
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| Ok((k.clone(), render(v, ctx)?)))
            .collect::<Result<Map<_, _>, String>>()
            .map(Value::Object),
        Value::Array(items) => items
            .iter()
            .map(|v| render(v, ctx))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        other => Ok(other.clone()),
    }
}
