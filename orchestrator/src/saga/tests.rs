//! Unit and property tests of the pure saga engine. Time is a fixed instant the tests advance.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::definition::{Definition, DefinitionError, FieldError, canonical_json, render};
use super::engine::{
    Action, Admission, CallOutcome, Command, EventKind, EventRecord, Input, Refusal, Request,
    admit, backoff_delay, initial_state, transition,
};
use super::state::{Phase, SagaState, SagaStatus, StepStatus};

const CHECKOUT: &str = include_str!("../../../definitions/checkout.json");

fn checkout() -> Definition {
    Definition::parse(&serde_json::from_str(CHECKOUT).unwrap()).unwrap()
}

fn checkout_input() -> Value {
    json!({
        "order_id": "o-1",
        "customer_id": "c-1",
        "items": [{"sku": "sku-1", "quantity": 2}],
        "amount_cents": 1999,
        "currency": "EUR",
        "payment": {"card_token": "tok_ok"},
        "shipping": {"address": {"name": "A", "line1": "1 Road", "city": "Town", "postal_code": "12345", "country": "FR"}}
    })
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn ms(n: i64) -> chrono::TimeDelta {
    chrono::TimeDelta::milliseconds(n)
}

/// A definition with deterministic timing (no jitter) for the engine tests.
/// Steps `a`, `b` (no compensation), `c`.
fn abc() -> Definition {
    Definition::parse(&json!({
        "name": "abc",
        "policy": {
            "timeout_ms": 1000, "max_attempts": 3,
            "backoff": {"initial_ms": 100, "multiplier": 2.0, "max_ms": 300, "jitter": 0.0},
            "poll_interval_ms": 50, "deadline_ms": 200, "compensation_max_attempts": 2,
            "max_retry_after_ms": 1000
        },
        "steps": [
            {"name": "a", "action": {"service": "s", "method": "POST", "path": "/a", "body": {"k": {"$from": "/input/k"}}},
             "compensation": {"service": "s", "method": "POST", "path": "/a/undo", "body": {"k": {"$from": "/input/k"}}}},
            {"name": "b", "action": {"service": "s", "method": "POST", "path": "/b", "body": {"a": {"$from": "/steps/a/id"}}}},
            {"name": "c", "action": {"service": "t", "method": "PUT", "path": "/c", "body": {"saga": {"$from": "/saga/id"}}},
             "compensation": {"service": "t", "method": "DELETE", "path": "/c"}}
        ]
    }))
    .unwrap()
}

/// An operator's action by `ops`.
fn op(action: Action) -> Input {
    Input::Operator {
        action,
        by: "ops".to_string(),
    }
}

fn ok(body: Value) -> CallOutcome {
    CallOutcome::Success { status: 200, body }
}
fn conflict() -> CallOutcome {
    CallOutcome::BusinessFailure {
        status: 409,
        body: json!({"title": "Conflict", "detail": "declined"}),
    }
}
fn err500() -> CallOutcome {
    CallOutcome::Error {
        status: 500,
        body: json!({"detail": "boom"}),
    }
}

/// Drives one saga through the transition function, keeping everything it produced.
struct Sim<'a> {
    def: &'a Definition,
    id: String,
    input: Value,
    state: SagaState,
    now: DateTime<Utc>,
    rand: u64,
    events: Vec<EventRecord>,
    command: Command,
    /// Every call the engine asked for, in order.
    calls: Vec<(usize, Phase, u32, Request)>,
    transitions: usize,
}

impl<'a> Sim<'a> {
    fn new(def: &'a Definition, input: Value) -> Self {
        Sim {
            def,
            id: "saga-1".into(),
            input,
            state: initial_state(def),
            now: t0(),
            rand: 1 << 63,
            events: Vec::new(),
            command: Command::Stop,
            calls: Vec::new(),
            transitions: 0,
        }
    }

    fn started(def: &'a Definition, input: Value) -> Self {
        let mut sim = Sim::new(def, input);
        sim.apply(Input::Start);
        sim
    }

    fn apply(&mut self, input: Input) -> Command {
        let t = transition(
            self.def,
            &self.id,
            &self.input,
            &self.state,
            input,
            self.now,
            self.rand,
        );
        check_invariants(&t.state, &t.command);
        self.transitions += 1;
        self.state = t.state;
        self.events.extend(t.events);
        if let Command::Call {
            step,
            phase,
            attempt,
            request,
        } = &t.command
        {
            self.calls.push((*step, *phase, *attempt, request.clone()));
        }
        self.command = t.command.clone();
        t.command
    }

    /// Answer the call the engine asked for.
    fn answer(&mut self, outcome: CallOutcome) -> Command {
        let Command::Call {
            step,
            phase,
            attempt,
            ..
        } = self.command.clone()
        else {
            panic!("no call to answer: {:?}", self.command)
        };
        self.apply(Input::Result {
            step,
            phase,
            attempt,
            outcome,
        })
    }

    /// Advance the clock to the awaited instant and wake.
    fn wake_when_due(&mut self) -> Command {
        let Command::WaitUntil(at) = self.command.clone() else {
            panic!("not waiting: {:?}", self.command)
        };
        self.now = self.now.max(at);
        self.apply(Input::Wake)
    }

    fn kinds(&self) -> Vec<(EventKind, Option<&str>)> {
        self.events
            .iter()
            .map(|e| (e.kind, e.step.as_deref()))
            .collect()
    }

    /// The kinds of the events so far.
    fn event_kinds(&self) -> Vec<EventKind> {
        self.events.iter().map(|e| e.kind).collect()
    }

    fn call_steps(&self, phase: Phase) -> Vec<usize> {
        self.calls
            .iter()
            .filter(|c| c.1 == phase)
            .map(|c| c.0)
            .collect()
    }
}

/// Assert that `text` is there and contains `needle`.
#[track_caller]
fn assert_contains(text: Option<&str>, needle: &str) {
    let text =
        text.unwrap_or_else(|| panic!("no text where one containing {needle:?} was expected"));
    assert!(
        text.contains(needle),
        "{text:?} does not contain {needle:?}"
    );
}

/// The checkout's log up to the charge being sent.
const CHARGE_SENT: [(EventKind, Option<&str>); 4] = [
    (EventKind::SagaStarted, None),
    (EventKind::StepStarted, Some("reserve_inventory")),
    (EventKind::StepSucceeded, Some("reserve_inventory")),
    (EventKind::StepStarted, Some("charge_payment")),
];

/// State/command consistency after every transition.
fn check_invariants(state: &SagaState, command: &Command) {
    match command {
        Command::Call {
            step,
            phase,
            attempt,
            request,
        } => {
            assert_eq!(
                state.in_flight,
                Some((*step, *phase, *attempt)),
                "a call is recorded as in flight"
            );
            assert_eq!(state.next_attempt_at, None);
            assert!(matches!(
                state.status,
                SagaStatus::Running | SagaStatus::Compensating
            ));
            assert!(
                request
                    .idempotency_key
                    .ends_with(&format!(":{}", phase.as_str()))
            );
            let s = &state.steps[*step];
            match phase {
                Phase::Action => {
                    assert_eq!(s.status, StepStatus::Running);
                    assert_eq!(s.attempts, *attempt);
                }
                Phase::Compensation => {
                    assert_eq!(s.status, StepStatus::Compensating);
                    assert_eq!(s.compensation_attempts, *attempt);
                }
            }
            assert!(s.first_sent_at.is_some());
        }
        Command::WaitUntil(at) => {
            assert_eq!(state.in_flight, None);
            assert!(matches!(
                state.status,
                SagaStatus::Running | SagaStatus::Compensating
            ));
            if let Some(next) = state.next_attempt_at {
                assert_eq!(next, *at);
            }
        }
        Command::Stop => {
            assert!(
                state.status.is_terminal() || state.status == SagaStatus::Failed,
                "{state:?}"
            );
            assert_eq!(state.in_flight, None);
            assert_eq!(state.next_attempt_at, None);
        }
    }
}

fn invalid(doc: Value) -> Vec<FieldError> {
    match Definition::parse(&doc) {
        Err(DefinitionError::Invalid(errs)) => errs,
        Ok(d) => panic!("expected errors, parsed {d:?}"),
    }
}

fn pointers(errs: &[FieldError]) -> Vec<&str> {
    errs.iter().map(|e| e.pointer.as_str()).collect()
}

fn minimal() -> Value {
    json!({"name": "m", "steps": [{"name": "one", "action": {"service": "s", "method": "POST", "path": "/x"}}]})
}

// ---------------------------------------------------------------- definitions

