//! A small HTTP client for the orchestrator's API and the services' audit endpoints.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub orchestrator: String,
    pub inventory: String,
    pub payment: String,
    pub shipping: String,
}

/// The user's own token, sent as a bearer token on every call when set (see
/// docs/security.md). An operator token can do everything the commands do.
pub const TOKEN_ENV: &str = "TANDEM_TOKEN";

/// The token given by `tandem --token` (it wins over `$TANDEM_TOKEN`).
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Use `token` instead of `$TANDEM_TOKEN` on every call of this process (`tandem --token`).
/// Only the first call counts.
pub fn set_token(token: String) {
    let _ = TOKEN.set(token);
}

/// The user's token: `tandem --token`, else `$TANDEM_TOKEN`, else none.
pub fn user_token() -> Option<String> {
    TOKEN
        .get()
        .cloned()
        .or_else(|| std::env::var(TOKEN_ENV).ok())
        .filter(|t| !t.is_empty())
}

/// `Authorization: Bearer <the user's token>`, or nothing when there is none (an open stack).
pub fn token_headers() -> reqwest::header::HeaderMap {
    bearer_headers(user_token().as_deref())
}

/// `Authorization: Bearer <token>` (marked sensitive), or nothing for no or an empty token.
pub fn bearer_headers(token: Option<&str>) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token.filter(|t| !t.is_empty())
        && let Ok(mut v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
    {
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    headers
}

fn http_client(headers: reqwest::header::HeaderMap) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .default_headers(headers)
        .build()
        .expect("HTTP client")
}

