//! compose.yaml against the workspace it deploys. No Docker engine runs where Tandem is built and
//! tested, so compose.yaml is never started here; CI checks its syntax with
//! `docker-compose config` (`.ci/steps/40-compose.sh`) and these tests check what it means to
//! Tandem:
//!
//! - every service that runs the Tandem image names a binary of this workspace (from
//!   `cargo metadata`), and every environment variable it sets is one that binary accepts — read
//!   from the binary's own `--help` (`[env: NAME=]`), with its value among the `possible values`
//!   where clap lists them. Renaming a binary or a setting without updating compose.yaml fails;
//! - every setting a binary accepts is spelled out in compose.yaml, or listed below as left at
//!   its default with the reason;
//! - addresses agree: health checks and published ports use the port the service listens on,
//!   the orchestrators' service URLs name compose services on their ports, the orchestrator
//!   instances share one database under distinct `INSTANCE_ID`s; every binary logs in as its
//!   database's runtime role and migrates as its owner role (least privilege).
//!
//! The binaries come from `cargo test --workspace --no-run` (`tandem_tests::procs::bin_dir`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use yaml_rust2::{Yaml, YamlLoader};

/// Variables the binaries read outside clap (so `--help` does not list them), and who reads them.
const OUTSIDE_CLAP: &[(&str, &str)] = &[
    (
        "RUST_LOG",
        "the tracing filter (tandem_kit::http::init_tracing)",
    ),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTLP trace export, off when unset (tandem_kit::telemetry); standard OpenTelemetry SDK variables (OTEL_SERVICE_NAME, OTEL_BSP_*) tune it",
    ),
    (
        "TANDEM_METRICS",
        "the metrics switch, `off` records nothing (tandem_kit::metrics::enabled)",
    ),
    (
        "OTEL_SDK_DISABLED",
        "the standard OpenTelemetry switch, `true` installs no tracing layer (tandem_kit::telemetry::disabled)",
    ),
    (
        "OTEL_SERVICE_NAME",
        "the service.name of exported spans, default the binary's name (tandem_kit::telemetry)",
    ),
    (
        "NO_COLOR",
        "tracing-subscriber: plain log lines without ANSI colour codes",
    ),
];

/// Settings compose.yaml may leave at their defaults: (binary — `*` for every one — variable,
/// why).
const LEFT_AT_DEFAULT: &[(&str, &str, &str)] = &[
    (
        "*",
        "TANDEM_TOKENS_FILE",
        "compose passes the tokens in TANDEM_TOKENS; mount a file and set it to keep them out of the environment",
    ),
    (
        "orchestrator",
        "DEFINITIONS_DIR",
        "only the built-in checkout is deployed; mount a directory and set it to load more",
    ),
    (
        "orchestrator",
        "EXTRA_SERVICES",
        "the checkout calls inventory, payment and shipping, which have settings of their own",
    ),
];

/// One compose service, as far as these checks need it.
#[derive(Debug)]
struct Service {
    name: String,
    image: String,
    build: bool,
    command: Vec<String>,
    env: BTreeMap<String, String>,
    ports: Vec<String>,
    healthcheck: Vec<String>,
}

impl Service {
    /// Runs the image the Dockerfile builds (as opposed to `postgres:16` and the like).
    fn is_tandem(&self) -> bool {
        let repo = self.image.split(':').next().unwrap_or_default();
        self.build
            || repo
                .rsplit('/')
                .next()
                .is_some_and(|r| r.starts_with("tandem"))
    }

    fn binary(&self) -> &str {
        self.command.first().map(String::as_str).unwrap_or_default()
    }

    /// The port of `LISTEN_ADDR` (host:port).
    fn listen_port(&self) -> Option<&str> {
        self.env
            .get("LISTEN_ADDR")?
            .rsplit_once(':')
            .map(|(_, p)| p)
    }
}

