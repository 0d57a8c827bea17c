//! `tandem choreo`: the choreographed checkout (no orchestrator; services react to events on
//! NATS JetStream, see `tandem_kit::choreo` and docs/sagas.md "Orchestration or choreography").
//!
//! - `show ORDER`: one checkout's timeline rebuilt from the stream (a table, or `--json` in the
//!   shape of the orders service's `GET /orders/{id}`).
//! - `demo`: the orchestrated demo's five scenarios, choreographed, with event-side faults (a
//!   consumer that naks N times; an effect committed whose ack is lost), each checked through
//!   the entry point, the stream and the services' own records.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tandem_kit::choreo::Entry;
use tandem_kit::choreo::event::Kind;

use crate::client::{Client, checkout_input};
use crate::demo::{Checks, kinds, paid_at, prepare, statuses};
use crate::launch::stack::{Stack, StackConfig};
use crate::launch::{DEFAULT_NATS, DEFAULT_SERVER, Layout, NATS_HINT};

#[derive(Debug, Args)]
pub struct ChoreoArgs {
    #[command(subcommand)]
    command: ChoreoCommand,
}

#[derive(Debug, Subcommand)]
enum ChoreoCommand {
    /// One checkout's timeline, rebuilt from the stream.
    Show(ShowArgs),
    /// The checkout demo's five scenarios, choreographed (needs NATS).
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The order id.
    order: String,
    /// NATS with JetStream.
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS)]
    nats_url: String,
    /// Print JSON (the `order_id`, the `status` the events reach and the `timeline`, entries
    /// as the orders service's `GET /orders/{id}` gives them).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// NATS with JetStream (the shared server; the demo's orders are unique to the run).
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS)]
    nats_url: String,
    /// The Postgres server the demo's own stack uses.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_SERVER)]
    database_url: String,
    /// Database name prefix of the demo's own stack.
    #[arg(long, default_value = "tandem_choreo_demo")]
    db_prefix: String,
}

pub async fn run(args: ChoreoArgs) -> anyhow::Result<()> {
    match args.command {
        ChoreoCommand::Show(a) => show(a).await,
        ChoreoCommand::Demo(a) => demo(a).await,
    }
}

/// Connect to NATS, or an error that says how to get one.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::jetstream::Context> {
    tandem_kit::choreo::connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{NATS_HINT}"))
}

/// The status an order's events reach: that of its furthest event (`Kind::rank`).
pub fn status(entries: &[Entry]) -> &'static str {
    entries
        .iter()
        .map(|e| e.event.event)
        .max_by_key(|k| k.rank())
        .map_or("unknown", Kind::status)
}

/// The timeline as JSON: `{order_id, status, timeline}`.
pub fn to_json(order: &str, entries: &[Entry]) -> Value {
    json!({
        "order_id": order,
        "status": status(entries),
        "timeline": entries.iter().map(Entry::to_json).collect::<Vec<_>>(),
    })
}

/// The timeline as a table: stream sequence, time since the first event, event, step, notes.
pub fn table(entries: &[Entry]) -> String {
    let t0 = entries.first().map(|e| e.at);
    let mut out = format!(
        "  {:>6}  {:>9}  {:<10} {:<18} {}\n",
        "seq", "+ms", "event", "step", "notes"
    );
    for e in entries {
        let ms = t0.map_or(0, |t| (e.at - t).num_milliseconds());
        let ev = &e.event;
        let mut notes = Vec::new();
        if let Some(r) = &ev.reason {
            notes.push(format!("reason: {r}"));
        }
        if let Some(o) = &ev.output {
            let o: String = o.to_string().chars().take(80).collect();
            notes.push(o);
        }
        out.push_str(&format!(
            "  {:>6}  {:>+9}  {:<10} {:<18} {}\n",
            e.seq,
            ms,
            ev.event.as_str(),
            ev.step.as_deref().unwrap_or(""),
            notes.join("  ")
        ));
    }
    out
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        tandem_kit::choreo::event::valid_order_id(&args.order),
        "{:?} is not an order id (letters, digits, '-' or '_')",
        args.order
    );
    let js = connect(&args.nats_url).await?;
    let entries = tandem_kit::choreo::timeline(&js, &args.order)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    anyhow::ensure!(
        !entries.is_empty(),
        "no events of order {} in the stream at {}",
        args.order,
        args.nats_url
    );
    if args.json {
        println!("{:#}", to_json(&args.order, &entries));
    } else {
        println!("order {}  → {}", args.order, status(&entries));
        print!("{}", table(&entries));
    }
    Ok(())
}