/// Status code and JSON body of a response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Client {
    pub fn new(orchestrator: &str, inventory: &str, payment: &str, shipping: &str) -> Self {
        Client {
            http: http_client(token_headers()),
            orchestrator: orchestrator.trim_end_matches('/').to_string(),
            inventory: inventory.trim_end_matches('/').to_string(),
            payment: payment.trim_end_matches('/').to_string(),
            shipping: shipping.trim_end_matches('/').to_string(),
        }
    }

    /// Its HTTP client (with its bearer token, if any), for requests the methods do not make.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The same client sending `token` as its bearer token (instead of `$TANDEM_TOKEN`).
    pub fn with_token(mut self, token: &str) -> Self {
        self.http = http_client(bearer_headers(Some(token)));
        self
    }

    /// A client of `s`, sending its operator token when it has tokens of its own.
    pub fn for_stack(s: &crate::launch::stack::Stack) -> Self {
        let c = Client::new(
            &s.orchestrator_url,
            &s.inventory_url,
            &s.payment_url,
            &s.shipping_url,
        );
        match &s.tokens {
            Some(t) => c.with_token(&t.operator),
            None => c,
        }
    }

    async fn reply(resp: reqwest::Response) -> anyhow::Result<Reply> {
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok(Reply { status, body })
    }

    /// Send `req` (described as `what` in errors): status and JSON body.
    async fn send(
        req: reqwest::RequestBuilder,
        what: impl FnOnce() -> String,
    ) -> anyhow::Result<Reply> {
        Self::reply(req.send().await.with_context(what)?).await
    }

    pub async fn get(&self, url: &str) -> anyhow::Result<Reply> {
        Self::send(self.http.get(url), || format!("GET {url}")).await
    }

    pub async fn send_json(
        &self,
        method: reqwest::Method,
        url: &str,
        body: &Value,
    ) -> anyhow::Result<Reply> {
        let req = self.http.request(method.clone(), url).json(body);
        Self::send(req, || format!("{method} {url}")).await
    }

    /// `POST /sagas`.
    pub async fn start_saga(
        &self,
        definition: &str,
        input: &Value,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let mut req = self
            .http
            .post(format!("{}/sagas", self.orchestrator))
            .json(&json!({ "definition": definition, "input": input }));
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        Self::reply(req.send().await.context("POST /sagas")?).await
    }

    /// `GET /sagas/{id}?wait=…`: long-poll until the saga settles (or the wait ends).
    pub async fn wait_saga(&self, id: &str, wait_secs: u32) -> anyhow::Result<Value> {
        let r = self
            .get(&format!(
                "{}/sagas/{id}?wait={wait_secs}",
                self.orchestrator
            ))
            .await?;
        anyhow::ensure!(
            r.status == 200,
            "GET /sagas/{id} answered {}: {}",
            r.status,
            r.body
        );
        Ok(r.body)
    }

    /// Long-poll repeatedly until the saga is completed, compensated or failed (or `max_secs`).
    pub async fn settle(&self, id: &str, max_secs: u32) -> anyhow::Result<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(max_secs as u64);
        loop {
            let left = deadline
                .saturating_duration_since(std::time::Instant::now())
                .as_secs()
                .min(30) as u32;
            let s = self.wait_saga(id, left).await?;
            let st = s["status"].as_str().unwrap_or("");
            if matches!(st, "completed" | "compensated" | "failed") || left == 0 {
                return Ok(s);
            }
        }
    }

    /// `POST /sagas/{id}/{action}` (`cancel`, `retry-now`, `resume`) as `by` (the
    /// `Tandem-Actor` header): status and body (the saga, or a problem).
    pub async fn saga_action(&self, id: &str, action: &str, by: &str) -> anyhow::Result<Reply> {
        let url = format!("{}/sagas/{id}/{action}", self.orchestrator);
        let req = self.http.post(&url).header("Tandem-Actor", by);
        Self::send(req, || format!("POST {url}")).await
    }

    pub async fn set_stock(&self, sku: &str, available: i64) -> anyhow::Result<Reply> {
        self.send_json(
            reqwest::Method::PUT,
            &format!("{}/stock/{sku}", self.inventory),
            &json!({ "available": available }),
        )
        .await
    }

    pub async fn stock(&self, sku: &str) -> anyhow::Result<Value> {
        Ok(self
            .get(&format!("{}/stock/{sku}", self.inventory))
            .await?
            .body)
    }

    /// Items of a list endpoint (`[...]` or `{"items": [...]}`).
    async fn list(&self, url: String) -> anyhow::Result<Vec<Value>> {
        let r = self.get(&url).await?;
        anyhow::ensure!(
            r.status == 200,
            "GET {url} answered {}: {}",
            r.status,
            r.body
        );
        Ok(match r.body {
            Value::Array(a) => a,
            Value::Object(mut o) => match o.remove("items") {
                Some(Value::Array(a)) => a,
                _ => vec![],
            },
            _ => vec![],
        })
    }

    pub async fn reservations(&self, order_id: &str) -> anyhow::Result<Vec<Value>> {
        self.list(format!(
            "{}/reservations?order_id={order_id}",
            self.inventory
        ))
        .await
    }

    pub async fn payments(&self, order_id: &str) -> anyhow::Result<Vec<Value>> {
        self.list(format!("{}/payments?order_id={order_id}", self.payment))
            .await
    }

    pub async fn shipments(&self, order_id: &str) -> anyhow::Result<Vec<Value>> {
        self.list(format!("{}/shipments?order_id={order_id}", self.shipping))
            .await
    }

    /// Register a scoped fault at a service (`inventory`, `payment` or `shipping`).
    pub async fn add_fault(&self, service: &str, fault: &Value) -> anyhow::Result<Reply> {
        let base = match service {
            "inventory" => &self.inventory,
            "payment" => &self.payment,
            "shipping" => &self.shipping,
            other => anyhow::bail!("unknown service {other}"),
        };
        let r = self
            .send_json(reqwest::Method::POST, &format!("{base}/faults"), fault)
            .await?;
        anyhow::ensure!(
            r.status == 201,
            "POST {base}/faults answered {}: {}",
            r.status,
            r.body
        );
        Ok(r)
    }
}

/// A valid checkout input.
pub fn checkout_input(
    order_id: &str,
    sku: &str,
    quantity: i64,
    card_token: &str,
    country: &str,
) -> Value {
    json!({
        "order_id": order_id,
        "customer_id": "cust-42",
        "items": [{ "sku": sku, "quantity": quantity }],
        "amount_cents": 2599 * quantity,
        "currency": "EUR",
        "payment": { "card_token": card_token },
        "shipping": { "address": {
            "name": "Ada Lovelace", "line1": "12 St James's Square", "city": "London",
            "postal_code": "SW1Y 4JH", "country": country
        }}
    })
}