#[test]
fn shipped_checkout_definition_parses() {
    let def = checkout();
    assert_eq!(def.name, "checkout");
    let names: Vec<&str> = def.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["reserve_inventory", "charge_payment", "create_shipment"]
    );
    assert!(def.steps.iter().all(|s| s.compensation.is_some()));
    assert_eq!(def.policy(1).max_attempts, 6);
    assert_eq!(def.policy(2).poll_interval_ms, 200);
    assert_eq!(def.business_key(&checkout_input()).as_deref(), Some("o-1"));
    assert_eq!(def.validate_input(&checkout_input()), Ok(()));
    // The resolved definition survives serde (e.g. for caching) unchanged.
    let text = serde_json::to_string(&def).unwrap();
    assert_eq!(serde_json::from_str::<Definition>(&text).unwrap(), def);
}

#[test]
fn version_is_canonical_content_hash() {
    let doc: Value = serde_json::from_str(CHECKOUT).unwrap();
    let v = Definition::version_of(&doc);
    assert_eq!(v.len(), 64);
    assert!(v.chars().all(|c| c.is_ascii_hexdigit()));
    // Same document, other formatting and key order.
    let compact = serde_json::to_string(&doc).unwrap();
    let pretty = serde_json::to_string_pretty(&doc).unwrap();
    assert_eq!(
        Definition::version_of(&serde_json::from_str(&compact).unwrap()),
        v
    );
    assert_eq!(
        Definition::version_of(&serde_json::from_str(&pretty).unwrap()),
        v
    );
    let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#).unwrap();
    let b: Value =
        serde_json::from_str(r#"{ "a" : { "x" : null , "y" : [1,2] } , "b" : 1 }"#).unwrap();
    assert_eq!(canonical_json(&a), r#"{"a":{"x":null,"y":[1,2]},"b":1}"#);
    assert_eq!(Definition::version_of(&a), Definition::version_of(&b));
    // Any change → another version.
    let mut changed = doc.clone();
    changed["policy"]["max_attempts"] = json!(7);
    assert_ne!(Definition::version_of(&changed), v);
}

#[test]
fn step_policy_overrides_merge_field_by_field() {
    let mut doc = minimal();
    doc["policy"] = json!({"max_attempts": 9, "backoff": {"initial_ms": 50, "jitter": 0.5}});
    doc["steps"][0]["policy"] = json!({"timeout_ms": 42, "backoff": {"max_ms": 60}});
    doc["steps"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "two", "action": {"service": "s", "method": "GET", "path": "/y"}}));
    let def = Definition::parse(&doc).unwrap();
    let p0 = def.policy(0);
    assert_eq!((p0.timeout_ms, p0.max_attempts), (42, 9));
    assert_eq!(
        (p0.backoff.initial_ms, p0.backoff.max_ms, p0.backoff.jitter),
        (50, 60, 0.5)
    );
    assert_eq!(p0.backoff.multiplier, 2.0); // the built-in default
    let p1 = def.policy(1);
    assert_eq!(
        (p1.timeout_ms, p1.max_attempts, p1.backoff.max_ms),
        (5000, 9, 5000)
    );
    assert_eq!(p1, &def.policy);
}

#[test]
fn definition_errors_are_located_by_pointer() {
    let mut doc = minimal();
    doc["extra"] = json!(1);
    assert_eq!(pointers(&invalid(doc)), ["/extra"]);

    let mut doc = minimal();
    doc["steps"][0]["retries"] = json!(1);
    doc["steps"][0]["action"]["method"] = json!("FETCH");
    doc["steps"][0]["action"]["path"] = json!("x");
    assert_eq!(
        pointers(&invalid(doc)),
        [
            "/steps/0/retries",
            "/steps/0/action/method",
            "/steps/0/action/path"
        ]
    );

    let mut doc = minimal();
    let first = doc["steps"][0].clone();
    doc["steps"].as_array_mut().unwrap().push(first);
    assert_eq!(pointers(&invalid(doc)), ["/steps/1/name"]);

    for bad in ["", "Bad", "a-b", "a:b", "a b"] {
        let mut doc = minimal();
        doc["steps"][0]["name"] = json!(bad);
        assert_eq!(pointers(&invalid(doc)), ["/steps/0/name"], "{bad:?}");
    }

    let mut doc = minimal();
    doc["steps"][0]["action"]
        .as_object_mut()
        .unwrap()
        .remove("service");
    assert_eq!(pointers(&invalid(doc)), ["/steps/0/action/service"]);

    assert_eq!(
        pointers(&invalid(json!({"name": "m", "steps": []}))),
        ["/steps"]
    );
    assert_eq!(
        pointers(&invalid(json!({"steps": minimal()["steps"]}))),
        ["/name"]
    );
    assert_eq!(pointers(&invalid(json!([1]))), [""]);
}

#[test]
fn template_pointers_are_checked() {
    let two = |action_body: Value, comp_body: Value| {
        json!({"name": "m", "steps": [
            {"name": "one", "action": {"service": "s", "method": "POST", "path": "/x"}},
            {"name": "two", "action": {"service": "s", "method": "POST", "path": "/y", "body": action_body},
             "compensation": {"service": "s", "method": "POST", "path": "/z", "body": comp_body}}
        ]})
    };
    // Valid: input, earlier steps, saga id; a compensation may read its own step's output.
    let fine = two(
        json!({"a": {"$from": "/input/x/0"}, "b": [{"$from": "/steps/one/id"}], "c": {"$from": "/saga/id"}}),
        json!({"d": {"$from": "/steps/two/charge_id"}, "e": {"$from": "/input"}}),
    );
    Definition::parse(&fine).unwrap();

    let cases = [
        (
            json!({"a": {"$from": "/steps/two/id"}}),
            "/steps/1/action/body/a/$from",
        ), // itself
        (
            json!({"a": {"$from": "/steps/later/id"}}),
            "/steps/1/action/body/a/$from",
        ),
        (
            json!({"a": [{"$from": "/output/x"}]}),
            "/steps/1/action/body/a/0/$from",
        ),
        (
            json!({"a": {"$from": "input/x"}}),
            "/steps/1/action/body/a/$from",
        ),
        (
            json!({"a": {"$from": "/input/~2"}}),
            "/steps/1/action/body/a/$from",
        ),
        (
            json!({"a": {"$from": "/saga/name"}}),
            "/steps/1/action/body/a/$from",
        ),
        (json!({"a": {"$from": 3}}), "/steps/1/action/body/a/$from"),
        (
            json!({"a": {"$from": "/input/x", "b": 1}}),
            "/steps/1/action/body/a",
        ),
    ];
    for (body, at) in cases {
        assert_eq!(
            pointers(&invalid(two(body.clone(), json!(null)))),
            [at],
            "{body}"
        );
    }
    let errs = invalid(two(json!(null), json!({"x": {"$from": "/steps/three/x"}})));
    assert_eq!(pointers(&errs), ["/steps/1/compensation/body/x/$from"]);
}

#[test]
fn policy_ranges_business_key_and_schema_are_checked() {
    let mut doc = minimal();
    doc["policy"] =
        json!({"max_attempts": 0, "backoff": {"multiplier": 0.5, "jitter": 1.5}, "timeout_ms": 0});
    doc["steps"][0]["policy"] =
        json!({"compensation_max_attempts": 0, "deadline_ms": -1, "bogus": 1});
    let errs = invalid(doc);
    let mut got = pointers(&errs);
    got.sort();
    assert_eq!(
        got,
        [
            "/policy/backoff/jitter",
            "/policy/backoff/multiplier",
            "/policy/max_attempts",
            "/policy/timeout_ms",
            "/steps/0/policy/bogus",
            "/steps/0/policy/compensation_max_attempts",
            "/steps/0/policy/deadline_ms",
        ]
    );

    let mut doc = minimal();
    doc["policy"] = json!({"backoff": {"initial_ms": 500, "max_ms": 100}});
    assert_eq!(pointers(&invalid(doc)), ["/policy/backoff/max_ms"]);

    let mut doc = minimal();
    doc["business_key"] = json!("order_id");
    assert_eq!(pointers(&invalid(doc)), ["/business_key"]);

    let mut doc = minimal();
    doc["input_schema"] = json!({"type": "objekt"});
    let errs = invalid(doc);
    assert!(errs[0].pointer.starts_with("/input_schema"), "{errs:?}");
    assert!(errs[0].message.contains("does not compile"));
}

