//! The `orchestrator` binary itself: bad configuration is refused at once, with a message that
//! names the setting, and a non-zero exit (nothing is started, nothing is touched).
//!
//! Having an integration test also makes `cargo test` build this binary, with the same
//! dependency features as every other test target (the crash and chaos tests in `tests/`
//! spawn it).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run the binary with `env` added; it must exit within 10 s (a binary that accepted the bad
/// setting would start serving: it is killed and the test fails).
fn run_with(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the orchestrator binary runs");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("the orchestrator started with {env:?} instead of refusing it");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

#[test]
fn bad_settings_are_refused_naming_the_setting() {
    for (var, value, names) in [
        ("LISTEN_ADDR", "not-an-address", "--listen-addr"),
        ("LEASE_TTL_MS", "fifteen", "--lease-ttl-ms"),
        ("DB_POOL_SIZE", "-1", "--db-pool-size"),
        ("POLL_INTERVAL_MS", "0.5", "--poll-interval-ms"),
        // One way to persist a transition: group commit, with at least one writer.
        ("TRANSITION_WRITERS", "0", "--transition-writers"),
        ("LISTEN_HEARTBEAT_MS", "0", "--listen-heartbeat-ms"),
    ] {
        let (code, stderr) = run_with(&[(var, value)]);
        assert_eq!(code, Some(2), "{var}={value:?}: {stderr}");
        assert!(
            stderr.contains(names) && stderr.contains("invalid value"),
            "{var}={value:?} should be named in: {stderr}"
        );
    }
}

#[test]
fn help_lists_every_setting_with_its_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "DATABASE_URL",
        "LISTEN_ADDR",
        "INVENTORY_URL",
        "LEASE_TTL_MS",
        "POLL_INTERVAL_MS",
        "MAX_ACTIVE_SAGAS",
        "TRANSITION_WRITERS",
        "LISTEN_HEARTBEAT_MS",
    ] {
        assert!(
            help.contains(&format!("env: {var}")),
            "{var} missing from --help"
        );
    }
}
