//! The checkout demo: scenarios with known expected outcomes, checked through the orchestrator's
//! API **and** the services' own records, printed as timelines.
//!
//! Each scenario uses its own order id and SKU (derived from a run id), so the demo can run
//! against a stack that already holds other data, and several runs never collide.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::client::{Client, checkout_input};

/// What a scenario found: the saga as the orchestrator reports it, and every expectation that
/// did not hold (empty: the scenario passed).
pub struct Outcome {
    pub name: &'static str,
    pub what: &'static str,
    pub saga: Value,
    pub failures: Vec<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

pub const SCENARIOS: [(&str, &str); 5] = [
    ("success", "stock reserved, card charged, shipment created"),
    (
        "declined card",
        "payment answers 409: the reservation is released",
    ),
    (
        "undeliverable address",
        "shipping answers 409: refund, then release (reverse order)",
    ),
    (
        "transient payment failures",
        "payment fails twice with 500: retried with backoff, then charged once",
    ),
    (
        "lost response",
        "payment charges, then answers 503: the retry with the same key gets the first result",
    ),
];

/// Run every scenario (concurrently) and return their outcomes in order.
pub async fn run_all(c: &Client, run_id: &str) -> anyhow::Result<Vec<Outcome>> {
    let (a, b, d, e, f) = tokio::join!(
        success(c, run_id),
        declined(c, run_id),
        undeliverable(c, run_id),
        charge_retried(c, run_id, 3, "flaky", "transient", 2),
        charge_retried(c, run_id, 4, "lost", "effect_then_503", 1)
    );
    Ok(vec![a?, b?, d?, e?, f?])
}

/// The expectations of one scenario that did not hold.
pub(crate) struct Checks(pub(crate) Vec<String>);

impl Checks {
    pub(crate) fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.0.push(what.into());
        }
    }

    pub(crate) fn status(&mut self, saga: &Value, want: &str) {
        let ok = saga["status"] == want;
        self.check(ok, format!("status is {}, expected {want}", saga["status"]));
    }

    pub(crate) async fn available(
        &mut self,
        c: &Client,
        sku: &str,
        want: i64,
    ) -> anyhow::Result<()> {
        let stock = c.stock(sku).await?;
        let got = &stock["available"];
        self.check(
            *got == want,
            format!("available stock is {got}, expected {want}"),
        );
        Ok(())
    }

    /// The order's payments: `charges` charges and `refunds` refunds; the list.
    pub(crate) async fn payments(
        &mut self,
        c: &Client,
        order: &str,
        (charges, refunds): (usize, usize),
    ) -> anyhow::Result<Vec<Value>> {
        let pay = c.payments(order).await?;
        let ok = kinds(&pay, "charge") == charges && kinds(&pay, "refund") == refunds;
        let want = format!("{charges} charge(s) and {refunds} refund(s)");
        self.check(ok, format!("payments {pay:?}, expected {want}"));
        Ok(pay)
    }

    fn outcome(self, scenario: usize, saga: Value) -> Outcome {
        Outcome {
            name: SCENARIOS[scenario].0,
            what: SCENARIOS[scenario].1,
            saga,
            failures: self.0,
        }
    }
}

/// How a scenario's checkout starts: its tag (part of the order id and SKU), quantity, card,
/// country, and a fault for payment (scoped to the order), if any.
struct Start<'a> {
    tag: &'a str,
    quantity: i64,
    card: &'a str,
    country: &'a str,
    fault: Option<(&'a str, usize)>,
}

impl<'a> Start<'a> {
    /// A checkout without a fault.
    fn plain(tag: &'a str, quantity: i64, card: &'a str, country: &'a str) -> Self {
        Start {
            tag,
            quantity,
            card,
            country,
            fault: None,
        }
    }
}

/// A scenario's order id and SKU (from the run id and its tag), the SKU seeded with 10 and
/// payment's fault (`kind`, `times`, scoped to the order) installed.
pub(crate) async fn prepare(
    c: &Client,
    run: &str,
    tag: &str,
    fault: Option<(&str, usize)>,
) -> anyhow::Result<(String, String)> {
    let (order, sku) = (format!("{run}-{tag}"), format!("{run}-widget-{tag}"));
    seed(c, &sku, 10).await?;
    if let Some((kind, times)) = fault {
        let fault = json!({ "order_id": order, "kind": kind, "times": times });
        c.add_fault("payment", &fault).await?;
    }
    Ok((order, sku))
}