#[test]
fn invalid_inputs_name_the_field() {
    let def = checkout();
    let check = |mutate: &dyn Fn(&mut Value), expected: &[&str]| {
        let mut input = checkout_input();
        mutate(&mut input);
        let errs = def.validate_input(&input).unwrap_err();
        let mut got = pointers(&errs);
        got.sort();
        assert_eq!(got, expected, "{errs:?}");
        assert!(errs.iter().all(|e| !e.message.is_empty()));
    };
    check(
        &|i| drop(i.as_object_mut().unwrap().remove("order_id")),
        &["/order_id"],
    );
    check(
        &|i| i["items"][0]["quantity"] = json!(0),
        &["/items/0/quantity"],
    );
    check(
        &|i| i["items"][0]["quantity"] = json!("2"),
        &["/items/0/quantity"],
    );
    check(&|i| i["amount_cents"] = json!(0), &["/amount_cents"]);
    check(&|i| i["currency"] = json!("euro"), &["/currency"]);
    check(&|i| i["items"] = json!([]), &["/items"]);
    check(
        &|i| i["shipping"]["address"]["country"] = json!(null),
        &["/shipping/address/country"],
    );
    check(
        &|i| drop(i["payment"].as_object_mut().unwrap().remove("card_token")),
        &["/payment/card_token"],
    );
    check(&|i| i["coupon"] = json!("x"), &["/coupon"]);
    check(
        &|i| {
            i["items"].as_array_mut().unwrap().push(json!(null));
            i["customer_id"] = json!("");
        },
        &["/customer_id", "/items/1"],
    );
    let missing = def.validate_input(&json!({})).unwrap_err();
    assert_eq!(missing.len(), 7);
    assert!(
        missing
            .iter()
            .any(|e| e.pointer == "/order_id" && e.message.contains("order_id"))
    );
    assert_eq!(
        pointers(&def.validate_input(&json!([1])).unwrap_err()),
        [""]
    );
}

#[test]
fn without_schema_any_object_is_accepted() {
    let def = Definition::parse(&minimal()).unwrap();
    assert_eq!(def.validate_input(&json!({"anything": [1, 2]})), Ok(()));
    assert_eq!(
        pointers(&def.validate_input(&json!("text")).unwrap_err()),
        [""]
    );
    assert_eq!(def.business_key(&json!({"order_id": "x"})), None);
}

#[test]
fn business_key_scalars() {
    let mut doc = minimal();
    doc["business_key"] = json!("/order/id");
    let def = Definition::parse(&doc).unwrap();
    assert_eq!(
        def.business_key(&json!({"order": {"id": "k"}})).as_deref(),
        Some("k")
    );
    assert_eq!(
        def.business_key(&json!({"order": {"id": 12}})).as_deref(),
        Some("12")
    );
    assert_eq!(def.business_key(&json!({"order": {"id": null}})), None);
    assert_eq!(def.business_key(&json!({})), None);
}

#[test]
fn render_replaces_from_objects() {
    let ctx = json!({"saga": {"id": "s1"}, "input": {"a": [10, {"b": "x"}], "a/b": 5}, "steps": {"one": {"id": 7}}});
    let t = json!({"id": {"$from": "/saga/id"}, "list": [{"$from": "/input/a/1/b"}, 3, {"k": {"$from": "/steps/one/id"}}],
                   "esc": {"$from": "/input/a~1b"}, "lit": "text", "n": null});
    assert_eq!(
        render(&t, &ctx).unwrap(),
        json!({"id": "s1", "list": ["x", 3, {"k": 7}], "esc": 5, "lit": "text", "n": null})
    );
    let err = render(&json!({"x": {"$from": "/steps/two/id"}}), &ctx).unwrap_err();
    assert!(err.contains("/steps/two/id"), "{err}");
}

// ---------------------------------------------------------------- engine

#[test]
fn start_records_the_first_call_before_it_is_sent() {
    let def = checkout();
    let mut sim = Sim::new(&def, checkout_input());
    let Command::Call {
        step,
        phase,
        attempt,
        request,
    } = sim.apply(Input::Start)
    else {
        panic!()
    };
    assert_eq!((step, phase, attempt), (0, Phase::Action, 1));
    assert_eq!(sim.state.in_flight, Some((0, Phase::Action, 1)));
    let s = &sim.state.steps[0];
    assert_eq!(
        (s.status, s.attempts, s.first_sent_at),
        (StepStatus::Running, 1, Some(t0()))
    );
    assert_eq!(request.idempotency_key, "saga-1:reserve_inventory:action");
    assert_eq!(
        (
            request.service.as_str(),
            request.method.as_str(),
            request.path.as_str()
        ),
        ("inventory", "POST", "/reservations")
    );
    let reservation = super::definition::derived_id("saga-1", "reservation").to_string();
    assert_eq!(
        request.body,
        json!({"order_id": "o-1", "items": [{"sku": "sku-1", "quantity": 2}],
               "reservation_id": reservation})
    );
    assert_eq!(request.timeout, Duration::from_millis(5000));
    assert_eq!(
        sim.kinds(),
        [
            (EventKind::SagaStarted, None),
            (EventKind::StepStarted, Some("reserve_inventory"))
        ]
    );
    // A second Start is a no-op that repeats the call in flight.
    let before = sim.state.clone();
    let n = sim.events.len();
    assert!(matches!(
        sim.apply(Input::Start),
        Command::Call { attempt: 1, .. }
    ));
    assert_eq!((sim.state.clone(), sim.events.len()), (before, n));
}

#[test]
fn checkout_success_completes() {
    let def = checkout();
    let mut sim = Sim::started(&def, checkout_input());
    sim.answer(ok(json!({"reservation_id": "r-9"})));
    let Command::Call { request, .. } = sim.answer(ok(json!({"charge_id": "ch-1"}))) else {
        panic!()
    };
    assert_eq!(request.idempotency_key, "saga-1:create_shipment:action");
    // The reservation id is allocated by the orchestrator (`{"$id": "reservation"}`), the same
    // one the reserve step sent.
    assert_eq!(
        request.body["reservation_id"],
        json!(super::definition::derived_id("saga-1", "reservation").to_string())
    );
    assert_eq!(request.body["address"]["country"], json!("FR"));
    assert_eq!(sim.answer(ok(json!({"shipment_id": "sh"}))), Command::Stop);
    assert_eq!(sim.state.status, SagaStatus::Completed);
    assert!(
        sim.state
            .steps
            .iter()
            .all(|s| s.status == StepStatus::Succeeded && s.attempts == 1)
    );
    assert_eq!(
        sim.state.steps[1].output,
        Some(json!({"charge_id": "ch-1"}))
    );
    use EventKind::*;
    assert_eq!(
        sim.kinds(),
        [
            CHARGE_SENT.as_slice(),
            &[
                (StepSucceeded, Some("charge_payment")),
                (StepStarted, Some("create_shipment")),
                (StepSucceeded, Some("create_shipment")),
                (SagaCompleted, None),
            ],
        ]
        .concat()
    );
    assert!(sim.call_steps(Phase::Compensation).is_empty());
}

#[test]
fn declined_payment_compensates_payment_then_inventory() {
    let def = checkout();
    let mut sim = Sim::started(&def, checkout_input());
    sim.answer(ok(json!({"reservation_id": "r"})));
    let Command::Call {
        step,
        phase,
        request,
        ..
    } = sim.answer(conflict())
    else {
        panic!()
    };
    assert_eq!((step, phase), (1, Phase::Compensation));
    assert_eq!(
        request.idempotency_key,
        "saga-1:charge_payment:compensation"
    );
    assert_eq!(request.path, "/refunds");
    assert_eq!(sim.state.status, SagaStatus::Compensating);
    assert_contains(sim.state.reason.as_deref(), "charge_payment");
    assert_eq!(sim.state.steps[2].status, StepStatus::Skipped);
    let Command::Call { request, .. } = sim.answer(ok(json!({}))) else {
        panic!()
    };
    assert_eq!(
        request.idempotency_key,
        "saga-1:reserve_inventory:compensation"
    );
    assert_eq!(sim.answer(ok(json!({}))), Command::Stop);
    assert_eq!(sim.state.status, SagaStatus::Compensated);
    let st: Vec<StepStatus> = sim.state.steps.iter().map(|s| s.status).collect();
    assert_eq!(
        st,
        [
            StepStatus::Compensated,
            StepStatus::Compensated,
            StepStatus::Skipped
        ]
    );
    use EventKind::*;
    assert_eq!(
        sim.kinds(),
        [
            CHARGE_SENT.as_slice(),
            &[
                (StepFailed, Some("charge_payment")),
                (SagaCompensating, Some("charge_payment")),
                (CompensationStarted, Some("charge_payment")),
                (CompensationSucceeded, Some("charge_payment")),
                (CompensationStarted, Some("reserve_inventory")),
                (CompensationSucceeded, Some("reserve_inventory")),
                (SagaCompensated, None),
            ],
        ]
        .concat()
    );
    let failed = &sim.events[4];
    assert_eq!(failed.detail["status"], json!(409));
    assert_contains(failed.detail["error"].as_str(), "declined");
}

