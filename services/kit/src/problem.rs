//! RFC 9457 `application/problem+json` responses: every rejection in Tandem, the framework's own
//! included, is one of these.
//!
//! `type` is `urn:tandem:problem:<slug>` (for example `urn:tandem:problem:hanging`); clients match
//! on the slug. Validation problems carry `errors: [{"pointer", "message"}]` naming each field by
//! JSON Pointer.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const CONTENT_TYPE: &str = "application/problem+json";
pub const TYPE_PREFIX: &str = "urn:tandem:problem:";

/// One invalid field, located by JSON Pointer into the request body (or `"/query/<name>"`,
/// `"/path/<name>"`, `"/header/<name>"` for other parts of the request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldIssue {
    pub pointer: String,
    pub message: String,
}

/// A problem detail. Build one with [`Problem::new`] or a shortcut, add detail, return it.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub status: StatusCode,
    pub slug: String,
    pub title: String,
    pub detail: Option<String>,
    pub errors: Vec<FieldIssue>,
    /// Extra members (e.g. `saga_id` of the saga a 409 names).
    pub extensions: Map<String, Value>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// What went wrong inside (never sent): logged when a 5xx is answered — not when it is
    /// built, because the barrier may replace it with a stored outcome.
    pub cause: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: impl Into<String>, title: impl Into<String>) -> Self {
        Problem {
            status,
            slug: slug.into(),
            title: title.into(),
            detail: None,
            errors: Vec::new(),
            extensions: Map::new(),
            retry_after: None,
            cause: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn field(mut self, pointer: impl Into<String>, message: impl Into<String>) -> Self {
        self.errors.push(FieldIssue {
            pointer: pointer.into(),
            message: message.into(),
        });
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_string(), value.into());
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 400: the request is malformed (bad JSON syntax, missing header …).
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request").detail(detail)
    }

    /// 422 with one invalid field.
    pub fn invalid(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        let pointer = pointer.into();
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
            "Invalid input",
        )
        .detail(format!("{}: {message}", display_pointer(&pointer)))
        .field(pointer, message)
    }

    /// 422 with several invalid fields.
    pub fn invalid_fields(issues: Vec<FieldIssue>) -> Self {
        let detail = issues
            .iter()
            .map(|i| format!("{}: {}", display_pointer(&i.pointer), i.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
            "Invalid input",
        )
        .detail(detail);
        p.errors = issues;
        p
    }

    /// The same problem with every field pointer moved under `prefix` (the body of an envelope,
    /// e.g. `/body`), the detail rewritten to match: a 422's detail names the fields, so it
    /// must name them where the client sent them. Problems without fields are unchanged.
    pub fn nested_under(self, prefix: &str) -> Self {
        if self.errors.is_empty() {
            return self;
        }
        let issues = self
            .errors
            .into_iter()
            .map(|i| FieldIssue {
                pointer: format!("{prefix}{}", i.pointer),
                message: i.message,
            })
            .collect();
        let mut p = Problem::invalid_fields(issues);
        p.status = self.status;
        p.slug = self.slug;
        p.title = self.title;
        p.extensions = self.extensions;
        p.retry_after = self.retry_after;
        p.cause = self.cause;
        p
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found").detail(detail)
    }

    /// 409 business failure / conflict with a slug of its own.
    pub fn conflict(slug: impl Into<String>, title: impl Into<String>) -> Self {
        Problem::new(StatusCode::CONFLICT, slug, title)
    }

    /// 500 without leaking internals; the cause is logged (at ERROR) if this is answered.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let mut p = Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
            .detail("the server failed to handle the request; it is safe to retry with the same Idempotency-Key");
        p.cause = Some(cause.to_string());
        p
    }

    /// 503: a dependency (the database) is unavailable; retry later. The cause is logged (at
    /// WARN) if this is answered.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        let mut p = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
        )
        .detail("a dependency is unavailable; retry later with the same Idempotency-Key")
        .retry_after(1);
        p.cause = Some(cause.to_string());
        p
    }

    /// Log the cause of a 5xx that is being answered.
    fn log_cause(&self) {
        let Some(cause) = &self.cause else { return };
        if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(%cause, slug = %self.slug, "internal error");
        } else {
            tracing::warn!(%cause, slug = %self.slug, "{}", self.title);
        }
    }

    /// The `type` URI.
    pub fn type_uri(&self) -> String {
        format!("{TYPE_PREFIX}{}", self.slug)
    }

    pub fn to_json(&self) -> Value {
        let mut body = Map::new();
        body.insert("type".into(), Value::String(self.type_uri()));
        body.insert("title".into(), Value::String(self.title.clone()));
        body.insert("status".into(), Value::from(self.status.as_u16()));
        if let Some(d) = &self.detail {
            body.insert("detail".into(), Value::String(d.clone()));
        }
        if !self.errors.is_empty() {
            body.insert(
                "errors".into(),
                serde_json::to_value(&self.errors).unwrap_or(Value::Null),
            );
        }
        for (k, v) in &self.extensions {
            body.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Value::Object(body)
    }
}

