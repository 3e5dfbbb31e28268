//! Every case of the spec's test vectors, made by an independent implementation.

use serde_json::Value;
use shared::{ResultCode, TicketFields, TicketId, Verifier};

use crate::{vector_keyset, vector_signer};

fn cases() -> Vec<Value> {
    let v: Value = serde_json::from_str(fixtures::TICKET_CODE_V1_VECTORS).unwrap();
    assert_eq!(v["spec"], "ticket-code-v1");
    assert_eq!(
        v["skew_seconds"], 300,
        "the vectors assume the default skew"
    );
    v["cases"].as_array().unwrap().clone()
}

/// Checks one case: the result code, and for a good signature every field the
/// case states.
fn check(verifier: &Verifier, case: &Value) {
    let name = case["name"].as_str().unwrap();
    let code = case["code"].as_str().unwrap();
    let now = case["now"].as_u64().unwrap();
    let expect = &case["expect"];
    let want: ResultCode = expect["result"].as_str().unwrap().parse().unwrap();
    let (got, ticket) = match verifier.verify(code, now) {
        Ok(t) => (ResultCode::Ok, Some(t)),
        Err(r) => (r.result, r.ticket),
    };
    assert_eq!(got, want, "case {name:?}");
    if let Some(t) = ticket {
        let f = t.fields();
        let fields = [
            ("event_id", Value::from(f.event_id)),
            ("ticket_id", Value::from(f.ticket_id.to_string())),
            ("category_id", Value::from(f.category_id)),
            ("multi_entry", Value::from(f.multi_entry)),
            ("seat", Value::from(f.seat.clone())),
            ("valid_from", Value::from(f.valid_from)),
            ("valid_until", Value::from(f.valid_until)),
        ];
        for (key, value) in fields {
            if let Some(expected) = expect.get(key) {
                assert_eq!(&value, expected, "case {name:?}, field {key}");
            }
        }
    }
}

#[test]
fn every_spec_vector_gives_its_result() {
    let verifier = Verifier::new(vector_keyset());
    let cases = cases();
    assert!(cases.len() >= 17);
    for case in &cases {
        check(&verifier, case);
    }
}

#[test]
fn every_result_code_before_revocation_is_covered_by_the_vectors() {
    let covered: Vec<String> = cases()
        .iter()
        .map(|c| c["expect"]["result"].as_str().unwrap().to_owned())
        .collect();
    for code in [
        "ok",
        "invalid",
        "unknown_key",
        "wrong_event",
        "not_yet_valid",
        "expired",
    ] {
        assert!(covered.iter().any(|c| c == code), "no vector for {code}");
    }
}

#[test]
fn our_encoder_reproduces_the_vector_codes_byte_for_byte() {
    // Ed25519 is deterministic, so signing the same fields with the vectors'
    // seed must give exactly the independent implementation's text.
    let signer = vector_signer();
    assert_eq!(signer.key_id().to_string(), "21fe31df");
    for case in cases() {
        let expect = &case["expect"];
        if expect["result"] != "ok" || expect.get("valid_from").is_none() {
            continue;
        }
        let fields = TicketFields {
            event_id: expect["event_id"].as_u64().unwrap(),
            ticket_id: expect["ticket_id"]
                .as_str()
                .unwrap()
                .parse::<TicketId>()
                .unwrap(),
            category_id: expect["category_id"].as_u64().unwrap() as u16,
            multi_entry: expect["multi_entry"].as_bool().unwrap(),
            valid_from: expect["valid_from"].as_u64().unwrap() as u32,
            valid_until: expect["valid_until"].as_u64().unwrap() as u32,
            seat: expect["seat"].as_str().unwrap().to_owned(),
        };
        assert_eq!(
            signer.encode(&fields).unwrap(),
            case["code"].as_str().unwrap()
        );
    }
}

#[test]
fn wedge_line_endings_are_trimmed_but_inner_whitespace_is_not() {
    let verifier = Verifier::new(vector_keyset());
    let code = cases()[0]["code"].as_str().unwrap().to_owned();
    let now = 1_900_003_600;
    assert!(verifier.verify(&format!("  {code}\r\n"), now).is_ok());
    let (head, tail) = code.split_at(20);
    let refused = verifier.verify(&format!("{head} {tail}"), now).unwrap_err();
    assert_eq!(refused.result, ResultCode::Invalid);
    let lower = code.replacen("VT1:", "vt1:", 1);
    assert_eq!(
        verifier.verify(&lower, now).unwrap_err().result,
        ResultCode::Invalid
    );
}

#[test]
fn a_gate_set_to_another_event_refuses_with_wrong_event() {
    let verifier = Verifier::new(vector_keyset()).only_events([1002]);
    let code = cases()[0]["code"].as_str().unwrap().to_owned();
    let refused = verifier.verify(&code, 1_900_003_600).unwrap_err();
    assert_eq!(refused.result, ResultCode::WrongEvent);
    assert_eq!(
        refused.ticket.unwrap().fields().seat,
        "A-12-7",
        "a genuine ticket is shown"
    );
}

#[test]
fn skew_is_configurable() {
    let code = cases()[0]["code"].as_str().unwrap().to_owned();
    // 100 s before valid_from: inside the default skew, outside a 60 s skew.
    let now = 1_900_000_000 - 100;
    assert!(Verifier::new(vector_keyset()).verify(&code, now).is_ok());
    let strict = Verifier::new(vector_keyset()).with_skew(60);
    assert_eq!(
        strict.verify(&code, now).unwrap_err().result,
        ResultCode::NotYetValid
    );
}
