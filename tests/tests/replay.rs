//! A transaction's message log, replayed through the pure core, gives the same states: the
//! coordinator as it ran over the real services (in-process, on fresh databases) is the core
//! and nothing else. For 2PC and 3PC checkouts that commit and that abort (a declined card: the
//! payment votes NO), the test reads `GET /transactions/{id}` and walks its `messages` in the
//! order the coordinator logged them:
//!
//! - each message the coordinator received (`in`) is fed to a fresh core as that participant's
//!   message; the messages the core sends in answer must be exactly the next messages the log
//!   shows going `out`, to the same participants, in the same order;
//! - at the end nothing the core asked to send is missing from the log, and the core's
//!   decision is the transaction's (`decision`, and its final state for 3PC).
//!
//! The log holds what the driver did, the core says what it should have done: a driver that
//! sent a message of its own, skipped one, or decided differently fails here. Timers are not in
//! the log, so only runs where none fired replay exactly (these do: nothing is slow or lost).
//! Paxos Commit is not replayed here (its log interleaves the acceptors' ballots).

use std::collections::VecDeque;

use reqwest::Method;
use serde_json::{Value, json};
use tandem_cli::client::{Client, checkout_input};
use tandem_protocols::three_phase::{self, CState, ThreePc};
use tandem_protocols::two_phase::{self, Msg as Msg2};
use tandem_protocols::{Action, Input, NodeId, Outcome, Role, Start, Vote};

/// A checkout as one `protocol` transaction, settled; its view (with the message log).
async fn transaction(c: &Client, protocol: &str, order: &str, card: &str) -> Value {
    let input = checkout_input(order, "widget", 1, card, "FR");
    let body = json!({ "protocol": protocol, "definition": "checkout", "input": input });
    let url = format!("{}/transactions?wait=20", c.orchestrator);
    let r = c.send_json(Method::POST, &url, &body).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let view = c
        .get(&format!("{}/transactions/{id}", c.orchestrator))
        .await
        .unwrap()
        .body;
    let state = view["state"].as_str().unwrap_or_default();
    assert!(state == "committed" || state == "aborted", "{view}");
    view
}

/// The participant index of a logged message (`peer` is `<step>:<service>`).
fn peer(m: &Value) -> u8 {
    let peer = m["peer"].as_str().unwrap();
    peer.split(':').next().unwrap().parse().unwrap()
}

/// Walk `log`: `input(m)` turns an `in` message into the core's input (None: not one the core
/// hears), `handle` feeds it and returns what the core sent as (participant, message as the log
/// shows it). Every `out` must be the next one expected. `expected` starts with what the core
/// (or the driver, for 3PC's initiator Begin) sent before any answer.
fn replay(
    log: &[Value],
    mut expected: VecDeque<(u8, Value)>,
    mut input: impl FnMut(&Value) -> Option<Vec<(u8, Value)>>,
) {
    for (i, m) in log.iter().enumerate() {
        match m["dir"].as_str().unwrap() {
            "in" => {
                if let Some(sent) = input(m) {
                    expected.extend(sent);
                }
            }
            "out" => {
                let got = (peer(m), out_of(m));
                let want = expected.pop_front();
                assert_eq!(
                    want.as_ref(),
                    Some(&got),
                    "message {i} of the log went out, the core did not send it next: {log:#?}"
                );
            }
            other => panic!("direction {other:?}"),
        }
    }
    assert!(
        expected.is_empty(),
        "the core sent messages the log does not show: {expected:?}\n{log:#?}"
    );
}

/// How an `out` message is compared: its kind, and for 3PC its logged core message (a send
/// without one is stored as `{}`).
fn out_of(m: &Value) -> Value {
    let detail = match &m["detail"] {
        Value::Object(o) if o.is_empty() => Value::Null,
        d => d.clone(),
    };
    json!([m["kind"], detail])
}

/// A 2PC core message as the driver logs it going out (`detail` is null for 2PC sends).
fn logged_2pc(msg: &Msg2) -> Value {
    let kind = match msg {
        Msg2::Prepare => "prepare",
        Msg2::Outcome(Outcome::Commit) => "commit",
        Msg2::Outcome(Outcome::Abort) => "abort",
        other => panic!("the 2PC coordinator does not send {other:?} to a participant"),
    };
    json!([kind, null])
}