#[test]
fn undeliverable_compensates_in_reverse_order() {
    let def = checkout();
    let mut sim = Sim::started(&def, checkout_input());
    sim.answer(ok(json!({"reservation_id": "r"})));
    sim.answer(ok(json!({"charge_id": "c"})));
    sim.answer(conflict());
    while let Command::Call { .. } = sim.command {
        sim.answer(ok(json!({})));
    }
    assert_eq!(sim.state.status, SagaStatus::Compensated);
    assert_eq!(sim.call_steps(Phase::Compensation), [2, 1, 0]);
}

#[test]
fn steps_without_compensation_or_never_sent_are_not_compensated() {
    let def = abc();
    let mut sim = Sim::started(&def, json!({"k": 1}));
    sim.answer(ok(json!({"id": 5})));
    let Command::Call { request, .. } = sim.command.clone() else {
        panic!()
    };
    assert_eq!(request.body, json!({"a": 5}));
    sim.answer(ok(json!({})));
    let Command::Call { request, .. } = sim.command.clone() else {
        panic!()
    };
    assert_eq!(request.body, json!({"saga": "saga-1"}));
    assert_eq!(
        (request.method.as_str(), request.service.as_str()),
        ("PUT", "t")
    );
    sim.answer(conflict()); // c failed: c compensated (sent), b has none, a compensated
    while let Command::Call { .. } = sim.command {
        sim.answer(ok(json!({})));
    }
    assert_eq!(sim.call_steps(Phase::Compensation), [2, 0]);
    assert_eq!(sim.state.steps[1].status, StepStatus::Succeeded);
    assert_eq!(sim.state.status, SagaStatus::Compensated);
}

#[test]
fn an_action_that_cannot_render_fails_unsent_and_is_not_compensated() {
    let def = abc();
    let mut sim = Sim::started(&def, json!({"k": 1}));
    sim.answer(ok(json!({"no_id": true}))); // b's body needs /steps/a/id
    // b failed without being sent; a (sent) is compensated.
    let Command::Call {
        step: 0,
        phase: Phase::Compensation,
        ..
    } = sim.command
    else {
        panic!("{:?}", sim.command)
    };
    assert_eq!(sim.state.steps[1].status, StepStatus::Failed);
    assert_eq!(sim.state.steps[1].attempts, 0);
    assert_contains(sim.state.steps[1].last_error.as_deref(), "/steps/a/id");
    assert_eq!(sim.state.steps[2].status, StepStatus::Skipped);
    let failed = sim
        .events
        .iter()
        .find(|e| e.kind == EventKind::StepFailed)
        .unwrap();
    assert_eq!(failed.detail["sent"], json!(false));
    sim.answer(ok(json!({})));
    assert_eq!(sim.state.status, SagaStatus::Compensated);
    assert_eq!(sim.call_steps(Phase::Compensation), [0]);
    assert_eq!(sim.call_steps(Phase::Action), [0]);
}

#[test]
fn first_step_409_with_nothing_else_sent_compensates_it() {
    let def = abc();
    let mut sim = Sim::started(&def, json!({"k": 1}));
    sim.answer(conflict());
    assert_eq!(sim.call_steps(Phase::Compensation), [0]);
    sim.answer(ok(json!(null)));
    assert_eq!(sim.state.status, SagaStatus::Compensated);
}

#[test]
fn nothing_to_compensate_ends_compensated_at_once() {
    let def = Definition::parse(&minimal()).unwrap();
    let mut sim = Sim::started(&def, json!({}));
    assert_eq!(sim.answer(conflict()), Command::Stop);
    assert_eq!(sim.state.status, SagaStatus::Compensated);
    use EventKind::*;
    assert_eq!(
        sim.kinds(),
        [
            (SagaStarted, None),
            (StepStarted, Some("one")),
            (StepFailed, Some("one")),
            (SagaCompensating, Some("one")),
            (SagaCompensated, None)
        ]
    );
}

#[test]
fn errors_back_off_exponentially_then_compensate() {
    let def = abc(); // max_attempts 3, backoff 100 ×2 cap 300, no jitter
    let mut sim = Sim::started(&def, json!({"k": 1}));
    assert_eq!(sim.answer(err500()), Command::WaitUntil(t0() + ms(100)));
    assert_eq!(sim.state.next_attempt_at, Some(t0() + ms(100)));
    assert_eq!(sim.state.in_flight, None);
    assert_eq!(
        sim.state.steps[0].last_error.as_deref(),
        Some("HTTP 500: boom")
    );
    // Too early: nothing changes.
    sim.now = t0() + ms(99);
    let before = sim.state.clone();
    assert_eq!(sim.apply(Input::Wake), Command::WaitUntil(t0() + ms(100)));
    assert_eq!(sim.state, before);
    // Due: attempt 2.
    let Command::Call { attempt: 2, .. } = sim.wake_when_due() else {
        panic!()
    };
    assert_eq!(
        sim.answer(CallOutcome::Timeout),
        Command::WaitUntil(t0() + ms(100 + 200))
    );
    let Command::Call { attempt: 3, .. } = sim.wake_when_due() else {
        panic!()
    };
    // Third failure: budget spent → step failed → compensated (it was sent).
    let Command::Call {
        step: 0,
        phase: Phase::Compensation,
        ..
    } = sim.answer(CallOutcome::Transport {
        message: "refused".into(),
    })
    else {
        panic!("{:?}", sim.command)
    };
    assert_eq!(sim.state.steps[0].status, StepStatus::Compensating);
    assert_eq!(sim.state.steps[0].failures, 3);
    use EventKind::*;
    let kinds = sim.event_kinds();
    assert_eq!(
        kinds,
        [
            SagaStarted,
            StepStarted,
            StepRetryScheduled,
            StepStarted,
            StepRetryScheduled,
            StepStarted,
            StepFailed,
            SagaCompensating,
            CompensationStarted
        ]
    );
    assert_eq!(sim.events[2].detail["delay_ms"], json!(100));
    assert_eq!(sim.events[4].detail["delay_ms"], json!(200));
    assert_contains(sim.events[6].detail["error"].as_str(), "gave up after 3");
}

#[test]
fn backoff_is_capped() {
    let mut doc = minimal();
    doc["policy"] = json!({"max_attempts": 10, "backoff": {"initial_ms": 100, "multiplier": 3.0, "max_ms": 1000, "jitter": 0.0}});
    let def = Definition::parse(&doc).unwrap();
    let mut sim = Sim::started(&def, json!({}));
    let mut delays = Vec::new();
    for _ in 0..5 {
        let before = sim.now;
        let Command::WaitUntil(at) = sim.answer(CallOutcome::Error {
            status: 502,
            body: Value::Null,
        }) else {
            panic!()
        };
        delays.push((at - before).num_milliseconds());
        sim.wake_when_due();
    }
    assert_eq!(delays, [100, 300, 900, 1000, 1000]);
}

#[test]
fn jitter_comes_from_rand() {
    let b = checkout().policy.backoff; // 100 ms, jitter 0.2
    assert_eq!(backoff_delay(&b, 1, 0), Duration::from_millis(80));
    assert_eq!(backoff_delay(&b, 1, 1 << 63), Duration::from_millis(100));
    assert_eq!(backoff_delay(&b, 1, u64::MAX), Duration::from_millis(120));
    assert_eq!(backoff_delay(&b, 100, 1 << 63), Duration::from_millis(5000));
}

#[test]
fn throttling_honours_retry_after_up_to_the_cap() {
    let def = abc(); // max_retry_after_ms 1000
    let mut sim = Sim::started(&def, json!({"k": 1}));
    let t = |s| CallOutcome::Throttled {
        status: 429,
        retry_after: Some(Duration::from_millis(s)),
    };
    assert_eq!(sim.answer(t(700)), Command::WaitUntil(t0() + ms(700)));
    sim.wake_when_due();
    assert_eq!(sim.answer(t(60_000)), Command::WaitUntil(t0() + ms(1700)));
    assert_eq!(sim.state.steps[0].failures, 2);
    // Without Retry-After: plain backoff (third failure → give up, max_attempts 3).
    sim.wake_when_due();
    let c = sim.answer(CallOutcome::Throttled {
        status: 503,
        retry_after: None,
    });
    assert!(
        matches!(
            c,
            Command::Call {
                phase: Phase::Compensation,
                ..
            }
        ),
        "{c:?}"
    );
}

#[test]
fn throttling_without_retry_after_backs_off() {
    let def = abc();
    let mut sim = Sim::started(&def, json!({"k": 1}));
    assert_eq!(
        sim.answer(CallOutcome::Throttled {
            status: 503,
            retry_after: None
        }),
        Command::WaitUntil(t0() + ms(100))
    );
}