/// [`prepare`], then run the checkout to its end: the order id, the SKU and the settled saga.
async fn begin(c: &Client, run: &str, s: Start<'_>) -> anyhow::Result<(String, String, Value)> {
    let (order, sku) = prepare(c, run, s.tag, s.fault).await?;
    let input = checkout_input(&order, &sku, s.quantity, s.card, s.country);
    let saga = start(c, &input).await?;
    Ok((order, sku, saga))
}

/// Index of the first event of `kind` for `step` (None if absent).
pub fn event_index(saga: &Value, kind: &str, step: Option<&str>) -> Option<usize> {
    saga["events"]
        .as_array()?
        .iter()
        .position(|e| e["kind"] == kind && step.is_none_or(|s| e["step"] == s))
}

pub fn count_events(saga: &Value, kind: &str, step: &str) -> usize {
    saga["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["kind"] == kind && e["step"] == step)
                .count()
        })
        .unwrap_or(0)
}

pub(crate) fn kinds(list: &[Value], kind: &str) -> usize {
    list.iter().filter(|p| p["kind"] == kind).count()
}

pub(crate) fn statuses(list: &[Value], status: &str) -> usize {
    list.iter().filter(|p| p["status"] == status).count()
}

async fn start(c: &Client, input: &Value) -> anyhow::Result<Value> {
    let r = c.start_saga("checkout", input, None).await?;
    anyhow::ensure!(
        r.status == 201,
        "POST /sagas answered {}: {}",
        r.status,
        r.body
    );
    let id = r.body["id"].as_str().unwrap_or_default().to_string();
    c.settle(&id, 120).await
}

async fn seed(c: &Client, sku: &str, n: i64) -> anyhow::Result<()> {
    let r = c.set_stock(sku, n).await?;
    anyhow::ensure!(
        r.status == 200,
        "PUT /stock/{sku} answered {}: {}",
        r.status,
        r.body
    );
    Ok(())
}

/// [`begin`], then check the saga's final `status` and the stock left `available` of its SKU:
/// the order id, the saga and the checks so far.
async fn begin_checked(
    c: &Client,
    run: &str,
    how: Start<'_>,
    status: &str,
    available: i64,
) -> anyhow::Result<(String, Value, Checks)> {
    let (order, sku, saga) = begin(c, run, how).await?;
    let mut k = Checks(vec![]);
    k.status(&saga, status);
    k.available(c, &sku, available).await?;
    Ok((order, saga, k))
}

async fn success(c: &Client, run: &str) -> anyhow::Result<Outcome> {
    let how = Start::plain("ok", 2, "tok_visa", "GB");
    let (order, saga, mut k) = begin_checked(c, run, how, "completed", 8).await?;
    let res = c.reservations(&order).await?;
    k.check(
        statuses(&res, "held") == 1,
        format!("{} held reservations, expected 1", statuses(&res, "held")),
    );
    k.payments(c, &order, (1, 0)).await?;
    let ship = c.shipments(&order).await?;
    k.check(
        statuses(&ship, "created") == 1,
        format!("shipments {ship:?}, expected one created"),
    );
    Ok(k.outcome(0, saga))
}

/// `first` happened before `then` in the saga's event log (each: kind, step).
fn ordered(saga: &Value, first: (&str, &str), then: (&str, &str)) -> bool {
    let a = event_index(saga, first.0, Some(first.1));
    let b = event_index(saga, then.0, Some(then.1));
    matches!((a, b), (Some(a), Some(b)) if a < b)
}

async fn declined(c: &Client, run: &str) -> anyhow::Result<Outcome> {
    let how = Start::plain("declined", 3, "tok_decline", "GB");
    let (order, saga, mut k) = begin_checked(c, run, how, "compensated", 10).await?;
    let pay = c.payments(&order).await?;
    k.check(
        kinds(&pay, "charge") == kinds(&pay, "refund"),
        format!("payments {pay:?}: a net charge remains"),
    );
    k.check(
        ordered(
            &saga,
            ("step_failed", "charge_payment"),
            ("compensation_succeeded", "reserve_inventory"),
        ),
        "the event log does not show the release after the payment failed",
    );
    Ok(k.outcome(1, saga))
}

