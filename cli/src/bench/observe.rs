//! `tandem bench --observability-cost`: what metrics and tracing cost per operation. For each
//! workload and client count the bench starts its stack twice in the same run, on freshly
//! recreated databases, and runs the same closed loop on each:
//!
//! - **off**: `TANDEM_METRICS=off` (no recorder: every metric call is a no-op) and
//!   `OTEL_SDK_DISABLED=true` (no OpenTelemetry layer: no trace ids, no `traceparent`, no export);
//! - **on**: metrics recorded, spans exported over OTLP (`OTEL_EXPORTER_OTLP_ENDPOINT`) to a sink
//!   this process serves (it answers every export with 200 and counts what it received), so the
//!   cost includes the batch exporter's encoding and sending.
//!
//! The order alternates between client counts (off first, then on first …) so a machine that
//! grows busier during the run does not always penalize the same side. Only one stack runs at a
//! time (its connections stay within the README's arithmetic). Real binaries only: both switches
//! are per process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use serde::Serialize;

use super::measure::{LoopResult, closed_loop};
use super::workloads::{Load, Workload};
use super::{BenchArgs, StackMode, target};

/// One workload at one client count, off and on.
#[derive(Debug, Clone, Serialize)]
pub struct ObservabilityLevel {
    pub workload: Workload,
    pub clients: usize,
    pub off: LoopResult,
    pub on: LoopResult,
    /// Which ran first.
    pub first: &'static str,
    /// OTLP export requests and bytes the sink received during the `on` run (priming included).
    pub otlp_exports: u64,
    pub otlp_bytes: u64,
    /// Lines of the orchestrator's `/metrics` after each run (0 off: nothing recorded).
    pub metrics_lines_off: usize,
    pub metrics_lines_on: usize,
}

/// The two settings of a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    On,
}

#[derive(Default)]
struct Sink {
    exports: AtomicU64,
    bytes: AtomicU64,
}

async fn receive(State(sink): State<Arc<Sink>>, body: Bytes) -> [(&'static str, &'static str); 1] {
    sink.exports.fetch_add(1, Ordering::Relaxed);
    sink.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    // an empty ExportTraceServiceResponse: everything accepted
    [("content-type", "application/x-protobuf")]
}

/// Serve the OTLP sink on a loopback port: its base URL (the exporter appends `/v1/traces`).
async fn serve_sink(sink: Arc<Sink>) -> anyhow::Result<String> {
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(receive))
        .with_state(sink);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

fn env(mode: Mode, sink: &str) -> Vec<(String, String)> {
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    match mode {
        Mode::Off => vec![
            kv(tandem_kit::metrics::SWITCH_VAR, "off"),
            kv(tandem_kit::telemetry::DISABLED_VAR, "true"),
        ],
        Mode::On => vec![
            kv(tandem_kit::metrics::SWITCH_VAR, "on"),
            kv(tandem_kit::telemetry::DISABLED_VAR, "false"),
            kv(tandem_kit::telemetry::ENDPOINT_VAR, sink),
        ],
    }
}

/// One run: a fresh stack in `mode`, primed, then the measured loop; the orchestrator's
/// `/metrics` line count after it.
async fn run(
    args: &BenchArgs,
    workload: Workload,
    clients: usize,
    mode: Mode,
    sink: &str,
) -> anyhow::Result<(LoopResult, usize)> {
    let t = target::start_with_env(args, &env(mode, sink)).await?;
    target::wait_healthy(&t).await?;
    let loads: Vec<(Workload, Box<dyn Load>)> = vec![(workload, workload.load(args))];
    loads[0].1.prepare(&t).await?;
    super::prime(&t, args, &loads).await?;
    let label = format!(
        "{} C={clients} observability {}",
        workload.label(),
        if mode == Mode::On { "on" } else { "off" }
    );
    let op = loads[0].1.orchestrated(&t, args.request);
    let r = closed_loop(&label, clients, args.window(), op).await;
    let text = t
        .http
        .get(format!("{}/metrics", t.url("orchestrator")))
        .send()
        .await?
        .text()
        .await?;
    let lines = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    Ok((r, lines))
}

