//! Keyset loading: good keysets load, every bad entry is refused with a message
//! that names it.

use serde_json::json;
use shared::{Keyset, KeysetError};

const PUBLIC_KEY: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

fn load(entry: serde_json::Value) -> Result<Keyset, KeysetError> {
    Keyset::from_json(&json!({ "keys": [entry] }).to_string())
}

#[test]
fn a_good_keyset_round_trips_through_json() {
    let keyset =
        load(json!({"key_id": "21fe31df", "public_key": PUBLIC_KEY, "event_ids": [1001, 7]}))
            .unwrap();
    let again = Keyset::from_json(&keyset.to_json()).unwrap();
    assert_eq!(keyset, again);
    let entry = again.entries().next().unwrap();
    assert_eq!(
        entry.event_ids.iter().copied().collect::<Vec<_>>(),
        vec![7, 1001]
    );
}

#[test]
fn an_entry_whose_key_id_does_not_match_its_key_is_refused() {
    let err = load(json!({"key_id": "21fe31de", "public_key": PUBLIC_KEY, "event_ids": [1001]}))
        .unwrap_err();
    assert!(matches!(err, KeysetError::Mismatch { .. }));
    let message = err.to_string();
    assert!(
        message.contains("21fe31de") && message.contains("21fe31df"),
        "{message}"
    );
    assert!(message.contains("re-export"), "{message}");
}

#[test]
fn malformed_entries_are_refused_with_a_reason() {
    let cases = [
        (
            json!({"key_id": "21FE31DF", "public_key": PUBLIC_KEY, "event_ids": []}),
            "lower-case",
        ),
        (
            json!({"key_id": "21fe31", "public_key": PUBLIC_KEY, "event_ids": []}),
            "8 lower-case hex",
        ),
        (
            json!({"key_id": "21fe31df", "public_key": "AAAA", "event_ids": []}),
            "not 32",
        ),
        (
            json!({"key_id": "21fe31df", "public_key": format!("{PUBLIC_KEY}="), "event_ids": []}),
            "base64url",
        ),
        // The identity point: small order, never a real issuer key.
        (
            json!({"key_id": "21fe31df", "public_key": "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "event_ids": []}),
            "small-order",
        ),
        (
            json!({"key_id": "21fe31df", "public_key": PUBLIC_KEY}),
            "JSON",
        ),
    ];
    for (entry, expect) in cases {
        let err = load(entry.clone()).unwrap_err().to_string();
        assert!(err.contains(expect), "{entry}: {err}");
    }
    assert!(Keyset::from_json("not json").is_err());
    assert!(Keyset::from_json("{\"keys\": 3}").is_err());
}

#[test]
fn a_key_listed_twice_is_refused() {
    let entry = json!({"key_id": "21fe31df", "public_key": PUBLIC_KEY, "event_ids": [1]});
    let err = Keyset::from_json(&json!({"keys": [entry.clone(), entry]}).to_string()).unwrap_err();
    assert!(matches!(err, KeysetError::Duplicate { .. }), "{err}");
}
