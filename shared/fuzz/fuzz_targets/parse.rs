//! Any bytes, as text or as a decoded body, must parse or be refused without a
//! panic, and must never verify under a key that did not sign them.
//!
//!     cargo fuzz run parse        (from shared/)

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shared::{Keyset, Verifier, code};

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let mut keyset = Keyset::new();
        keyset.insert(key.verifying_key(), [1001]);
        Verifier::new(keyset)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(ticket) = code::parse(text) {
            // Whatever parses keeps the layout's invariants.
            let f = ticket.claimed();
            assert!(f.seat.len() <= code::MAX_SEAT_LEN);
            assert!(f.valid_from <= f.valid_until);
        }
        assert!(verifier().verify(text, 1_900_000_000).is_err());
    }
    let _ = code::parse_body(data);
    assert!(verifier().verify(&code::encode_body(data), 1_900_000_000).is_err());
});
