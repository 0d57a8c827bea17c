//! The 2PC cores as a service's and the orchestrator's drivers use them (one role, no
//! network): the order of the actions is the contract.

use tandem_protocols::two_phase::{Coordinator, Msg, Participant, Record, Timer};
use tandem_protocols::{Action, Input, NodeId, Outcome, Role, Vote};

const C0: NodeId = NodeId::Coordinator(0);

fn receive(from: NodeId, msg: Msg) -> Input<Msg, Timer> {
    Input::Receive { from, msg }
}

#[test]
fn the_coordinator_logs_before_prepare_and_forces_commit_before_sending_it() {
    let mut c = Coordinator::new(2);
    let out = c.handle(Input::Begin);
    assert_eq!(out[0], Action::ForceWrite(Record::Begin));
    let prepares = out.iter().filter(|a| {
        matches!(
            a,
            Action::Send {
                msg: Msg::Prepare,
                ..
            }
        )
    });
    assert_eq!(prepares.count(), 2);
    assert!(
        c.handle(receive(NodeId::Participant(0), Msg::Vote(Vote::Yes)))
            .is_empty()
    );
    let out = c.handle(receive(NodeId::Participant(1), Msg::Vote(Vote::Yes)));
    let force = out
        .iter()
        .position(|a| *a == Action::ForceWrite(Record::Commit));
    let first_send = out.iter().position(|a| matches!(a, Action::Send { .. }));
    assert!(force.unwrap() < first_send.unwrap(), "{out:?}");
    // A duplicate Begin (a retried POST) changes nothing.
    assert!(c.handle(Input::Begin).is_empty());
}

#[test]
fn a_coordinator_restarted_after_begin_forces_abort_then_tells_everyone() {
    let (mut c, out) = Coordinator::recover(2, &[Record::Begin]);
    assert_eq!(out[0], Action::ForceWrite(Record::Abort));
    assert!(out.contains(&Action::Decide(Outcome::Abort)));
    let aborts = out.iter().filter(|a| {
        matches!(
            a,
            Action::Send {
                msg: Msg::Outcome(Outcome::Abort),
                ..
            }
        )
    });
    assert_eq!(aborts.count(), 2);
    let p = NodeId::Participant(1);
    assert_eq!(
        c.handle(receive(p, Msg::Query)),
        vec![Action::send(p, Msg::Outcome(Outcome::Abort))]
    );
    // With the decision logged, a second restart does not force it again.
    let (_, out) = Coordinator::recover(2, &[Record::Begin, Record::Abort]);
    assert!(!out.iter().any(|a| matches!(a, Action::ForceWrite(_))));
}

#[test]
fn a_participant_forces_prepared_before_its_yes_vote_and_committed_before_its_ack() {
    let (mut p, _) = Participant::new(0, Vote::Yes);
    let out = p.handle(receive(C0, Msg::Prepare));
    assert_eq!(out[0], Action::ForceWrite(Record::Prepared));
    assert!(out.contains(&Action::send(C0, Msg::Vote(Vote::Yes))));
    // A duplicate Prepare gets the same vote, and nothing is written twice.
    assert_eq!(
        p.handle(receive(C0, Msg::Prepare)),
        vec![Action::send(C0, Msg::Vote(Vote::Yes))]
    );
    let out = p.handle(receive(C0, Msg::Outcome(Outcome::Commit)));
    assert_eq!(out[0], Action::ForceWrite(Record::Committed));
    assert_eq!(out.last(), Some(&Action::send(C0, Msg::Ack)));
}

#[test]
fn a_participant_that_votes_no_aborts_and_says_so() {
    let (mut p, _) = Participant::new(0, Vote::No);
    let out = p.handle(receive(C0, Msg::Prepare));
    assert!(out.contains(&Action::Decide(Outcome::Abort)));
    assert!(out.contains(&Action::send(C0, Msg::Vote(Vote::No))));
    assert!(!out.iter().any(|a| matches!(a, Action::ForceWrite(_))));
}

#[test]
fn a_restarted_prepared_participant_asks_until_it_is_answered() {
    let (mut p, out) = Participant::recover(2, &[Record::Prepared]);
    assert_eq!(
        out,
        vec![
            Action::send(C0, Msg::Query),
            Action::SetTimer(Timer::InDoubt)
        ]
    );
    assert_eq!(
        p.handle(Input::Timeout(Timer::InDoubt)),
        vec![
            Action::send(C0, Msg::Query),
            Action::SetTimer(Timer::InDoubt)
        ]
    );
    let out = p.handle(receive(C0, Msg::Outcome(Outcome::Abort)));
    assert!(out.contains(&Action::Decide(Outcome::Abort)));
    assert!(out.contains(&Action::CancelTimer(Timer::InDoubt)));
}
