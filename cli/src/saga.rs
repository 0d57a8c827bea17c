//! `tandem saga list | show | cancel | retry | resume`: operators' commands against a running
//! orchestrator's API. The formatting ([`list_table`], [`show`]) is pure, so it is unit-tested;
//! colour (ANSI) only when stdout is a terminal, `--json` prints the API's answer as it is.

use std::io::IsTerminal;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::Client;
use crate::demo::timeline;

/// Where `tandem up` serves the orchestrator by default.
pub const DEFAULT_ORCHESTRATOR_URL: &str = "http://127.0.0.1:8080";

#[derive(Debug, Args)]
pub struct SagaArgs {
    /// The orchestrator's URL (default: where `tandem up` serves it).
    #[arg(long, env = "TANDEM_ORCHESTRATOR_URL", default_value = DEFAULT_ORCHESTRATOR_URL, global = true)]
    pub orchestrator_url: String,
    /// Print the API's JSON answer instead of a table or timeline.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: SagaCommand,
}

#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    /// List sagas, newest first.
    List {
        /// running, compensating, completed, compensated or failed.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        definition: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One saga: its steps and the timeline of its events.
    Show { id: String },
    /// Cancel a running saga: every step whose action was sent is compensated, in reverse order.
    Cancel {
        id: String,
        /// Who cancels (logged in the saga's events). Default: $USER.
        #[arg(long)]
        by: Option<String>,
    },
    /// Send a step waiting for its retry (or its next poll) now.
    Retry {
        id: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// Resume a failed saga (its parked compensation gets a fresh budget).
    Resume {
        id: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// Benchmark the console's reads with 100,000 sagas stored: starts its own stack on
    /// throwaway databases (not `--orchestrator-url`), prints p50/p95 of the list, its filters
    /// and a saga's page against the targets; exits non-zero if a target is missed.
    BenchConsole(crate::bench::console::ConsoleBenchArgs),
}

/// Text styles, empty when colour is off.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    on: bool,
}

impl Style {
    pub fn new(on: bool) -> Self {
        Style { on }
    }
    fn paint(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
    /// A status word in its colour: green done, yellow under way, red failed / compensated.
    pub fn status(&self, s: &str) -> String {
        let code = match s {
            "completed" | "succeeded" => "32",
            "running" | "compensating" | "pending" => "33",
            "failed" => "31;1",
            "compensated" => "35",
            _ => "2",
        };
        self.paint(code, s)
    }
}

/// Pad `s` (which may hold ANSI codes of `visible` width) to `width` columns.
fn pad(s: &str, visible: usize, width: usize) -> String {
    format!("{s}{}", " ".repeat(width.saturating_sub(visible)))
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `GET /sagas` items as a table: id, definition, status, business key, created.
pub fn list_table(items: &[Value], style: Style) -> String {
    let header = ["ID", "DEFINITION", "STATUS", "BUSINESS KEY", "CREATED"];
    let rows: Vec<[String; 5]> = items
        .iter()
        .map(|s| {
            [
                text(&s["id"]),
                text(&s["definition"]),
                text(&s["status"]),
                text(&s["business_key"]),
                text(&s["created_at"]).chars().take(19).collect(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line: Vec<String> = header
        .iter()
        .zip(widths)
        .map(|(h, w)| pad(&style.bold(h), h.len(), w))
        .collect();
    out.push_str(line.join("  ").trim_end());
    out.push('\n');
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let shown = if i == 2 { style.status(c) } else { c.clone() };
                pad(&shown, c.chars().count(), widths[i])
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no sagas)\n");
    }
    out
}

/// One saga (`GET /sagas/{id}`): a header, its steps, and the timeline of its events.
pub fn show(saga: &Value, style: Style) -> String {
    let mut out = format!(
        "{} {}  {}  ({} {})\n",
        style.bold("saga"),
        text(&saga["id"]),
        style.status(saga["status"].as_str().unwrap_or("?")),
        text(&saga["definition"]),
        text(&saga["version"]).chars().take(12).collect::<String>(),
    );
    if !saga["business_key"].is_null() {
        out.push_str(&format!("business key  {}\n", text(&saga["business_key"])));
    }
    for (key, label) in [("reason", "reason"), ("next_attempt_at", "next attempt")] {
        if !saga[key].is_null() {
            out.push_str(&format!("{label:<13} {}\n", text(&saga[key])));
        }
    }
    let lease = &saga["lease"];
    out.push_str(&format!(
        "lease         {} until {} (epoch {})\n",
        text(&lease["owner"]),
        text(&lease["until"]),
        text(&lease["epoch"])
    ));
    out.push_str(&format!("\n{}\n", style.bold("steps")));
    for s in saga["steps"].as_array().into_iter().flatten() {
        let status = s["status"].as_str().unwrap_or("?");
        let mut line = format!(
            "  {:<22} {} attempts {}",
            text(&s["name"]),
            pad(&style.status(status), status.len(), 13),
            text(&s["attempts"]),
        );
        if s["compensation_attempts"].as_u64().unwrap_or(0) > 0 {
            line.push_str(&format!(
                ", compensation attempts {}",
                text(&s["compensation_attempts"])
            ));
        }
        if let Some(e) = s["last_error"].as_str() {
            line.push_str(&format!("  last error: {e}"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&format!("\n{}\n", style.bold("timeline")));
    out.push_str(&timeline(saga));
    out
}

fn who(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "tandem-cli".to_string())
}

/// Run one `tandem saga` command; Err on a refusal or an unreachable orchestrator.
pub async fn run(args: SagaArgs) -> anyhow::Result<()> {
    let base = args.orchestrator_url.trim_end_matches('/').to_string();
    let c = Client::new(&base, "", "", "");
    let style = Style::new(!args.json && std::io::stdout().is_terminal());
    let (reply, single) = match args.command {
        SagaCommand::BenchConsole(a) => {
            return crate::bench::console::bench_console(a, args.json).await;
        }
        SagaCommand::List {
            status,
            definition,
            limit,
        } => {
            let mut url = format!("{base}/sagas?limit={limit}");
            for (k, v) in [("status", status), ("definition", definition)] {
                if let Some(v) = v {
                    url.push_str(&format!("&{k}={}", encode(&v)));
                }
            }
            (c.get(&url).await?, false)
        }
        SagaCommand::Show { id } => (c.get(&format!("{base}/sagas/{}", encode(&id))).await?, true),
        SagaCommand::Cancel { id, by } => (c.saga_action(&id, "cancel", &who(by)).await?, true),
        SagaCommand::Retry { id, by } => (c.saga_action(&id, "retry-now", &who(by)).await?, true),
        SagaCommand::Resume { id, by } => (c.saga_action(&id, "resume", &who(by)).await?, true),
    };
    if !(200..300).contains(&reply.status) {
        let detail = reply.body["detail"]
            .as_str()
            .or(reply.body["title"].as_str())
            .map_or_else(|| reply.body.to_string(), str::to_string);
        anyhow::bail!("the orchestrator answered {}: {detail}", reply.status);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply.body)?);
    } else if single {
        print!("{}", show(&reply.body, style));
    } else {
        let items = reply.body["items"].as_array().cloned().unwrap_or_default();
        print!("{}", list_table(&items, style));
        if let Some(next) = reply.body["next_cursor"].as_str() {
            println!("(more: add &cursor={next} to GET /sagas)");
        }
    }
    Ok(())
}

/// Percent-encode a query or path value (everything but unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn saga() -> Value {
        json!({
            "id": "0190-a", "definition": "checkout", "version": "abcdef0123456789", "status": "compensated",
            "business_key": "o-1", "reason": "cancelled by alice", "next_attempt_at": null,
            "lease": {"owner": null, "until": null, "epoch": 3},
            "steps": [
                {"name": "reserve_inventory", "status": "compensated", "attempts": 1, "compensation_attempts": 1, "last_error": null},
                {"name": "charge_payment", "status": "compensated", "attempts": 1, "compensation_attempts": 2, "last_error": "cancelled by alice"},
                {"name": "create_shipment", "status": "skipped", "attempts": 0, "compensation_attempts": 0, "last_error": null}
            ],
            "events": [
                {"seq": 1, "at": "2026-11-30T10:00:00.000Z", "kind": "saga_started", "step": null, "detail": {}},
                {"seq": 2, "at": "2026-11-30T10:00:00.250Z", "kind": "saga_cancelled", "step": "charge_payment", "detail": {"by": "alice"}},
                {"seq": 3, "at": "2026-11-30T10:00:00.300Z", "kind": "compensation_succeeded", "step": "charge_payment", "detail": {"attempt": 2, "status": 200}},
                {"seq": 4, "at": "2026-11-30T10:00:00.400Z", "kind": "compensation_succeeded", "step": "reserve_inventory", "detail": {"attempt": 1, "status": 200}}
            ]
        })
    }

    #[test]
    fn the_list_is_an_aligned_table_without_colour_off_a_terminal() {
        let items = [
            json!({"id": "a1", "definition": "checkout", "status": "completed", "business_key": "order-1", "created_at": "2026-11-30T10:00:00.123456Z"}),
            json!({"id": "b22", "definition": "gift", "status": "failed", "business_key": null, "created_at": "2026-11-30T11:00:00Z"}),
        ];
        let t = list_table(&items, Style::new(false));
        assert_eq!(
            t,
            "ID   DEFINITION  STATUS     BUSINESS KEY  CREATED\n\
             a1   checkout    completed  order-1       2026-11-30T10:00:00\n\
             b22  gift        failed     -             2026-11-30T11:00:00\n"
        );
        assert!(!t.contains('\x1b'));
        assert_eq!(
            list_table(&[], Style::new(false)).lines().nth(1),
            Some("(no sagas)")
        );
    }

    #[test]
    fn colour_keeps_the_columns_aligned() {
        let items = [
            json!({"id": "a1", "definition": "d", "status": "failed", "business_key": "k", "created_at": "t"}),
        ];
        let plain = list_table(&items, Style::new(false));
        let coloured = list_table(&items, Style::new(true));
        assert!(coloured.contains("\x1b[31;1mfailed\x1b[0m"));
        let strip = |s: &str| {
            let mut out = String::new();
            let mut esc = false;
            for ch in s.chars() {
                match (esc, ch) {
                    (_, '\x1b') => esc = true,
                    (true, 'm') => esc = false,
                    (true, _) => {}
                    (false, c) => out.push(c),
                }
            }
            out
        };
        assert_eq!(strip(&coloured), plain);
    }

    #[test]
    fn show_has_the_steps_and_the_timeline_with_who_acted() {
        let out = show(&saga(), Style::new(false));
        assert!(
            out.starts_with("saga 0190-a  compensated  (checkout abcdef012345)\n"),
            "{out}"
        );
        assert!(out.contains("reason        cancelled by alice\n"), "{out}");
        assert!(out.contains("lease         - until - (epoch 3)\n"), "{out}");
        assert!(out.contains("  charge_payment         compensated   attempts 1, compensation attempts 2  last error: cancelled by alice\n"), "{out}");
        assert!(
            out.contains("  create_shipment        skipped       attempts 0\n"),
            "{out}"
        );
        let timeline: Vec<&str> = out
            .lines()
            .skip_while(|l| *l != "timeline")
            .skip(1)
            .collect();
        assert_eq!(timeline.len(), 4, "{out}");
        assert!(
            timeline[1].contains("+250ms")
                && timeline[1].contains("saga_cancelled")
                && timeline[1].contains("by: alice"),
            "{out}"
        );
        // Compensations in reverse order: the charge before the reservation.
        assert!(
            timeline[2].contains("charge_payment") && timeline[3].contains("reserve_inventory")
        );
        assert!(!out.contains('\x1b'));
    }

    #[test]
    fn values_are_encoded_for_urls() {
        assert_eq!(encode("a b/c&d"), "a%20b%2Fc%26d");
        assert_eq!(encode("ok-1_2.3~"), "ok-1_2.3~");
    }
}