/// When the order's first payment of `kind` was recorded.
pub(crate) fn paid_at(pay: &[Value], kind: &str) -> Option<DateTime<Utc>> {
    pay.iter()
        .find(|p| p["kind"] == kind)
        .and_then(|p| p["created_at"].as_str())
        .and_then(parse_time)
}

async fn undeliverable(c: &Client, run: &str) -> anyhow::Result<Outcome> {
    let how = Start::plain("zz", 1, "tok_visa", "ZZ");
    let (order, saga, mut k) = begin_checked(c, run, how, "compensated", 10).await?;
    let pay = k.payments(c, &order, (1, 1)).await?;
    k.check(
        matches!((paid_at(&pay, "charge"), paid_at(&pay, "refund")), (Some(c), Some(r)) if c <= r),
        "the refund is not after the charge",
    );
    let ship = c.shipments(&order).await?;
    k.check(
        statuses(&ship, "created") == 0,
        format!("shipments {ship:?}: a live shipment remains"),
    );
    k.check(
        ordered(
            &saga,
            ("compensation_succeeded", "charge_payment"),
            ("compensation_succeeded", "reserve_inventory"),
        ),
        "the event log does not show the release after the refund",
    );
    Ok(k.outcome(2, saga))
}

/// A checkout whose charge fails `retries` times with `fault` (scoped to this order) before it
/// succeeds: it must complete with exactly `retries` retries and exactly one charge.
async fn charge_retried(
    c: &Client,
    run: &str,
    scenario: usize,
    tag: &str,
    fault: &str,
    retries: usize,
) -> anyhow::Result<Outcome> {
    let how = Start {
        fault: Some((fault, retries)),
        ..Start::plain(tag, 1, "tok_visa", "GB")
    };
    let (order, _, saga) = begin(c, run, how).await?;
    let mut k = Checks(vec![]);
    k.status(&saga, "completed");
    let seen = count_events(&saga, "step_retry_scheduled", "charge_payment");
    k.check(
        seen == retries,
        format!("{seen} retries of charge_payment, expected {retries}"),
    );
    k.payments(c, &order, (1, 0)).await?;
    Ok(k.outcome(scenario, saga))
}

pub(crate) fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A saga's event log as a readable timeline (times relative to its first event).
pub fn timeline(saga: &Value) -> String {
    let mut out = String::new();
    let events = saga["events"].as_array().cloned().unwrap_or_default();
    let t0 = events
        .first()
        .and_then(|e| e["at"].as_str())
        .and_then(parse_time);
    for e in &events {
        let at = e["at"].as_str().and_then(parse_time);
        let ms = match (t0, at) {
            (Some(a), Some(b)) => (b - a).num_milliseconds(),
            _ => 0,
        };
        let d = &e["detail"];
        let mut notes = Vec::new();
        if let Some(a) = d.get("attempt") {
            notes.push(format!("attempt {a}"));
        }
        if let Some(s) = d.get("status").filter(|s| !s.is_null()) {
            notes.push(format!("HTTP {s}"));
        }
        for key in ["by", "error", "reason", "retry_at", "message"] {
            if let Some(v) = d.get(key).filter(|v| !v.is_null()) {
                let v = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                let v: String = v.chars().take(90).collect();
                notes.push(format!("{key}: {v}"));
            }
        }
        out.push_str(&format!(
            "  {:>+7}ms  {:<28} {:<18} {}\n",
            ms,
            e["kind"].as_str().unwrap_or("?"),
            e["step"].as_str().unwrap_or(""),
            notes.join(", ")
        ));
    }
    out
}

/// Print the outcomes; returns true if all passed.
pub fn report(outcomes: &[Outcome]) -> bool {
    for (i, o) in outcomes.iter().enumerate() {
        let mark = if o.passed() {
            "as expected"
        } else {
            "UNEXPECTED"
        };
        println!(
            "\n[{}] {} — {}\n    saga {}  order {}  → {} ({mark})",
            i + 1,
            o.name,
            o.what,
            o.saga["id"].as_str().unwrap_or("?"),
            o.saga["input"]["order_id"].as_str().unwrap_or("?"),
            o.saga["status"].as_str().unwrap_or("?"),
        );
        print!("{}", timeline(&o.saga));
        for f in &o.failures {
            println!("    ✗ {f}");
        }
    }
    let passed = outcomes.iter().filter(|o| o.passed()).count();
    println!("\n{passed} of {} scenarios as expected", outcomes.len());
    passed == outcomes.len()
}