/// The comparison for every workload of `--workloads` at every client count.
pub async fn compare(args: &BenchArgs) -> anyhow::Result<Vec<ObservabilityLevel>> {
    anyhow::ensure!(
        args.running.orchestrator_url.is_none() && args.stack == StackMode::Processes,
        "--observability-cost starts its own stacks as processes (both switches are per process)"
    );
    let sink = Arc::new(Sink::default());
    let url = serve_sink(sink.clone()).await?;
    let mut levels = Vec::new();
    let mut on_first = false;
    for &workload in &args.workloads {
        anyhow::ensure!(
            !workload.load(args).choreographed(),
            "--observability-cost runs the orchestrated workloads (not {})",
            workload.label()
        );
        for &clients in &args.clients {
            let order = if on_first {
                [Mode::On, Mode::Off]
            } else {
                [Mode::Off, Mode::On]
            };
            let (mut off, mut on) = (None, None);
            let (mut exports, mut bytes) = (0, 0);
            for mode in order {
                let (e0, b0) = (
                    sink.exports.load(Ordering::Relaxed),
                    sink.bytes.load(Ordering::Relaxed),
                );
                let r = run(args, workload, clients, mode, &url).await?;
                match mode {
                    Mode::Off => off = Some(r),
                    Mode::On => {
                        // the batch exporter flushes every few seconds: give it one period
                        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
                        exports = sink.exports.load(Ordering::Relaxed) - e0;
                        bytes = sink.bytes.load(Ordering::Relaxed) - b0;
                        on = Some(r);
                    }
                }
            }
            let ((off, metrics_lines_off), (on, metrics_lines_on)) =
                (off.expect("ran"), on.expect("ran"));
            levels.push(ObservabilityLevel {
                workload,
                clients,
                off,
                on,
                first: if on_first { "on" } else { "off" },
                otlp_exports: exports,
                otlp_bytes: bytes,
                metrics_lines_off,
                metrics_lines_on,
            });
            on_first = !on_first;
        }
    }
    Ok(levels)
}

/// `--observability-cost`'s whole run: the comparison, printed (or as JSON).
pub async fn report(
    args: &BenchArgs,
    machine: serde_json::Value,
    postgres: serde_json::Value,
) -> anyhow::Result<()> {
    let levels = compare(args).await?;
    if args.json {
        let out = serde_json::json!({
            "machine": machine,
            "postgres": postgres,
            "warmup_secs": args.warmup,
            "duration_secs": args.duration,
            "observability": levels,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("machine: {machine}  postgres: {postgres}");
        println!(
            "stack: child processes, one stack at a time; warm-up {} s, measured {} s per run",
            args.warmup, args.duration
        );
        print(&levels);
    }
    Ok(())
}

/// The table: per workload and client count, throughput and latency off and on, and the cost.
pub fn print(levels: &[ObservabilityLevel]) {
    if levels.is_empty() {
        return;
    }
    println!(
        "\nobservability cost (off: TANDEM_METRICS=off, OTEL_SDK_DISABLED=true; on: metrics + OTLP export):"
    );
    println!(
        "{:<13} {:>3} {:>5} {:>9} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "workload",
        "C",
        "first",
        "off /s",
        "on /s",
        "on/off",
        "off p50",
        "on p50",
        "Δp50 ms",
        "off p99",
        "on p99",
        "Δp99 ms",
        "OTLP KiB"
    );
    for l in levels {
        let ratio = if l.off.per_sec > 0.0 {
            l.on.per_sec / l.off.per_sec
        } else {
            0.0
        };
        println!(
            "{:<13} {:>3} {:>5} {:>9.0} {:>9.0} {:>7.2} {:>8.2} {:>8.2} {:>+8.2} {:>8.2} {:>8.2} {:>+8.2} {:>9.0}",
            l.workload.label(),
            l.clients,
            l.first,
            l.off.per_sec,
            l.on.per_sec,
            ratio,
            l.off.latency.p50_ms,
            l.on.latency.p50_ms,
            l.on.latency.p50_ms - l.off.latency.p50_ms,
            l.off.latency.p99_ms,
            l.on.latency.p99_ms,
            l.on.latency.p99_ms - l.off.latency.p99_ms,
            l.otlp_bytes as f64 / 1024.0
        );
    }
    for l in levels {
        let errors: u64 = l.off.errors.values().chain(l.on.errors.values()).sum();
        if errors > 0 {
            println!(
                "  {} C={}: errors off {:?}, on {:?}",
                l.workload.label(),
                l.clients,
                l.off.errors,
                l.on.errors
            );
        }
    }
    let l = &levels[0];
    println!(
        "  (orchestrator /metrics: {} samples off, {} on; {} OTLP exports during the first on run)",
        l.metrics_lines_off, l.metrics_lines_on, l.otlp_exports
    );
}
