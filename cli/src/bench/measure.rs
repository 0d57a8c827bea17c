//! The shared measuring of every workload: a closed loop of C clients running an [`Op`] back to
//! back (warm-up, then a measured window), latency in an HdrHistogram, errors by kind, the
//! durations an operation reports about itself (e.g. how long each 2PC participant held its
//! locks), and the HTTP helpers the operations use.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoopResult {
    pub clients: usize,
    pub measured_secs: f64,
    /// Completed successfully inside the measured window.
    pub completed: u64,
    pub per_sec: f64,
    pub latency: Latency,
    pub errors: BTreeMap<String, u64>,
    /// Operations started in the whole run (warm-up included), for per-operation ratios.
    pub total_ops: u64,
    /// Distributions of the durations the successful measured operations reported, by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub reported: BTreeMap<String, Latency>,
}

/// Named durations an operation reports about itself (none for most workloads).
pub type Timings = Vec<(String, Duration)>;
pub type OpFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Timings, String>> + Send>>;
/// One operation of client `.0`, its `.1`-th: Ok with what it reports, or the kind of error
/// (counted by kind).
pub type Op = Arc<dyn Fn(usize, u64) -> OpFuture + Send + Sync>;

/// Histograms of reported durations, by name.
#[derive(Default)]
pub struct Reported(BTreeMap<String, Histogram<u64>>);

impl Reported {
    pub fn record(&mut self, timings: &Timings) {
        for (name, d) in timings {
            let h = self.0.entry(name.clone()).or_insert_with(new_histogram);
            let _ = h.record(d.as_micros().max(1) as u64);
        }
    }

    fn add(&mut self, other: &Reported) {
        for (name, h) in &other.0 {
            let mine = self.0.entry(name.clone()).or_insert_with(new_histogram);
            let _ = mine.add(h);
        }
    }

    pub fn latencies(&self) -> BTreeMap<String, Latency> {
        self.0
            .iter()
            .map(|(name, h)| (name.clone(), latency_of(h)))
            .collect()
    }
}

/// The phases of one closed loop.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warmup: f64,
    pub duration: f64,
}

fn latency_of(h: &Histogram<u64>) -> Latency {
    let ms = |v: u64| v as f64 / 1000.0;
    Latency {
        p50_ms: ms(h.value_at_quantile(0.50)),
        p95_ms: ms(h.value_at_quantile(0.95)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// What one client measured.
struct ClientTally {
    histogram: Histogram<u64>,
    reported: Reported,
    errors: BTreeMap<String, u64>,
    completed: u64,
    ops: u64,
}

/// Counters shared by the clients and the progress line.
#[derive(Default)]
struct Progress {
    done: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

/// A progress line on stderr, once a second, until `progress.stop`.
fn show_progress(
    label: &str,
    progress: Arc<Progress>,
    start: Instant,
    measure_from: Instant,
) -> tokio::task::JoinHandle<()> {
    let label = label.to_string();
    tokio::spawn(async move {
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        while !progress.stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let d = progress.done.load(Ordering::Relaxed);
            let phase = if Instant::now() < measure_from {
                "warm-up"
            } else {
                "measuring"
            };
            eprint!(
                "\r\x1b[K{label}: {phase} {:>5.1}s  {d} done  {}/s  {} errors",
                start.elapsed().as_secs_f64(),
                d - last,
                progress.failed.load(Ordering::Relaxed)
            );
            last = d;
        }
    })
}

/// One client: `op` back to back until `end`; what finished in `[measure_from, end)` counts.
async fn run_client(
    op: Op,
    client: usize,
    progress: Arc<Progress>,
    measure_from: Instant,
    end: Instant,
) -> ClientTally {
    let mut t = ClientTally {
        histogram: new_histogram(),
        reported: Reported::default(),
        errors: BTreeMap::new(),
        completed: 0,
        ops: 0,
    };
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        t.ops += 1;
        let r = op(client, t.ops).await;
        let t1 = Instant::now();
        let measured = t1 >= measure_from && t1 < end;
        match r {
            Ok(timings) => {
                progress.done.fetch_add(1, Ordering::Relaxed);
                if measured {
                    t.completed += 1;
                    let _ = t.histogram.record((t1 - t0).as_micros().max(1) as u64);
                    t.reported.record(&timings);
                }
            }
            Err(kind) => {
                progress.failed.fetch_add(1, Ordering::Relaxed);
                if measured {
                    *t.errors.entry(kind).or_default() += 1;
                }
            }
        }
    }
    t
}

/// C clients, each running `op` back to back until the window ends; a progress line on stderr.
pub async fn closed_loop(label: &str, clients: usize, window: Window, op: Op) -> LoopResult {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(window.warmup);
    let end = measure_from + Duration::from_secs_f64(window.duration);
    let progress = Arc::new(Progress::default());
    let shown = show_progress(label, progress.clone(), start, measure_from);
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            tokio::spawn(run_client(
                op.clone(),
                client,
                progress.clone(),
                measure_from,
                end,
            ))
        })
        .collect();
    let mut h = new_histogram();
    let mut reported = Reported::default();
    let mut errors = BTreeMap::new();
    let (mut completed, mut total_ops) = (0, 0);
    for t in tasks {
        if let Ok(c) = t.await {
            let _ = h.add(&c.histogram);
            reported.add(&c.reported);
            for (k, v) in c.errors {
                *errors.entry(k).or_default() += v;
            }
            completed += c.completed;
            total_ops += c.ops;
        }
    }
    progress.stop.store(true, Ordering::Relaxed);
    let _ = shown.await;
    eprintln!();
    LoopResult {
        clients,
        measured_secs: window.duration,
        completed,
        per_sec: completed as f64 / window.duration,
        latency: latency_of(&h),
        errors,
        total_ops,
        reported: reported.latencies(),
    }
}

/// The kind of a transport error, as counted in [`LoopResult::errors`].
pub fn http_error(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}

/// `POST url` with a JSON body and an optional `Idempotency-Key`: status and JSON body.
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &Value,
) -> Result<(u16, Value), String> {
    let mut req = http.post(url).json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.map_err(http_error)?;
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// `GET url`: status and JSON body.
pub async fn get(http: &reqwest::Client, url: &str) -> Result<(u16, Value), String> {
    let resp = http.get(url).send().await.map_err(http_error)?;
    let status = resp.status().as_u16();
    Ok((status, resp.json::<Value>().await.unwrap_or(Value::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_durations_are_kept_apart_by_name_and_merged_across_clients() {
        let ms = |n: u64| Duration::from_millis(n);
        let mut a = Reported::default();
        for i in 1..=100 {
            a.record(&vec![
                ("lock hold x".into(), ms(i)),
                ("lock hold y".into(), ms(7)),
            ]);
        }
        let mut b = Reported::default();
        b.record(&vec![("lock hold x".into(), ms(1000))]);
        let mut all = Reported::default();
        all.add(&a);
        all.add(&b);
        let l = all.latencies();
        assert_eq!(l.len(), 2);
        let x = &l["lock hold x"];
        // 101 values: 1..=100 ms and 1000 ms (3 significant digits).
        assert!((x.p50_ms - 51.0).abs() < 0.1, "{x:?}");
        assert!((x.p99_ms - 100.0).abs() < 0.1, "{x:?}");
        assert!((x.max_ms - 1000.0).abs() < 1.0, "{x:?}");
        assert!((l["lock hold y"].p99_ms - 7.0).abs() < 0.01);
    }
}