#[test]
fn in_progress_polls_with_the_same_key_until_the_deadline() {
    let def = abc(); // poll 50 ms, deadline 200 ms, max_attempts 3
    let mut sim = Sim::started(&def, json!({"k": 1}));
    for i in 1..=4 {
        assert_eq!(
            sim.answer(CallOutcome::InProgress),
            Command::WaitUntil(sim.now + ms(50))
        );
        let Command::Call {
            attempt, request, ..
        } = sim.wake_when_due()
        else {
            panic!()
        };
        assert_eq!(attempt, i + 1);
        assert_eq!(request.idempotency_key, "saga-1:a:action");
    }
    // Polls do not consume the retry budget.
    assert_eq!(sim.state.steps[0].failures, 0);
    assert_eq!(sim.state.steps[0].attempts, 5);
    // t0 + 200 ms: past the deadline → the action fails (it was sent) → compensate.
    assert_eq!(sim.now, t0() + ms(200));
    let c = sim.answer(CallOutcome::InProgress);
    assert!(
        matches!(
            c,
            Command::Call {
                step: 0,
                phase: Phase::Compensation,
                attempt: 1,
                ..
            }
        ),
        "{c:?}"
    );
    assert_eq!(sim.state.steps[0].compensation_attempts, 1);
    use EventKind::*;
    let kinds = sim.event_kinds();
    assert_eq!(
        kinds,
        [
            SagaStarted,
            StepStarted,
            StepInProgress,
            StepInProgress,
            StepInProgress,
            StepInProgress,
            StepFailed,
            SagaCompensating,
            CompensationStarted
        ]
    );
    assert_contains(sim.events[6].detail["error"].as_str(), "deadline");
}

#[test]
fn in_progress_then_success() {
    let def = abc();
    let mut sim = Sim::started(&def, json!({"k": 1}));
    sim.answer(CallOutcome::InProgress);
    sim.wake_when_due();
    let c = sim.answer(ok(json!({"id": 1})));
    assert!(matches!(
        c,
        Command::Call {
            step: 1,
            attempt: 1,
            ..
        }
    ));
    assert_eq!(sim.state.steps[0].attempts, 2);
    assert!(!sim.state.steps[0].polling);
}

#[test]
fn stale_results_are_ignored() {
    let def = abc();
    let mut sim = Sim::started(&def, json!({"k": 1}));
    sim.answer(err500());
    sim.wake_when_due(); // attempt 2 in flight
    let before = sim.state.clone();
    let n = sim.events.len();
    for (step, phase, attempt) in [
        (0, Phase::Action, 1),
        (1, Phase::Action, 2),
        (0, Phase::Compensation, 2),
    ] {
        let c = sim.apply(Input::Result {
            step,
            phase,
            attempt,
            outcome: ok(json!({"id": 1})),
        });
        assert!(matches!(
            c,
            Command::Call {
                step: 0,
                phase: Phase::Action,
                attempt: 2,
                ..
            }
        ));
        assert_eq!(sim.state, before);
        assert_eq!(sim.events.len(), n);
    }
    // While waiting, any result is stale too.
    sim.command = Command::Call {
        step: 0,
        phase: Phase::Action,
        attempt: 2,
        request: sim.calls[1].3.clone(),
    };
    let Command::WaitUntil(at) = sim.answer(err500()) else {
        panic!()
    };
    let c = sim.apply(Input::Result {
        step: 0,
        phase: Phase::Action,
        attempt: 2,
        outcome: ok(json!({})),
    });
    assert_eq!(c, Command::WaitUntil(at));
}

#[test]
fn wake_with_a_call_in_flight_resends_it_and_counts_it() {
    let def = abc(); // max_attempts 3
    let mut sim = Sim::started(&def, json!({"k": 1}));
    let Command::Call {
        attempt: 2,
        request,
        ..
    } = sim.apply(Input::Wake)
    else {
        panic!()
    };
    assert_eq!(request.idempotency_key, "saga-1:a:action");
    assert_eq!(sim.state.steps[0].failures, 1);
    let last = sim.events.last().unwrap();
    assert_eq!(
        (
            last.kind,
            last.detail["resent"].clone(),
            last.detail["attempt"].clone()
        ),
        (EventKind::StepStarted, json!(true), json!(2))
    );
    let Command::Call { attempt: 3, .. } = sim.apply(Input::Wake) else {
        panic!()
    };
    // A crash loop cannot retry forever: the third lost outcome spends the budget.
    let c = sim.apply(Input::Wake);
    assert!(
        matches!(
            c,
            Command::Call {
                step: 0,
                phase: Phase::Compensation,
                ..
            }
        ),
        "{c:?}"
    );
    assert_eq!(sim.state.steps[0].status, StepStatus::Compensating);
}

#[test]
fn compensation_409_is_retried_and_exhaustion_parks_the_saga() {
    let def = abc(); // compensation_max_attempts 2
    let mut sim = Sim::started(&def, json!({"k": 1}));
    sim.answer(ok(json!({"id": 1})));
    sim.answer(ok(json!({})));
    sim.answer(conflict()); // c fails → compensate c, then a
    let Command::WaitUntil(_) = sim.answer(conflict()) else {
        panic!()
    };
    assert_contains(sim.state.steps[2].last_error.as_deref(), "409");
    assert_eq!(
        sim.events.last().unwrap().kind,
        EventKind::CompensationRetryScheduled
    );
    sim.wake_when_due();
    assert_eq!(sim.answer(err500()), Command::Stop);
    assert_eq!(sim.state.status, SagaStatus::Failed);
    assert_eq!(sim.state.next_attempt_at, None);
    assert_contains(sim.state.reason.as_deref(), "compensation of step `c`");
    // The earlier step's compensation is held back.
    assert_eq!(sim.state.steps[0].status, StepStatus::Succeeded);
    assert_eq!(sim.call_steps(Phase::Compensation), [2, 2]);
    let kinds: Vec<EventKind> = sim.events.iter().rev().take(2).map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::SagaFailed, EventKind::CompensationFailed]
    );
    // Parked: Wake / Start / results do nothing.
    let before = sim.state.clone();
    sim.now += ms(1_000_000);
    for input in [
        Input::Wake,
        Input::Start,
        Input::Result {
            step: 2,
            phase: Phase::Compensation,
            attempt: 2,
            outcome: ok(json!({})),
        },
    ] {
        assert_eq!(sim.apply(input), Command::Stop);
        assert_eq!(sim.state, before);
    }
    // Manual retry: fresh budget, resumes with c's compensation, then a's.
    let Command::Call {
        step: 2,
        phase: Phase::Compensation,
        attempt: 3,
        ..
    } = sim.apply(op(Action::Resume))
    else {
        panic!()
    };
    assert_eq!(sim.state.status, SagaStatus::Compensating);
    assert_eq!(sim.state.steps[2].compensation_failures, 0);
    let retried = sim.events.iter().rev().nth(1).unwrap();
    assert_eq!(
        (retried.kind, retried.step.as_deref()),
        (EventKind::SagaRetried, Some("c"))
    );
    assert!(
        matches!(sim.answer(err500()), Command::WaitUntil(_)),
        "one failure within the new budget"
    );
    sim.wake_when_due();
    sim.answer(ok(json!({})));
    sim.answer(ok(json!({})));
    assert_eq!(sim.state.status, SagaStatus::Compensated);
    assert_eq!(sim.call_steps(Phase::Compensation), [2, 2, 2, 2, 0]);
}

#[test]
fn compensation_in_progress_past_deadline_backs_off() {
    let def = abc(); // poll 50, deadline 200
    let mut sim = Sim::started(&def, json!({"k": 1}));
    sim.answer(conflict());
    let comp_start = sim.now;
    assert_eq!(
        sim.answer(CallOutcome::InProgress),
        Command::WaitUntil(comp_start + ms(50))
    );
    assert_eq!(
        sim.events.last().unwrap().kind,
        EventKind::CompensationInProgress
    );
    sim.now += ms(500);
    sim.apply(Input::Wake);
    // Past the deadline: a failed attempt, retried with backoff (100 ms).
    assert_eq!(
        sim.answer(CallOutcome::InProgress),
        Command::WaitUntil(sim.now + ms(100))
    );
    assert_eq!(sim.state.steps[0].compensation_failures, 1);
}

#[test]
fn manual_retry_elsewhere_is_a_noop() {
    let def = abc();
    let mut sim = Sim::started(&def, json!({"k": 1}));
    let before = sim.state.clone();
    assert!(matches!(
        sim.apply(op(Action::Resume)),
        Command::Call { attempt: 1, .. }
    ));
    assert_eq!(sim.state, before);
}

