//! How a verification outcome is shown: one line for a person, or one JSON
//! object a line for a program.

use serde_json::{Map, Value, json};
use shared::{Refusal, ResultCode, VerifiedTicket};

/// The outcome of checking one code.
pub type Outcome = Result<VerifiedTicket, Refusal>;

pub fn result_code(outcome: &Outcome) -> ResultCode {
    match outcome {
        Ok(_) => ResultCode::Ok,
        Err(r) => r.result,
    }
}

fn ticket(outcome: &Outcome) -> Option<&VerifiedTicket> {
    match outcome {
        Ok(t) => Some(t),
        Err(r) => r.ticket.as_ref(),
    }
}

/// The JSON object for an outcome: always `result`; `reason` for a refusal;
/// the ticket's fields when its signature was good.
pub fn to_json(outcome: &Outcome) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("result".into(), json!(result_code(outcome).as_str()));
    if let Err(r) = outcome {
        out.insert("reason".into(), json!(r.reason));
    }
    if let Some(t) = ticket(outcome) {
        let f = t.fields();
        out.insert("event_id".into(), json!(f.event_id));
        out.insert("ticket_id".into(), json!(f.ticket_id.to_string()));
        out.insert("category_id".into(), json!(f.category_id));
        out.insert("multi_entry".into(), json!(f.multi_entry));
        out.insert("seat".into(), json!(f.seat));
        out.insert("valid_from".into(), json!(f.valid_from));
        out.insert("valid_until".into(), json!(f.valid_until));
        out.insert("key_id".into(), json!(t.key_id().to_string()));
    }
    out
}

/// One line for gate staff: the result first, then what matters.
pub fn to_line(outcome: &Outcome) -> String {
    let mut parts = vec![result_code(outcome).as_str().to_uppercase()];
    if let Some(t) = ticket(outcome) {
        let f = t.fields();
        let seat = if f.seat.is_empty() {
            "general admission"
        } else {
            f.seat.as_str()
        };
        parts.push(format!("event {}", f.event_id));
        parts.push(format!("seat {seat}"));
        parts.push(format!("category {}", f.category_id));
        parts.push(format!("ticket {}", f.ticket_id));
        if f.multi_entry {
            parts.push("multi-entry".into());
        }
    }
    if let Err(r) = outcome {
        parts.push(r.reason.clone());
    }
    parts.join("  ")
}

/// The JSON object for a recorded check: [`to_json`] plus where and how it
/// was recorded, and for `already_redeemed` the first admission.
pub fn checked_json(c: &crate::gate::Checked) -> Map<String, Value> {
    let mut out = to_json(&c.outcome);
    out.insert("direction".into(), json!(c.record.direction.as_str()));
    out.insert("device_id".into(), json!(c.record.device_id.to_string()));
    out.insert("idx".into(), json!(c.record.idx));
    out.insert("gate".into(), json!(c.record.gate));
    out.insert("at_ms".into(), json!(c.record.wall_ms));
    if let Some(first) = &c.first_admission {
        out.insert(
            "first_admission".into(),
            json!({
                "at": crate::gate::format_ms(first.wall_ms),
                "at_ms": first.wall_ms,
                "gate": first.gate,
                "device_id": first.device_id.to_string(),
                "device_name": first.device_name,
            }),
        );
    }
    out
}
