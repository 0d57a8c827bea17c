//! The step result protocol (as DTM's), as a pure function of what a call answered: 2xx
//! success, 409 business failure, 425 in progress, 429/503 throttled (honour `Retry-After`),
//! anything else an error to retry. The driver performs the call and feeds the answer here.
//!
//! An answer Postgres cannot store (a string or key with U+0000) is never passed on as it is:
//! a 2xx carrying one is a failed call (an error to retry, then compensate, as for any bad
//! answer); any other status keeps its meaning, with the body replaced by a note saying why.

use std::time::Duration;

use serde_json::{Value, json};

use super::engine::CallOutcome;
use crate::text::find_nul;

/// Classify one answer: its status, its `Retry-After` header (if any) and its raw body (JSON,
/// or kept as a string when it is not JSON; empty is `null`).
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8]) -> CallOutcome {
    let mut body = parse_body(body);
    let unstorable = find_nul(&body, "").map(|at| {
        json!({
            "detail": format!(
                "the answer cannot be stored: it contains U+0000 (NUL) at \"{}\", which \
                 Postgres refuses in text and jsonb",
                at.replace('\0', "\\u0000")
            )
        })
    });
    if let Some(note) = unstorable {
        if (200..=299).contains(&status) {
            return CallOutcome::Error { status, body: note };
        }
        body = note;
    }
    match status {
        200..=299 => CallOutcome::Success { status, body },
        409 => CallOutcome::BusinessFailure { status, body },
        425 => CallOutcome::InProgress,
        429 | 503 => CallOutcome::Throttled {
            status,
            retry_after: retry_after.and_then(parse_retry_after),
        },
        _ => CallOutcome::Error { status, body },
    }
}

fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// `Retry-After` as seconds (HTTP-date form is rare between services; treated as absent).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_status_codes() {
        assert!(matches!(
            classify(201, None, b""),
            CallOutcome::Success { .. }
        ));
        assert!(matches!(
            classify(409, None, b"{}"),
            CallOutcome::BusinessFailure { .. }
        ));
        assert!(matches!(classify(425, None, b""), CallOutcome::InProgress));
        assert_eq!(
            classify(503, Some("2"), b""),
            CallOutcome::Throttled {
                status: 503,
                retry_after: Some(Duration::from_secs(2))
            }
        );
        assert!(matches!(
            classify(500, None, b"oops"),
            CallOutcome::Error {
                status: 500,
                body: Value::String(_)
            }
        ));
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn an_answer_postgres_cannot_store_is_a_failed_call() {
        let out = classify(200, None, br#"{"id": "a\u0000b"}"#);
        let CallOutcome::Error { status: 200, body } = out else {
            panic!("a 2xx with NUL must be an error: {out:?}")
        };
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains("U+0000") && detail.contains("/id"),
            "{detail}"
        );
        assert_eq!(
            crate::text::find_nul(&body, ""),
            None,
            "the note itself is storable"
        );
        // A key, and a body that is not JSON.
        assert!(matches!(
            classify(201, None, br#"{"k\u0000": 1}"#),
            CallOutcome::Error { .. }
        ));
        assert!(matches!(
            classify(200, None, b"a\0b"),
            CallOutcome::Error { .. }
        ));
        // A business failure stays one, with a storable body.
        let CallOutcome::BusinessFailure { body, .. } =
            classify(409, None, br#"{"detail": "\u0000"}"#)
        else {
            panic!()
        };
        assert_eq!(crate::text::find_nul(&body, ""), None);
    }
}