#[test]
fn cancel_with_a_call_in_flight_compensates_it_then_the_earlier_steps() {
    let def = checkout();
    let mut sim = Sim::started(&def, checkout_input());
    sim.answer(ok(json!({"reservation_id": "r-1"})));
    // charge_payment is in flight.
    let Command::Call {
        step: 1,
        attempt: 1,
        ..
    } = sim.command.clone()
    else {
        panic!("{:?}", sim.command)
    };
    assert_eq!(admit(&sim.state, Action::Cancel, sim.now), Admission::Apply);
    let Command::Call {
        step: 1,
        phase: Phase::Compensation,
        attempt: 1,
        ..
    } = sim.apply(op(Action::Cancel))
    else {
        panic!(
            "the in-flight charge is compensated first: {:?}",
            sim.command
        )
    };
    assert_eq!(sim.state.status, SagaStatus::Compensating);
    assert_eq!(sim.state.reason.as_deref(), Some("cancelled by ops"));
    assert_eq!(sim.state.steps[2].status, StepStatus::Skipped);
    let cancelled = sim
        .events
        .iter()
        .find(|e| e.kind == EventKind::SagaCancelled)
        .unwrap();
    assert_eq!(cancelled.step.as_deref(), Some("charge_payment"));
    assert_eq!(cancelled.detail["by"], "ops");
    assert_eq!(cancelled.detail["in_flight"], "charge_payment");
    // The charge's answer arrives late: stale, ignored.
    let before = sim.state.clone();
    sim.apply(Input::Result {
        step: 1,
        phase: Phase::Action,
        attempt: 1,
        outcome: ok(json!({"payment_id": "p-1"})),
    });
    assert_eq!(sim.state, before);
    sim.answer(ok(json!({})));
    sim.answer(ok(json!({})));
    assert_eq!(sim.state.status, SagaStatus::Compensated);
    let mut order = sim.call_steps(Phase::Compensation);
    order.dedup(); // the stale answer's no-op repeats the call in flight
    assert_eq!(order, [1, 0]);
    // Settled: a second cancel is refused.
    assert_eq!(
        admit(&sim.state, Action::Cancel, sim.now),
        Admission::Refused(Refusal::Settled(SagaStatus::Compensated))
    );
}

#[test]
fn cancel_while_a_step_waits_for_its_retry_compensates_it() {
    let def = abc();
    let mut sim = Sim::started(&def, json!({"k": 1}));
    sim.answer(ok(json!({"id": 1})));
    sim.answer(ok(json!({})));
    // c fails once and waits 100 ms.
    assert!(matches!(sim.answer(err500()), Command::WaitUntil(_)));
    let Command::Call {
        step: 2,
        phase: Phase::Compensation,
        ..
    } = sim.apply(op(Action::Cancel))
    else {
        panic!("{:?}", sim.command)
    };
    assert_eq!(sim.state.steps[2].status, StepStatus::Compensating);
    assert_eq!(sim.state.next_attempt_at, None);
    sim.answer(ok(json!({})));
    // b has no compensation: a's is next, in reverse order.
    sim.answer(ok(json!({})));
    assert_eq!(sim.call_steps(Phase::Compensation), [2, 0]);
    assert_eq!(sim.state.status, SagaStatus::Compensated);
}

/// A saga of `abc` parked as failed: a's action refused, its compensation out of budget (2).
fn parked(def: &Definition) -> Sim<'_> {
    let mut sim = Sim::started(def, json!({"k": 1}));
    sim.answer(conflict());
    sim.answer(err500());
    sim.wake_when_due();
    sim.answer(err500());
    assert_eq!(sim.state.status, SagaStatus::Failed);
    sim
}

#[test]
fn cancel_is_idempotent_and_refused_once_settled() {
    let def = abc();
    let mut sim = Sim::started(&def, json!({"k": 1}));
    sim.apply(op(Action::Cancel));
    let (state, n) = (sim.state.clone(), sim.events.len());
    assert_eq!(
        admit(&sim.state, Action::Cancel, sim.now),
        Admission::AlreadyDone
    );
    sim.apply(op(Action::Cancel));
    assert_eq!(
        (&sim.state, sim.events.len()),
        (&state, n),
        "a second cancel changes nothing"
    );
    // A failed (parked) saga cannot be cancelled, only resumed.
    let parked = parked(&def);
    assert_eq!(
        admit(&parked.state, Action::Cancel, parked.now),
        Admission::Refused(Refusal::Settled(SagaStatus::Failed))
    );
    assert_eq!(
        admit(&sim.state, Action::Resume, sim.now),
        Admission::Refused(Refusal::NotFailed(SagaStatus::Compensating))
    );
}

#[test]
fn retry_now_sends_a_waiting_step_at_once_with_the_same_budget() {
    let def = abc(); // backoff 100 ms
    let mut sim = Sim::started(&def, json!({"k": 1}));
    assert_eq!(
        admit(&sim.state, Action::RetryNow, sim.now),
        Admission::Refused(Refusal::NotWaiting),
        "a call in flight is not waiting"
    );
    let Command::WaitUntil(at) = sim.answer(err500()) else {
        panic!()
    };
    assert!(at > sim.now);
    let Command::Call {
        step: 0,
        phase: Phase::Action,
        attempt: 2,
        ..
    } = sim.apply(op(Action::RetryNow))
    else {
        panic!("{:?}", sim.command)
    };
    assert_eq!(sim.state.steps[0].failures, 1, "the budget is unchanged");
    let e = sim.events.iter().rev().nth(1).unwrap();
    assert_eq!(
        (e.kind, e.step.as_deref()),
        (EventKind::StepRetriedNow, Some("a"))
    );
    assert_eq!(e.detail["by"], "ops");
    // Once the wait is over there is nothing to cut short.
    sim.answer(err500());
    let Command::WaitUntil(at) = sim.command.clone() else {
        panic!()
    };
    sim.now = at;
    assert_eq!(
        admit(&sim.state, Action::RetryNow, sim.now),
        Admission::Refused(Refusal::NotWaiting)
    );
    // A compensation waiting for its retry can be retried now too.
    sim.apply(Input::Wake);
    sim.answer(conflict());
    assert!(matches!(sim.answer(err500()), Command::WaitUntil(_)));
    assert!(matches!(
        sim.apply(op(Action::RetryNow)),
        Command::Call {
            step: 0,
            phase: Phase::Compensation,
            attempt: 2,
            ..
        }
    ));
}

#[test]
fn resume_logs_who_resumed() {
    let def = abc();
    let mut sim = parked(&def);
    assert_eq!(admit(&sim.state, Action::Resume, sim.now), Admission::Apply);
    sim.apply(op(Action::Resume));
    let e = sim.events.iter().rev().nth(1).unwrap();
    assert_eq!(
        (e.kind, e.step.as_deref()),
        (EventKind::SagaRetried, Some("a"))
    );
    assert_eq!(e.detail["by"], "ops");
    sim.answer(ok(json!({})));
    assert_eq!(sim.state.status, SagaStatus::Compensated);
}

#[test]
fn terminal_states_ignore_everything() {
    let def = abc();
    let mut sim = Sim::started(&def, json!({"k": 1}));
    sim.answer(ok(json!({"id": 1})));
    sim.answer(ok(json!({})));
    sim.answer(ok(json!({})));
    assert_eq!(sim.state.status, SagaStatus::Completed);
    let before = sim.state.clone();
    let n = sim.events.len();
    for input in [
        Input::Start,
        Input::Wake,
        op(Action::Resume),
        Input::Result {
            step: 2,
            phase: Phase::Action,
            attempt: 1,
            outcome: conflict(),
        },
    ] {
        assert_eq!(sim.apply(input), Command::Stop);
    }
    assert_eq!((sim.state, sim.events.len()), (before, n));
}

#[test]
fn transition_is_deterministic() {
    let def = checkout();
    let state = initial_state(&def);
    let a = transition(&def, "x", &checkout_input(), &state, Input::Start, t0(), 7);
    let b = transition(&def, "x", &checkout_input(), &state, Input::Start, t0(), 7);
    assert_eq!(a, b);
}

// ---------------------------------------------------------------- properties

