//! One call to a service: send the rendered request with its idempotency key, read the answer
//! and classify it ([`crate::saga::classify`]: the step result protocol is pure).

use reqwest::header::RETRY_AFTER;

use super::Driver;
use crate::saga::{CallOutcome, Request, classify};

impl Driver {
    /// Perform one call and classify the answer per the step result protocol.
    pub(super) async fn call(&self, r: &Request) -> CallOutcome {
        let Some(base) = self.registry.services().get(&r.service) else {
            return transport(format!("service {:?} is not configured", r.service));
        };
        let Ok(method) = reqwest::Method::from_bytes(r.method.as_bytes()) else {
            return transport(format!("bad method {:?}", r.method));
        };
        let mut req =
            tandem_kit::telemetry::traced(self.http.request(method, format!("{base}{}", r.path)))
                .header("Idempotency-Key", &r.idempotency_key)
                .timeout(r.timeout);
        if !r.body.is_null() {
            req = req.json(&r.body);
        }
        let resp = match tandem_kit::hop::send(req).await {
            Ok(resp) => resp,
            Err(e) if e.is_timeout() => return CallOutcome::Timeout,
            Err(e) => return transport(tandem_kit::error::chain(&e)),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match resp.bytes().await {
            Ok(body) => classify(status, retry_after.as_deref(), &body),
            Err(e) if e.is_timeout() => CallOutcome::Timeout,
            Err(e) => transport(tandem_kit::error::chain(&e)),
        }
    }
}

/// A transport error, its message storable (Postgres refuses U+0000 in text).
fn transport(message: String) -> CallOutcome {
    CallOutcome::Transport {
        message: message.replace('\0', "\\u0000"),
    }
}
