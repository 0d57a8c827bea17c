//! The checkout's events: their kinds, their order of progress, and their subjects
//! (`checkout.<order>.<event>`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Subjects of every checkout event; the stream keeps them all.
pub const SUBJECTS: &str = "checkout.>";

/// What happened to an order. Forward: placed → reserved → charged → booked. Backward, after a
/// failure anywhere, every step is undone in reverse order: failed → cancelled (shipping) →
/// refunded (payment) → released (inventory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Placed,
    Reserved,
    Charged,
    Booked,
    Failed,
    Cancelled,
    Refunded,
    Released,
    /// The order is final and past the entry point's retention: every service deletes its
    /// barrier rows and published outbox rows of the order ([`super::forget_order`]).
    Forgotten,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Placed,
        Kind::Reserved,
        Kind::Charged,
        Kind::Booked,
        Kind::Failed,
        Kind::Cancelled,
        Kind::Refunded,
        Kind::Released,
        Kind::Forgotten,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Placed => "placed",
            Kind::Reserved => "reserved",
            Kind::Charged => "charged",
            Kind::Booked => "booked",
            Kind::Failed => "failed",
            Kind::Cancelled => "cancelled",
            Kind::Refunded => "refunded",
            Kind::Released => "released",
            Kind::Forgotten => "forgotten",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// How far an order has come: an order's status only moves to a higher rank, so a late or
    /// redelivered event never moves it back.
    pub fn rank(self) -> i16 {
        Kind::ALL
            .iter()
            .position(|&k| k == self)
            .and_then(|p| i16::try_from(p).ok())
            .unwrap_or(i16::MAX)
    }

    /// The order's status once this event is seen (`forgotten`: the order is gone).
    pub fn status(self) -> &'static str {
        match self {
            Kind::Booked => "completed",
            Kind::Released => "compensated",
            Kind::Forgotten => "forgotten",
            Kind::Failed | Kind::Cancelled | Kind::Refunded => "compensating",
            Kind::Placed | Kind::Reserved | Kind::Charged => "running",
        }
    }
}

/// One event, as published (JSON). `order` is the order as placed (every service builds its
/// request from it); `trace_id` is the placing request's trace, carried by every event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub order_id: String,
    pub event: Kind,
    pub trace_id: String,
    pub order: Value,
    /// The step that failed (`failed`), or that this event reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Why it failed (`failed`): the refusal's problem type, `timeout` or `exhausted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The output of the effect this event reports (the action's reply body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Message delays from the order's placing to this event's delivery (the choreography's
    /// [`crate::hop`] count): each event is two (its publish and its delivery), so `placed` is
    /// [`FIRST_HOP`] and every next event two more. Absent (older events): 0.
    #[serde(default)]
    pub hop: u32,
}

/// The hop count of an order's first event (`placed`: published, then delivered).
pub const FIRST_HOP: u32 = 2;

impl Event {
    /// The event `kind` that follows `self` for the same order (same trace, same order body).
    pub fn next(&self, kind: Kind) -> Event {
        Event {
            order_id: self.order_id.clone(),
            event: kind,
            trace_id: self.trace_id.clone(),
            order: self.order.clone(),
            step: None,
            reason: None,
            output: None,
            hop: self.hop + 2,
        }
    }

    pub fn subject(&self) -> String {
        subject(&self.order_id, self.event)
    }

    /// Parse a delivered message: the payload must be an event whose order and kind are the
    /// subject's. `Err` names why it is poison.
    pub fn from_message(subject: &str, payload: &[u8]) -> Result<Event, String> {
        let mut parts = subject.split('.');
        let (Some("checkout"), Some(order), Some(kind), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "subject {subject:?} is not checkout.<order>.<event>"
            ));
        };
        if Kind::parse(kind).is_none() {
            return Err(format!("unknown event type {kind:?}"));
        }
        let event: Event =
            serde_json::from_slice(payload).map_err(|e| format!("malformed event: {e}"))?;
        if event.order_id != order || event.event.as_str() != kind {
            return Err(format!(
                "payload is {}.{}, subject says {order}.{kind}",
                event.order_id,
                event.event.as_str()
            ));
        }
        Ok(event)
    }
}

/// `checkout.<order>.<event>`.
pub fn subject(order_id: &str, kind: Kind) -> String {
    format!("checkout.{order_id}.{}", kind.as_str())
}

/// An order id usable as one subject token (no `.`, `*`, `>` or whitespace).
pub fn valid_order_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_round_trip_and_rank_in_order() {
        for (i, k) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
            assert_eq!(k.rank() as usize, i);
        }
        assert_eq!(Kind::parse("shipped"), None);
    }

    #[test]
    fn poison_is_named() {
        let ok = Event {
            order_id: "o1".into(),
            event: Kind::Placed,
            trace_id: "t".into(),
            order: json!({}),
            step: None,
            reason: None,
            output: None,
            hop: FIRST_HOP,
        };
        let bytes = serde_json::to_vec(&ok).unwrap();
        assert_eq!(
            Event::from_message("checkout.o1.placed", &bytes).unwrap(),
            ok
        );
        let cases = [
            ("checkout.o1.shipped", &bytes[..], "unknown event type"),
            ("checkout.o1.placed", b"{", "malformed"),
            ("checkout.o2.placed", &bytes[..], "subject says"),
            ("checkout.o1", &bytes[..], "not checkout"),
        ];
        for (subject, payload, why) in cases {
            let err = Event::from_message(subject, payload).unwrap_err();
            assert!(err.contains(why), "{subject}: {err}");
        }
        assert!(valid_order_id("0193-ab_c") && !valid_order_id("a.b") && !valid_order_id(""));
    }
}