/// What a binary accepts: env name → (flag, possible values if clap lists them).
#[derive(Debug, Default)]
struct Accepts {
    settings: BTreeMap<String, (String, Option<Vec<String>>)>,
    flags: BTreeSet<String>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A string or a list of strings (compose accepts both for `command` and `healthcheck.test`).
fn words(y: &Yaml) -> Vec<String> {
    match y {
        Yaml::Array(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other)
            .map(|s| s.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
    }
}

/// `environment:` as a map or as a list of `NAME=value`.
fn environment(y: &Yaml) -> BTreeMap<String, String> {
    match y {
        Yaml::Hash(h) => h
            .iter()
            .filter_map(|(k, v)| Some((scalar(k)?, scalar(v).unwrap_or_default())))
            .collect(),
        Yaml::Array(items) => items
            .iter()
            .filter_map(scalar)
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv, String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn load_compose() -> Vec<Service> {
    let path = root().join("compose.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let docs = YamlLoader::load_from_str(&text).expect("compose.yaml is YAML");
    let services = docs[0]["services"]
        .as_hash()
        .expect("compose.yaml has a services map");
    services
        .iter()
        .map(|(name, s)| Service {
            name: scalar(name).expect("service names are strings"),
            image: scalar(&s["image"]).unwrap_or_default(),
            build: !s["build"].is_badvalue(),
            command: words(&s["command"]),
            env: environment(&s["environment"]),
            ports: s["ports"]
                .as_vec()
                .map(|p| p.iter().filter_map(scalar).collect())
                .unwrap_or_default(),
            healthcheck: words(&s["healthcheck"]["test"]),
        })
        .collect()
}

/// The compose value as a container would see it: `${NAME:-default}` → `default`, `${NAME}` →
/// empty (these tests run without the deployment's variables).
fn interpolated(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        let inner = &rest[start + 2..start + end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// The workspace's binaries, from `cargo metadata` (not from target/, which keeps stale ones).
fn workspace_binaries() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .output()
        .expect("running cargo metadata");
    assert!(out.status.success(), "cargo metadata failed");
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.contains(&"bin".into()))
        })
        .filter_map(|t| t["name"].as_str().map(String::from))
        .collect()
}

/// `text` between `open` and the next `close`, after `from`.
fn between<'a>(text: &'a str, open: &str, close: char) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

/// Parse clap's `--help`: each option starts a block (a line beginning with `-`); its
/// description carries `[env: NAME=]` (`[env: NAME]` when the value is hidden) and, for enums, `[possible values: a, b]`.
fn parse_help(help: &str) -> Accepts {
    let mut accepts = Accepts::default();
    let mut blocks: Vec<String> = Vec::new();
    for line in help.lines() {
        if line.trim_start().starts_with('-') {
            blocks.push(String::new());
        }
        if let Some(block) = blocks.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    for block in blocks {
        let Some(flag) = block.split_whitespace().find(|w| w.starts_with("--")) else {
            continue;
        };
        let flag = flag.trim_end_matches(',').to_string();
        accepts.flags.insert(flag.clone());
        // `[env: NAME=value]`, or `[env: NAME]` for a setting whose value clap hides (tokens).
        if let Some(env) = between(&block, "[env: ", ']').map(|e| e.split('=').next().unwrap_or(e))
        {
            let possible = between(&block, "[possible values: ", ']')
                .map(|v| v.split(", ").map(String::from).collect());
            accepts.settings.insert(env.to_string(), (flag, possible));
        }
    }
    accepts
}

/// `<binary> --help`, with an empty environment so no value of ours shows up in it.
fn accepts(binary: &str) -> Accepts {
    let path = tandem_tests::procs::bin_dir().join(binary);
    let out = Command::new(&path)
        .arg("--help")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {} --help: {e}", path.display()));
    assert!(out.status.success(), "{binary} --help failed");
    let accepts = parse_help(&String::from_utf8_lossy(&out.stdout));
    assert!(
        accepts.settings.contains_key("DATABASE_URL"),
        "{binary} --help lists no DATABASE_URL: the help format changed and this parser needs updating"
    );
    accepts
}

/// The Tandem services of compose.yaml and what each one's binary accepts. At least the two
/// orchestrators and three services the deployment promises.
fn tandem_services() -> Vec<(Service, Accepts)> {
    let binaries = workspace_binaries();
    let mut out = Vec::new();
    for s in load_compose().into_iter().filter(Service::is_tandem) {
        assert!(
            binaries.contains(s.binary()),
            "compose service {} runs {:?}, which is not a binary of this workspace (binaries: {binaries:?})",
            s.name,
            s.command
        );
        let a = accepts(s.binary());
        out.push((s, a));
    }
    let count = |bin: &str| out.iter().filter(|(s, _)| s.binary() == bin).count();
    assert!(
        count("orchestrator") >= 2,
        "compose.yaml must run two orchestrator instances"
    );
    for bin in ["inventory", "payment", "shipping"] {
        assert_eq!(count(bin), 1, "compose.yaml must run {bin} once");
    }
    out
}

/// What is wrong with one service's command line and environment.
fn setting_problems(s: &Service, a: &Accepts) -> Vec<String> {
    let mut problems = Vec::new();
    for arg in s.command.iter().skip(1) {
        let flag = arg.split('=').next().unwrap_or_default();
        if flag.starts_with("--") && !a.flags.contains(flag) {
            problems.push(format!(
                "{}: `{} {flag}` is not a flag of {}",
                s.name,
                s.binary(),
                s.binary()
            ));
        }
    }
    for (name, value) in &s.env {
        if OUTSIDE_CLAP.iter().any(|(n, _)| n == name) {
            continue;
        }
        let Some((flag, possible)) = a.settings.get(name) else {
            problems.push(format!(
                "{}: {name} is not a setting of {} (it accepts {:?})",
                s.name,
                s.binary(),
                a.settings.keys().collect::<Vec<_>>()
            ));
            continue;
        };
        let value = interpolated(value);
        if let Some(possible) = possible
            && !possible.contains(&value)
        {
            problems.push(format!(
                "{}: {name}={value:?} is not one of {possible:?} ({} {flag})",
                s.name,
                s.binary()
            ));
        }
    }
    problems
}

#[test]
fn every_service_runs_a_workspace_binary_with_settings_it_accepts() {
    let problems: Vec<String> = tandem_services()
        .iter()
        .flat_map(|(s, a)| setting_problems(s, a))
        .collect();
    assert!(
        problems.is_empty(),
        "compose.yaml:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_setting_is_spelled_out() {
    let mut missing = Vec::new();
    for (s, a) in tandem_services() {
        for name in a.settings.keys() {
            let defaulted = LEFT_AT_DEFAULT
                .iter()
                .any(|(bin, n, _)| (*bin == s.binary() || *bin == "*") && n == name);
            if !defaulted && !s.env.contains_key(name) {
                missing.push(format!("{}: {name}", s.name));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "settings compose.yaml leaves unsaid (set them, or add them to LEFT_AT_DEFAULT with the reason):\n  {}",
        missing.join("\n  ")
    );
}

/// Health checks and published ports use the listening port; service URLs name a compose
/// service on its port; orchestrators share a database under distinct identities.
fn address_problems(services: &[(Service, Accepts)]) -> Vec<String> {
    let mut problems = Vec::new();
    let port_of = |name: &str| {
        services
            .iter()
            .find(|(s, _)| s.name == name)
            .and_then(|(s, _)| s.listen_port())
    };
    for (s, _) in services {
        let port = s.listen_port().unwrap_or("?");
        if !s
            .healthcheck
            .iter()
            .any(|w| w.contains(&format!(":{port}/healthz")))
        {
            problems.push(format!(
                "{}: the health check does not ask :{port}/healthz ({:?})",
                s.name, s.healthcheck
            ));
        }
        if s.ports.iter().any(|p| !p.ends_with(&format!(":{port}"))) {
            problems.push(format!(
                "{}: published ports {:?} do not map to :{port}",
                s.name, s.ports
            ));
        }
        for (name, url) in s
            .env
            .iter()
            .filter(|(n, _)| n.ends_with("_URL") && !n.starts_with("DATABASE_"))
        {
            if let Some(host_port) = url.strip_prefix("nats://") {
                // Not a Tandem service: the NATS server of compose, on its client port.
                let (host, p) = host_port.rsplit_once(':').unwrap_or((host_port, ""));
                let is_nats = load_compose()
                    .iter()
                    .any(|c| c.name == host && c.image.starts_with("nats:"));
                if !is_nats || p != "4222" {
                    problems.push(format!(
                        "{}: {name}={url} is not compose's NATS service on port 4222",
                        s.name
                    ));
                }
                continue;
            }
            let host_port = url.trim_start_matches("http://").trim_end_matches('/');
            let (host, p) = host_port.rsplit_once(':').unwrap_or((host_port, ""));
            if port_of(host) != Some(p) {
                problems.push(format!(
                    "{}: {name}={url} is not a compose service on its LISTEN_ADDR port",
                    s.name
                ));
            }
        }
    }
    for (s, _) in services {
        if let Some(problem) = least_privilege_problem(s) {
            problems.push(format!("{}: {problem}", s.name));
        }
    }
    let orchestrators: Vec<&Service> = services
        .iter()
        .map(|(s, _)| s)
        .filter(|s| s.binary() == "orchestrator")
        .collect();
    let dbs: BTreeSet<_> = orchestrators
        .iter()
        .map(|s| s.env.get("DATABASE_URL"))
        .collect();
    let ids: BTreeSet<_> = orchestrators
        .iter()
        .filter_map(|s| s.env.get("INSTANCE_ID"))
        .collect();
    if dbs.len() != 1 {
        problems.push(format!(
            "the orchestrators must share one database, not {dbs:?}"
        ));
    }
    if ids.len() != orchestrators.len() {
        problems.push("every orchestrator needs an INSTANCE_ID of its own".into());
    }
    problems
}

/// `(user, database)` of a `postgres://user:password@host:port/database?…` URL.
fn user_and_database(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("postgres://")?;
    let (userinfo, rest) = rest.split_once('@')?;
    let user = userinfo.split(':').next()?;
    let database = rest.split_once('/')?.1.split('?').next()?;
    Some((user, database))
}

/// Least privilege (docs/security.md): the pools log in as the database's runtime role
/// `<database>_app` and the migrations run as its owner `<database>_owner`, never one role for
/// both.
fn least_privilege_problem(s: &Service) -> Option<String> {
    let runtime = s.env.get("DATABASE_URL").map(String::as_str);
    let owner = s.env.get("DATABASE_OWNER_URL").map(String::as_str);
    let (Some((app, db)), Some((own, owner_db))) = (
        runtime.and_then(user_and_database),
        owner.and_then(user_and_database),
    ) else {
        return Some(format!(
            "DATABASE_URL {runtime:?} and DATABASE_OWNER_URL {owner:?} must both be postgres://user:…@host/database URLs"
        ));
    };
    (db != owner_db || app != format!("{db}_app") || own != format!("{db}_owner")).then(|| {
        format!(
            "DATABASE_URL must log in as {db}_app and DATABASE_OWNER_URL as {db}_owner, both on {db} (got {app}@{db}, {own}@{owner_db})"
        )
    })
}

#[test]
fn addresses_agree() {
    let problems = address_problems(&tandem_services());
    assert!(
        problems.is_empty(),
        "compose.yaml:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn help_parser_reads_clap_output() {
    let help = "Usage: x [OPTIONS]\n\nOptions:\n      --fault-injection <FAULT_INJECTION>\n          \
                `on` mounts [env: FAULT_INJECTION=] [default: on] [possible values: on, off]\n      \
                --listen-addr <LISTEN_ADDR>\n          [env: LISTEN_ADDR=] [default: 127.0.0.1:8081]\n  \
                -h, --help\n          Print help\n";
    let a = parse_help(help);
    assert_eq!(
        a.settings.get("FAULT_INJECTION"),
        Some(&(
            "--fault-injection".to_string(),
            Some(vec!["on".to_string(), "off".to_string()])
        ))
    );
    assert_eq!(
        a.settings.get("LISTEN_ADDR").map(|s| s.0.as_str()),
        Some("--listen-addr")
    );
    assert!(a.flags.contains("--help") && !a.settings.contains_key("--help"));
    assert_eq!(interpolated("${A:-off}"), "off");
    assert_eq!(interpolated("postgres://t:${P}@h/db"), "postgres://t:@h/db");
}