/// A random definition of 1..=4 steps with small budgets. Some steps have no compensation; some
/// actions read a field of the previous step's output that the simulator may omit (render
/// failure of an action); some compensations read their own step's output (render failure when
/// the action failed).
fn arb_definition() -> impl Strategy<Value = Definition> {
    let step = (any::<bool>(), any::<bool>(), any::<bool>());
    (
        prop::collection::vec(step, 1..=4),
        1u32..=4,
        1u32..=4,
        1u64..=200,
        1.0f64..=3.0,
        0.0f64..=1.0,
        prop::option::of(1u32..=3),
    )
        .prop_map(|(steps, max_attempts, comp_max, initial, multiplier, jitter, override_attempts)| {
            let steps: Vec<Value> = steps
                .iter()
                .enumerate()
                .map(|(i, &(has_comp, reads_prev, comp_reads_self))| {
                    let name = format!("s{i}");
                    let mut body = json!({"i": i, "k": {"$from": "/input/k"}});
                    if reads_prev && i > 0 {
                        body["prev"] = json!({"$from": format!("/steps/s{}/id", i - 1)});
                    }
                    let mut step = json!({"name": name, "action": {"service": "svc", "method": "POST", "path": format!("/s{i}"), "body": body}});
                    if has_comp {
                        let cbody = if comp_reads_self { json!({"id": {"$from": format!("/steps/s{i}/id")}}) } else { json!({}) };
                        step["compensation"] = json!({"service": "svc", "method": "POST", "path": format!("/s{i}/undo"), "body": cbody});
                    }
                    if i == 0
                        && let Some(n) = override_attempts
                    {
                        step["policy"] = json!({"max_attempts": n});
                    }
                    step
                })
                .collect();
            Definition::parse(&json!({
                "name": "random",
                "policy": {
                    "max_attempts": max_attempts, "compensation_max_attempts": comp_max,
                    "backoff": {"initial_ms": initial, "multiplier": multiplier, "max_ms": 500, "jitter": jitter},
                    "poll_interval_ms": 100, "deadline_ms": 1000, "max_retry_after_ms": 2000
                },
                "steps": steps
            }))
            .expect("generated definitions are valid")
        })
}

/// What the simulated world does with one call.
fn outcome_for(choice: u8, rand: u64) -> Option<CallOutcome> {
    let with_id = !rand.is_multiple_of(5); // sometimes a success lacks the field the next step reads
    Some(match choice % 20 {
        0..=7 => ok(if with_id {
            json!({"id": rand % 1000})
        } else {
            json!({})
        }),
        8 => conflict(),
        9..=11 => CallOutcome::InProgress,
        12 => CallOutcome::Throttled {
            status: 429,
            retry_after: Some(Duration::from_millis(rand % 5000)),
        },
        13 => CallOutcome::Throttled {
            status: 503,
            retry_after: None,
        },
        14 => err500(),
        15 => CallOutcome::Transport {
            message: "reset".into(),
        },
        16 => CallOutcome::Timeout,
        17 => return None, // the orchestrator crashes: the outcome is lost, it wakes up again
        _ => CallOutcome::Error {
            status: 404,
            body: Value::Null,
        },
    })
}

struct Run {
    status: SagaStatus,
    transitions: usize,
    action_sent: BTreeSet<usize>,
    /// Steps whose compensation succeeded, in order.
    compensated: Vec<usize>,
    /// Step index of every compensation call, in order.
    comp_calls: Vec<usize>,
    /// Every scheduled delay (ms) with its kind.
    delays: Vec<(EventKind, u64)>,
    final_state: SagaState,
    /// The kinds of event logged.
    kinds: BTreeSet<EventKind>,
}

const MAX_TRANSITIONS: usize = 5_000;

/// Found by the property test: one repeated choice (173: 173 % 13 == 4, odd) made the operator
/// ask for retry-now on every turn while the call was in flight; each refused, the saga never
/// moved and the simulation never ended.
#[test]
fn a_refused_operator_action_does_not_stall_the_simulation() {
    let def = abc();
    let run = simulate(&def, &[173], &[0], 0, true);
    assert!(run.final_state.status.is_settled(), "{:?}", run.final_state);
}

/// With choice `c`, one time in 13 (at `slot`), an operator cancels or retries now; true if so.
fn operator_acts(sim: &mut Sim, c: u8, slot: u8) -> bool {
    if c % 13 != slot {
        return false;
    }
    let action = if c.is_multiple_of(2) {
        Action::Cancel
    } else {
        Action::RetryNow
    };
    operator(sim, action);
    true
}

/// Apply an operator's action: exactly what [`admit`] allows changes the saga, and only then is
/// an event logged (naming who); anything else is a no-op.
fn operator(sim: &mut Sim, action: Action) {
    let before = sim.state.clone();
    let n = sim.events.len();
    let admitted = admit(&sim.state, action, sim.now);
    sim.apply(op(action));
    if admitted == Admission::Apply {
        assert_ne!(sim.state, before, "{action:?} applied");
        assert_eq!(sim.events[n].detail["by"], "ops");
    } else {
        assert_eq!(
            (&sim.state, sim.events.len()),
            (&before, n),
            "{action:?} refused"
        );
    }
}

/// Drive a saga of `def` to its end, answering as `choices` say; `manual_retries` resumes of a
/// parked saga; `operators`: now and then an operator cancels or retries now, at any point.
fn simulate(
    def: &Definition,
    choices: &[u8],
    rands: &[u64],
    manual_retries: usize,
    operators: bool,
) -> Run {
    let mut sim = Sim::new(def, json!({"k": "v"}));
    let mut retries_left = manual_retries;
    let mut i = 0usize;
    let mut next = |sim: &mut Sim| {
        let c = choices[i % choices.len()];
        sim.rand = rands[i % rands.len()];
        i += 1;
        c
    };
    let mut compensated = Vec::new();
    // Whether the operator acted on the previous turn.
    let mut acted = false;
    sim.apply(Input::Start);
    loop {
        assert!(
            sim.transitions < MAX_TRANSITIONS,
            "no end in sight: {:?}",
            sim.state
        );
        // Every persisted state survives a JSON round trip.
        let text = serde_json::to_string(&sim.state).unwrap();
        assert_eq!(serde_json::from_str::<SagaState>(&text).unwrap(), sim.state);
        match sim.command.clone() {
            Command::Call {
                step,
                phase,
                attempt,
                ..
            } => {
                let c = next(&mut sim);
                // An operator cancels (or retries) while the call is in flight — never twice
                // in a row: with one repeated choice, a refused retry-now would loop forever.
                if operators && !acted && operator_acts(&mut sim, c, 4) {
                    acted = true;
                    continue;
                }
                acted = false;
                if answer_call(&mut sim, step, phase, attempt, c) {
                    compensated.push(step);
                }
            }
            Command::WaitUntil(at) => {
                let c = next(&mut sim);
                if operators && !acted && operator_acts(&mut sim, c, 5) {
                    acted = true;
                    continue;
                }
                acted = false;
                if c % 5 == 0 && sim.now < at {
                    // An early wake changes nothing.
                    let before = sim.state.clone();
                    assert_eq!(sim.apply(Input::Wake), Command::WaitUntil(at));
                    assert_eq!(sim.state, before);
                }
                sim.now = sim.now.max(at);
                sim.apply(Input::Wake);
            }
            Command::Stop if sim.state.status == SagaStatus::Failed && retries_left > 0 => {
                retries_left -= 1;
                sim.now += ms(60_000);
                sim.apply(op(Action::Resume));
            }
            Command::Stop => break,
        }
    }
    Run::of(sim, compensated)
}

/// Answer the call `(step, phase, attempt)` as choice `c` says (now and then after a stale
/// duplicate of an earlier answer); true if a compensation succeeded.
fn answer_call(sim: &mut Sim, step: usize, phase: Phase, attempt: u32, c: u8) -> bool {
    if c % 7 == 3 && attempt > 1 {
        let before = sim.state.clone();
        sim.apply(Input::Result {
            step,
            phase,
            attempt: attempt - 1,
            outcome: ok(json!({"id": 1})),
        });
        assert_eq!(sim.state, before, "stale results change nothing");
    }
    match outcome_for(c, sim.rand) {
        Some(outcome) => {
            let success = matches!(outcome, CallOutcome::Success { .. });
            sim.apply(Input::Result {
                step,
                phase,
                attempt,
                outcome,
            });
            success && phase == Phase::Compensation
        }
        None => {
            sim.apply(Input::Wake);
            false
        }
    }
}

impl Run {
    fn of(sim: Sim, compensated: Vec<usize>) -> Run {
        let delays = sim
            .events
            .iter()
            .filter_map(|e| {
                e.detail
                    .get("delay_ms")
                    .and_then(Value::as_u64)
                    .map(|d| (e.kind, d))
            })
            .collect();
        Run {
            status: sim.state.status,
            transitions: sim.transitions,
            action_sent: sim
                .calls
                .iter()
                .filter(|c| c.1 == Phase::Action)
                .map(|c| c.0)
                .collect(),
            compensated,
            comp_calls: sim.call_steps(Phase::Compensation),
            delays,
            kinds: sim.events.iter().map(|e| e.kind).collect(),
            final_state: sim.state,
        }
    }
}

