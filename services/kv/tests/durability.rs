//! The durability mode is really in force: kill -9 alone cannot prove fsync (the page cache
//! survives a process kill), so this runs a shard under `strace` and counts `fsync` /
//! `fdatasync` calls: every committed write must have forced the redb file before it was
//! acknowledged. With `Durability::None` the count stays near zero and this fails.
//!
//! Needs `strace` (Debian: `apt-get install strace`); outside CI the test skips without it, with
//! `CI=true` it fails and says so.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tempdir;
use kv_client::Client;

fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_commit_was_fsynced() {
    if !strace_available() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "strace is missing: install it (apt-get install strace) for the durability test"
        );
        eprintln!("skipping: strace is not installed");
        return;
    }
    let dir = tempdir("fsync");
    let log = dir.join("strace.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut strace = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_kv"))
        .env("KV_SHARDS", &url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("KV_DATA_DIR", dir.join("shard"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn strace");
    let client = Client::new(vec![url.clone()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{url}/healthz")).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the shard did not come up under strace"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    const WRITES: usize = 20;
    for i in 0..WRITES {
        client.put(&format!("k{i}"), "v").await.expect("commit");
    }
    // Read-only transactions have nothing to force.
    for i in 0..WRITES {
        client.get(&format!("k{i}")).await.expect("read");
    }
    // Stop the shard (SIGTERM to strace's child) so strace flushes its log and exits.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", strace.id()))
        .expect("strace's children");
    let kv_pid = children
        .split_whitespace()
        .next()
        .expect("kv pid")
        .to_string();
    Command::new("kill")
        .args(["-TERM", &kv_pid])
        .status()
        .expect("kill");
    strace.wait().expect("strace exits");
    let syncs = std::fs::read_to_string(&log)
        .expect("strace log")
        .lines()
        .filter(|l| l.contains("fsync(") || l.contains("fdatasync("))
        .count();
    std::fs::remove_dir_all(&dir).ok();
    println!(
        "{syncs} fsync/fdatasync calls for {WRITES} write commits and {WRITES} read-only ones"
    );
    assert!(
        syncs > WRITES,
        "{syncs} syncs for {WRITES} durable commits (+ the start-up one): durability is not immediate"
    );
    assert!(
        syncs < 2 * WRITES + 10,
        "{syncs} syncs: read-only transactions should force nothing"
    );
}