/// The five scenarios: name, what is expected, and how the order is placed (tag, quantity,
/// card, country, a fault at payment's consumer).
struct Scenario {
    name: &'static str,
    what: &'static str,
    tag: &'static str,
    quantity: i64,
    card: &'static str,
    country: &'static str,
    fault: Option<(&'static str, usize)>,
    /// Completed (else compensated).
    completes: bool,
    /// The events expected in the stream, in order, and the step a `failed` event names.
    events: &'static [&'static str],
    failed_step: Option<&'static str>,
}

const COMPLETED: &[&str] = &["placed", "reserved", "charged", "booked"];

const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "success",
        what: "reserved, charged, booked: three events after placed",
        tag: "ok",
        quantity: 2,
        card: "tok_visa",
        country: "GB",
        fault: None,
        completes: true,
        events: COMPLETED,
        failed_step: None,
    },
    Scenario {
        name: "declined card",
        what: "payment refuses: failed, then the reservation is released",
        tag: "declined",
        quantity: 3,
        card: "tok_decline",
        country: "GB",
        fault: None,
        completes: false,
        events: &[
            "placed",
            "reserved",
            "failed",
            "cancelled",
            "refunded",
            "released",
        ],
        failed_step: Some("charge_payment"),
    },
    Scenario {
        name: "undeliverable address",
        what: "shipping refuses: failed → refunded → released (reverse order)",
        tag: "zz",
        quantity: 1,
        card: "tok_visa",
        country: "ZZ",
        fault: None,
        completes: false,
        events: &[
            "placed",
            "reserved",
            "charged",
            "failed",
            "cancelled",
            "refunded",
            "released",
        ],
        failed_step: Some("create_shipment"),
    },
    Scenario {
        name: "transient consumer failures",
        what: "payment's consumer naks the reserved event twice: redelivered with backoff, charged once",
        tag: "flaky",
        quantity: 1,
        card: "tok_visa",
        country: "GB",
        fault: Some(("transient", 2)),
        completes: true,
        events: COMPLETED,
        failed_step: None,
    },
    Scenario {
        name: "lost ack",
        what: "payment commits the charge, its ack is lost (nak instead): the redelivery finds the barrier's outcome",
        tag: "lost",
        quantity: 1,
        card: "tok_visa",
        country: "GB",
        fault: Some(("effect_then_503", 1)),
        completes: true,
        events: COMPLETED,
        failed_step: None,
    },
];

/// What a scenario found: the order as the entry point reports it, and every expectation that
/// did not hold.
struct Outcome {
    scenario: &'static Scenario,
    order: String,
    view: Value,
    entries: Vec<Entry>,
    failures: Vec<String>,
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    // Checked first, so an unreachable NATS is the one message the user sees.
    let js = connect(&args.nats_url).await?;
    println!(
        "Starting the stack with the choreographed checkout in this process (NATS {}, databases {}_*) …",
        args.nats_url, args.db_prefix
    );
    let mut cfg = StackConfig::new(Layout::new(&args.database_url, &args.db_prefix), 0);
    cfg.nats_url = Some(args.nats_url.clone());
    let stack = Stack::start(cfg).await?;
    let client = Client::for_stack(&stack);
    let orders = stack
        .orders_url
        .clone()
        .context("the stack has no orders")?;
    let run_id = format!("cdemo-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    println!(
        "Running {} choreographed checkout scenarios (run {run_id}) …",
        SCENARIOS.len()
    );
    let all = futures::future::try_join_all(
        SCENARIOS
            .iter()
            .map(|s| scenario(&client, &js, &orders, &run_id, s)),
    );
    let outcomes = tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .context("the scenarios did not end within 120 s")??;
    let ok = report(&outcomes);
    stack.stop().await?;
    anyhow::ensure!(ok, "some scenarios did not end as expected");
    Ok(())
}

/// Place the scenario's order (fault installed first), wait for its terminal status at the
/// entry point, and check it against the stream and the services' records.
async fn scenario(
    c: &Client,
    js: &async_nats::jetstream::Context,
    orders: &str,
    run: &str,
    s: &'static Scenario,
) -> anyhow::Result<Outcome> {
    let (order, sku) = prepare(c, run, s.tag, s.fault).await?;
    let input = checkout_input(&order, &sku, s.quantity, s.card, s.country);
    let placed = c
        .send_json(reqwest::Method::POST, &format!("{orders}/orders"), &input)
        .await?;
    anyhow::ensure!(
        placed.status == 201,
        "POST /orders answered {}: {}",
        placed.status,
        placed.body
    );
    let view = c
        .get(&format!("{orders}/orders/{order}?wait_ms=60000"))
        .await?
        .body;
    let entries = tandem_kit::choreo::timeline(js, &order)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut k = Checks(vec![]);
    check_timeline(&mut k, s, &order, &view, &entries);
    check_records(&mut k, c, s, &order, &sku).await?;
    Ok(Outcome {
        scenario: s,
        order,
        view,
        entries,
        failures: k.0,
    })
}