/// What a core sent to participants, as (participant, the message as the log shows it).
fn sends<M, R, T>(actions: &[Action<M, R, T>], logged: impl Fn(&M) -> Value) -> Vec<(u8, Value)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                to: NodeId::Participant(p),
                msg,
            } => Some((*p, logged(msg))),
            _ => None,
        })
        .collect()
}

/// Replay a 2PC transaction's log; the core's decision.
fn replay_2pc(view: &Value) -> Option<Outcome> {
    let n = view["participants"].as_array().unwrap().len() as u8;
    let mut core = two_phase::Coordinator::new(n);
    let mut decision = None;
    let mut decided = |actions: &[Action<Msg2, two_phase::Record, two_phase::Timer>]| {
        for a in actions {
            match a {
                Action::ForceWrite(two_phase::Record::Commit) => decision = Some(Outcome::Commit),
                Action::Decide(Outcome::Abort) => decision = Some(Outcome::Abort),
                _ => {}
            }
        }
    };
    let first = core.handle(Input::Begin);
    decided(&first);
    let log = view["messages"].as_array().unwrap();
    replay(log, sends(&first, logged_2pc).into(), |m| {
        let from = NodeId::Participant(peer(m));
        let msg = match (m["kind"].as_str().unwrap(), &m["detail"]) {
            ("vote", d) if d["vote"] == "yes" => Msg2::Vote(Vote::Yes),
            ("vote", _) => Msg2::Vote(Vote::No),
            // An abort's answer is not the core's business (presumed abort: no ack expected).
            ("ack", d) if d["outcome"] == "commit" => Msg2::Ack,
            ("ack", _) => return None,
            (kind, _) => panic!("the 2PC coordinator does not hear {kind:?}"),
        };
        let actions = core.handle(Input::Receive { from, msg });
        decided(&actions);
        Some(sends(&actions, logged_2pc))
    });
    decision
}

/// Replay a 3PC transaction's log; the core's final state.
fn replay_3pc(view: &Value) -> CState {
    let n = view["participants"].as_array().unwrap().len() as u8;
    let (mut core, first) =
        three_phase::Coordinator::start(&ThreePc { n }, NodeId::Coordinator(0), Vote::Yes);
    let logged =
        |msg: &three_phase::Msg| json!([tandem_kit::three_phase::kind(Some(msg)), json!(msg)]);
    // The initiator's Begin to participant 0 (no core message: the driver's), then the core's.
    let mut expected: VecDeque<(u8, Value)> =
        [(0, json!([tandem_kit::three_phase::kind(None), null]))].into();
    expected.extend(sends(&first, logged));
    let log = view["messages"].as_array().unwrap();
    replay(log, expected, |m| {
        let msg: three_phase::Msg = serde_json::from_value(m["detail"].clone())
            .unwrap_or_else(|e| panic!("{m}: not a 3PC message: {e}"));
        let actions = core.handle(Input::Receive {
            from: NodeId::Participant(peer(m)),
            msg,
        });
        Some(sends(&actions, logged))
    });
    core.state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2pc_and_a_3pc_message_log_replayed_through_the_core_give_the_same_states() {
    let (stack, c) = tandem_tests::in_process("replay", |_| {}).await;
    assert_eq!(c.set_stock("widget", 10).await.unwrap().status, 200);
    for (order, card, decision) in [
        ("r-ok", "tok_visa", "commit"),
        ("r-no", "tok_decline", "abort"),
    ] {
        let view = transaction(&c, "2pc", &format!("{order}-2pc"), card).await;
        assert_eq!(view["decision"], decision, "{view}");
        let want = if decision == "commit" {
            Outcome::Commit
        } else {
            Outcome::Abort
        };
        assert_eq!(replay_2pc(&view), Some(want), "{view:#}");

        let view = transaction(&c, "3pc", &format!("{order}-3pc"), card).await;
        assert_eq!(view["decision"], decision, "{view}");
        let want = if decision == "commit" {
            CState::Committed
        } else {
            CState::Aborted
        };
        assert_eq!(replay_3pc(&view), want, "{view:#}");
    }
    stack.stop().await.unwrap();
}