/// Collects field problems while validating a request; a non-empty list becomes one 422.
#[derive(Debug, Default)]
pub struct Issues(pub Vec<FieldIssue>);

impl Issues {
    pub fn add(&mut self, pointer: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldIssue {
            pointer: pointer.into(),
            message: message.into(),
        });
    }

    /// A required text field: not empty, at most `max` characters, no control characters.
    pub fn text(&mut self, pointer: &str, value: &str, max: usize) {
        if value.is_empty() {
            self.add(pointer, "must not be empty");
        } else if value.chars().count() > max {
            self.add(pointer, format!("must be at most {max} characters"));
        } else if value.chars().any(char::is_control) {
            self.add(pointer, "must not contain control characters");
        }
    }

    pub fn finish(self) -> Result<(), Issues> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl From<Issues> for Problem {
    fn from(issues: Issues) -> Self {
        Problem::invalid_fields(issues.0)
    }
}

fn display_pointer(pointer: &str) -> &str {
    if pointer.is_empty() {
        "(body)"
    } else {
        pointer
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.title)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        self.log_cause();
        let body = serde_json::to_vec(&self.to_json()).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Database errors: connection trouble, a lock wait past `lock_timeout` (or a `NOWAIT` lock
/// that is held), a deadlock or a serialization failure are 503 (retry); so is SQLite's
/// "database is locked" (`SQLITE_BUSY` and its extended codes, `SQLITE_LOCKED`: the busy
/// timeout ran out behind another writer). Anything else 500.
impl From<sqlx::Error> for Problem {
    fn from(e: sqlx::Error) -> Self {
        let code = e.as_database_error().and_then(|d| d.code());
        if let Some(code @ ("55P03" | "40P01" | "40001" | "5" | "6" | "261" | "517" | "773")) =
            code.as_deref()
        {
            let slug = if matches!(code, "55P03" | "5" | "6" | "261" | "517" | "773") {
                "lock-timeout"
            } else {
                "conflict-retry"
            };
            let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, slug, "Busy: retry")
                .detail("the data is locked by another transaction (possibly a prepared one); retry later")
                .retry_after(1);
            p.cause = Some(e.to_string());
            return p;
        }
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Problem::unavailable(e),
            _ => Problem::internal(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_type_status_errors_and_extensions() {
        let p = Problem::invalid("/items/0/quantity", "must be at least 1").with("saga_id", "abc");
        let v = p.to_json();
        assert_eq!(v["type"], "urn:tandem:problem:invalid-input");
        assert_eq!(v["status"], 422);
        assert_eq!(v["errors"][0]["pointer"], "/items/0/quantity");
        assert_eq!(v["saga_id"], "abc");
        assert!(v["detail"].as_str().unwrap().contains("/items/0/quantity"));
    }

    #[test]
    fn nested_pointers_and_detail_agree() {
        let p = Problem::invalid_fields(vec![
            FieldIssue {
                pointer: "/items".into(),
                message: "must not be empty".into(),
            },
            FieldIssue {
                pointer: String::new(),
                message: "must be an object".into(),
            },
        ])
        .with("hint", "x")
        .nested_under("/body");
        let v = p.to_json();
        assert_eq!(v["status"], 422);
        assert_eq!(v["errors"][0]["pointer"], "/body/items");
        assert_eq!(v["errors"][1]["pointer"], "/body");
        assert_eq!(
            v["detail"],
            "/body/items: must not be empty; /body: must be an object"
        );
        assert_eq!(v["hint"], "x");
        let plain = Problem::not_found("no such thing").nested_under("/body");
        assert_eq!(plain.detail.as_deref(), Some("no such thing"));
    }
}