/// The entry point's view and the stream's timeline: the same story (what `tandem choreo
/// show` prints is what `GET /orders/{id}` answers), the expected events in order, the
/// expected failed step and terminal status.
fn check_timeline(k: &mut Checks, s: &Scenario, order: &str, view: &Value, entries: &[Entry]) {
    let shown = to_json(order, entries);
    k.check(
        shown["timeline"] == view["timeline"] && shown["status"] == view["status"],
        format!("the stream's timeline {shown} differs from GET /orders/{order}: {view}"),
    );
    let events: Vec<&str> = entries.iter().map(|e| e.event.event.as_str()).collect();
    k.check(
        events == s.events,
        format!("events {events:?}, expected {:?}", s.events),
    );
    let failed = entries
        .iter()
        .find(|e| e.event.event == Kind::Failed)
        .and_then(|e| e.event.step.as_deref());
    k.check(
        failed == s.failed_step,
        format!(
            "the failed step is {failed:?}, expected {:?}",
            s.failed_step
        ),
    );
    k.status(
        view,
        if s.completes {
            "completed"
        } else {
            "compensated"
        },
    );
}

/// The services' own records of the order: stock, reservation, shipment, payments, and the
/// injected fault fired in full.
async fn check_records(
    k: &mut Checks,
    c: &Client,
    s: &Scenario,
    order: &str,
    sku: &str,
) -> anyhow::Result<()> {
    let completed = s.completes;
    k.available(c, sku, if completed { 10 - s.quantity } else { 10 })
        .await?;
    let res = c.reservations(order).await?;
    let want_res = if completed { "held" } else { "released" };
    k.check(
        statuses(&res, want_res) == 1 && res.len() == 1,
        format!("reservations {res:?}, expected one {want_res}"),
    );
    let ship = c.shipments(order).await?;
    let live = usize::from(completed);
    k.check(
        statuses(&ship, "created") == live,
        format!("shipments {ship:?}, expected {live} created"),
    );
    match s.failed_step {
        Some("create_shipment") => {
            let pay = k.payments(c, order, (1, 1)).await?;
            k.check(
                matches!((paid_at(&pay, "charge"), paid_at(&pay, "refund")), (Some(c), Some(r)) if c <= r),
                "the refund is not after the charge",
            );
        }
        Some(_) => {
            let pay = c.payments(order).await?;
            k.check(
                kinds(&pay, "charge") == kinds(&pay, "refund"),
                format!("payments {pay:?}: a net charge remains"),
            );
        }
        None => {
            k.payments(c, order, (1, 0)).await?;
        }
    }
    if s.fault.is_some() {
        let faults = c
            .get(&format!("{}/faults?order_id={order}", c.payment))
            .await?
            .body;
        // Only this order's faults: the other scenarios run at the same time, and theirs may
        // not have fired yet when this one ends.
        let fired = faults.as_array().is_some_and(|a| {
            let own: Vec<_> = a.iter().filter(|f| f["order_id"] == order).collect();
            !own.is_empty() && own.iter().all(|f| f["remaining"] == 0)
        });
        k.check(
            fired,
            format!("the injected fault did not fire in full: {faults}"),
        );
    }
    Ok(())
}

/// Print the outcomes; true if all passed.
fn report(outcomes: &[Outcome]) -> bool {
    for (i, o) in outcomes.iter().enumerate() {
        let mark = if o.failures.is_empty() {
            "as expected"
        } else {
            "UNEXPECTED"
        };
        println!(
            "\n[{}] {} — {}\n    order {}  → {} ({mark})",
            i + 1,
            o.scenario.name,
            o.scenario.what,
            o.order,
            o.view["status"].as_str().unwrap_or("?"),
        );
        print!("{}", table(&o.entries));
        for f in &o.failures {
            println!("    ✗ {f}");
        }
    }
    let passed = outcomes.iter().filter(|o| o.failures.is_empty()).count();
    println!(
        "\n{passed} of {} choreographed scenarios as expected (`tandem choreo show ORDER` replays any of them)",
        outcomes.len()
    );
    passed == outcomes.len()
}
