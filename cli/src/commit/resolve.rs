//! `tandem commit resolve ID --commit|--abort [--reason TEXT]`: an operator's heuristic
//! decision for a 2PC transaction whose coordinator never comes back
//! (`POST /transactions/{id}/resolve`). The orchestrator takes the transaction's lease (fencing
//! its owner), logs the decision with who, when and why, and delivers it to the participants.

use clap::{ArgGroup, Args};
use serde_json::{Value, json};
use tandem_cli::client::Client;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("decision").required(true).args(["commit", "abort"])))]
pub struct ResolveArgs {
    /// The transaction's id.
    id: String,
    /// Commit it (refused unless every participant's YES vote is logged).
    #[arg(long)]
    commit: bool,
    /// Abort it.
    #[arg(long)]
    abort: bool,
    /// Why (kept in the transaction's log).
    #[arg(long, default_value = "")]
    reason: String,
    /// Who decides (kept in the transaction's log; default: $USER).
    #[arg(long)]
    operator: Option<String>,
    /// The orchestrator to ask (any instance).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    orchestrator_url: String,
    /// Seconds to wait for the participants to be told (0: do not wait).
    #[arg(long, default_value_t = 30)]
    wait: u32,
}

pub async fn run(a: ResolveArgs) -> anyhow::Result<()> {
    let decision = if a.commit { "commit" } else { "abort" };
    let operator = a
        .operator
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    let base = a.orchestrator_url.trim_end_matches('/');
    let c = Client::new(base, base, base, base);
    eprintln!(
        "WARNING: a heuristic decision overrides 2PC's coordinator: {decision} transaction {} \
         (operator {operator:?}, reason {:?}). It is recorded in the transaction's log.",
        a.id, a.reason
    );
    let body = json!({ "decision": decision, "reason": a.reason, "operator": operator });
    let url = format!("{base}/transactions/{}/resolve", a.id);
    let r = c.send_json(reqwest::Method::POST, &url, &body).await?;
    if r.status >= 300 {
        anyhow::bail!(
            "{url} answered {}: {}",
            r.status,
            r.body["detail"]
                .as_str()
                .map_or_else(|| r.body.to_string(), str::to_string)
        );
    }
    let t = if a.wait > 0 {
        let url = format!("{base}/transactions/{}?wait={}", a.id, a.wait);
        c.get(&url).await?.body
    } else {
        r.body.clone()
    };
    print_outcome(&r.body, &t);
    Ok(())
}

fn print_outcome(resolved: &Value, t: &Value) {
    let what = if resolved["recorded"] == true {
        "recorded"
    } else {
        "already logged (nothing recorded)"
    };
    println!(
        "transaction {}: decision {} {what}; state {}",
        t["id"], t["decision"], t["state"]
    );
    for p in t["participants"].as_array().into_iter().flatten() {
        println!(
            "  {:<10} vote {:<5} state {}",
            p["service"].as_str().unwrap_or("?"),
            p["vote"].as_str().unwrap_or("-"),
            p["state"].as_str().unwrap_or("?")
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::ResolveArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ResolveArgs,
    }

    #[test]
    fn exactly_one_decision_is_required() {
        let parse = |a: &[&str]| Cli::try_parse_from([&["tandem"], a].concat());
        let ok = parse(&["0197", "--abort", "--reason", "gone"])
            .unwrap()
            .args;
        assert!(ok.abort && !ok.commit && ok.reason == "gone");
        assert!(parse(&["0197"]).is_err(), "a decision is required");
        assert!(parse(&["0197", "--commit", "--abort"]).is_err(), "only one");
        assert!(parse(&["--commit"]).is_err(), "the id is required");
    }
}