/// The simulator reaches every ending (so the properties below are not vacuous), including
/// parked sagas resumed by a manual retry.
#[test]
fn simulator_reaches_every_ending() {
    let def = abc();
    let mut seen = std::collections::BTreeMap::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut lcg = move || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        x
    };
    for _ in 0..300 {
        let choices: Vec<u8> = (0..64).map(|_| (lcg() >> 56) as u8).collect();
        let rands: Vec<u64> = (0..8).map(|_| lcg()).collect();
        let retries = (lcg() % 3) as usize;
        let run = simulate(&def, &choices, &rands, retries, (lcg() >> 33) % 2 == 0);
        *seen.entry(run.status.as_str()).or_insert(0) += 1;
        for kind in [EventKind::SagaCancelled, EventKind::StepRetriedNow] {
            if run.kinds.contains(&kind) {
                *seen
                    .entry(if kind == EventKind::SagaCancelled {
                        "cancelled"
                    } else {
                        "retried now"
                    })
                    .or_insert(0) += 1;
            }
        }
    }
    for status in [
        "completed",
        "compensated",
        "failed",
        "cancelled",
        "retried now",
    ] {
        assert!(seen.get(status).copied().unwrap_or(0) > 0, "{seen:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// With `operators`, cancels and retry-nows arrive at random points (a call in flight, a
    /// wait), and everything below still holds.
    /// (1) Any sequence of outcomes ends in completed, compensated or failed, in bounded steps;
    /// (2) the compensations are exactly the sent steps that have one, in reverse order, each at
    /// most once; (3) completed ⇒ every action succeeded and nothing was compensated;
    /// (4) every scheduled delay is within its bound; (5) states round-trip through JSON (checked
    /// inside `simulate`).
    #[test]
    fn any_outcome_sequence_ends_consistently(
        def in arb_definition(),
        choices in prop::collection::vec(any::<u8>(), 1..200),
        rands in prop::collection::vec(any::<u64>(), 1..20),
        manual_retries in 0usize..3,
        operators in any::<bool>(),
    ) {
        let run = simulate(&def, &choices, &rands, manual_retries, operators);
        prop_assert!(run.transitions < MAX_TRANSITIONS);
        prop_assert!(matches!(run.status, SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed));

        let has_comp = |i: usize| def.steps[i].compensation.is_some();
        // (2) never a compensation of an unsent step or one without a compensation …
        for &i in &run.comp_calls {
            prop_assert!(run.action_sent.contains(&i) && has_comp(i));
        }
        // … in reverse order (a step's compensation is retried until it succeeds or parks) …
        prop_assert!(run.comp_calls.windows(2).all(|w| w[0] >= w[1]), "{:?}", run.comp_calls);
        // … each completed at most once …
        let unique: BTreeSet<usize> = run.compensated.iter().copied().collect();
        prop_assert_eq!(unique.len(), run.compensated.len());
        // … and no action is sent once compensation began.
        let mut expected: Vec<usize> = run.action_sent.iter().copied().filter(|&i| has_comp(i)).collect();
        expected.reverse();
        match run.status {
            SagaStatus::Compensated => prop_assert_eq!(&run.compensated, &expected),
            SagaStatus::Failed => {
                // Parked: a prefix of the order was compensated, the rest is held back.
                prop_assert!(expected.starts_with(&run.compensated));
                prop_assert!(run.compensated.len() < expected.len());
                // The parked step is the next one in that order (its compensation may never have
                // been sent if its body could not be rendered).
                let parked_at = expected[run.compensated.len()];
                prop_assert!(run.final_state.steps[parked_at].last_error.is_some());
                let needle = format!("`s{}`", parked_at);
                prop_assert!(run.final_state.reason.as_deref().unwrap().contains(&needle));
                prop_assert!(run.comp_calls.iter().all(|&i| i >= parked_at));
            }
            SagaStatus::Completed => {
                // (3)
                prop_assert!(run.comp_calls.is_empty());
                prop_assert!(run.final_state.steps.iter().all(|s| s.status == StepStatus::Succeeded && s.output.is_some()));
                prop_assert_eq!(run.action_sent.len(), def.steps.len());
            }
            other => prop_assert!(false, "ended {other:?}"),
        }
        // Statuses agree with what was sent.
        for (i, s) in run.final_state.steps.iter().enumerate() {
            if !run.action_sent.contains(&i) {
                prop_assert!(matches!(s.status, StepStatus::Skipped | StepStatus::Failed), "{:?}", s);
                prop_assert_eq!(s.attempts, 0);
            }
        }
        // (4) delays: backoff ≤ max_ms·(1+jitter), Retry-After ≤ its cap.
        for (_, d) in &run.delays {
            let p = &def.policy;
            let bound = (p.backoff.max_ms as f64 * (1.0 + p.backoff.jitter)).ceil() as u64;
            prop_assert!(*d <= bound.max(p.max_retry_after_ms), "delay {} > {}", d, bound);
        }
    }

    /// (4) Backoff delays stay within [initial·(1−j), max·(1+j)], and the base grows with the
    /// failure count.
    #[test]
    fn backoff_delays_are_bounded(
        initial in 1u64..10_000,
        extra in 0u64..100_000,
        multiplier in 1.0f64..10.0,
        jitter in 0.0f64..=1.0,
        failures in 1u32..100,
        rand in any::<u64>(),
    ) {
        let b = super::definition::Backoff { initial_ms: initial, multiplier, max_ms: initial + extra, jitter };
        let d = backoff_delay(&b, failures, rand).as_millis() as f64;
        prop_assert!(d >= (initial as f64 * (1.0 - jitter)).floor() - 1.0);
        prop_assert!(d <= ((initial + extra) as f64 * (1.0 + jitter)).ceil() + 1.0);
        // Same draw, one more failure: never shorter.
        let d2 = backoff_delay(&b, failures + 1, rand).as_millis() as f64;
        prop_assert!(d2 + 1.0 >= d);
    }

    /// (5) Arbitrary states survive a JSON round trip.
    #[test]
    fn saga_state_round_trips(
        def in arb_definition(),
        choices in prop::collection::vec(any::<u8>(), 1..50),
        secs in 0i64..10_000_000,
    ) {
        let mut sim = Sim::started(&def, json!({"k": 1}));
        sim.now += chrono::TimeDelta::seconds(secs);
        for c in choices {
            match sim.command.clone() {
                Command::Call { .. } => match outcome_for(c, c as u64 * 7919) {
                    Some(o) => { sim.answer(o); }
                    None => { sim.apply(Input::Wake); }
                },
                Command::WaitUntil(_) => { sim.wake_when_due(); }
                Command::Stop => break,
            }
            let text = serde_json::to_string(&sim.state).unwrap();
            prop_assert_eq!(serde_json::from_str::<SagaState>(&text).unwrap(), sim.state.clone());
        }
    }
}

#[test]
fn id_template_values_are_derived_from_the_run_and_the_name() {
    let call = |path: &str, body: Value| json!({"service": "s", "method": "POST", "path": path, "body": body});
    let def = Definition::parse(&json!({
        "name": "ids",
        "steps": [
            {"name": "a", "action": call("/a", json!({"r": {"$id": "res"}}))},
            {"name": "b", "action": call("/b", json!({"r": {"$id": "res"}, "o": {"$id": "other"}}))}
        ]
    }))
    .unwrap();
    let ctx = |run: &str| json!({"saga": {"id": run}, "input": {}, "steps": {}});
    let a = render(&def.steps[0].action.body, &ctx("run-1")).unwrap();
    let b = render(&def.steps[1].action.body, &ctx("run-1")).unwrap();
    assert_eq!(a["r"], b["r"], "the same name is the same id in one run");
    assert_ne!(b["r"], b["o"]);
    let again = render(&def.steps[0].action.body, &ctx("run-2")).unwrap();
    assert_ne!(a["r"], again["r"], "another run, another id");
    let id: uuid::Uuid = a["r"].as_str().unwrap().parse().unwrap();
    assert_eq!(id.get_version_num(), 8);

    let bad = Definition::parse(&json!({
        "name": "ids", "steps": [{"name": "a", "action": call("/a", json!({"r": {"$id": 5}}))}]
    }));
    let Err(DefinitionError::Invalid(errors)) = bad else {
        panic!("a non-name $id is refused")
    };
    assert_eq!(errors[0].pointer, "/steps/0/action/body/r/$id");
}

#[test]
fn a_commit_protocol_sees_which_bodies_read_another_steps_output() {
    // The checkout reads no step output any more (its reservation id is an `$id`).
    assert!(checkout().step_output_reads().is_empty());
    let mut doc: Value = serde_json::from_str(CHECKOUT).unwrap();
    doc["steps"][2]["action"]["body"]["reservation_id"] =
        json!({"$from": "/steps/reserve_inventory/reservation_id"});
    assert_eq!(
        Definition::parse(&doc).unwrap().step_output_reads(),
        [(
            "/steps/2/action/body/reservation_id".to_string(),
            "/steps/reserve_inventory/reservation_id".to_string()
        )]
    );
}
