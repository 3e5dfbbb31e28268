//! Property tests: encoding round-trips, and no single-byte change to a code
//! survives verification.

use proptest::prelude::*;
use shared::code::{self, Signer};
use shared::{Keyset, ResultCode, TicketFields, TicketId, Verifier};

use crate::vector_signer;

fn fields() -> impl Strategy<Value = TicketFields> {
    (
        any::<u64>(),
        any::<[u8; 16]>(),
        any::<u16>(),
        any::<bool>(),
        any::<u32>(),
        any::<u32>(),
        "\\PC{0,12}".prop_filter("seat fits in 32 bytes", |s| s.len() <= 32),
    )
        .prop_map(
            |(event_id, id, category_id, multi_entry, a, b, seat)| TicketFields {
                event_id,
                ticket_id: TicketId(id),
                category_id,
                multi_entry,
                valid_from: a.min(b),
                valid_until: a.max(b),
                seat,
            },
        )
}

fn verifier_for(signer: &Signer, event_id: u64) -> Verifier {
    let mut keyset = Keyset::new();
    keyset.insert(signer.verifying_key(), [event_id]);
    Verifier::new(keyset)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_then_parse_round_trips(f in fields()) {
        let signer = vector_signer();
        let text = signer.encode(&f).unwrap();
        let parsed = code::parse(&text).unwrap();
        prop_assert_eq!(parsed.claimed(), &f);
        prop_assert_eq!(parsed.key_id(), signer.key_id());
        let verified = verifier_for(&signer, f.event_id).verify(&text, u64::from(f.valid_from)).unwrap();
        prop_assert_eq!(verified.fields(), &f);
    }

    #[test]
    fn any_single_byte_change_to_the_body_is_refused(f in fields(), at in any::<prop::sample::Index>(), delta in 1u8..=255) {
        let signer = vector_signer();
        let verifier = verifier_for(&signer, f.event_id);
        let text = signer.encode(&f).unwrap();
        let mut body = code::decode_body(&text).unwrap();
        let i = at.index(body.len());
        body[i] ^= delta;
        let tampered = code::encode_body(&body);
        let result = verifier.verify(&tampered, u64::from(f.valid_from));
        prop_assert!(result.is_err(), "byte {} changed and still accepted", i);
    }

    #[test]
    fn any_single_character_change_to_the_text_is_refused(f in fields(), at in any::<prop::sample::Index>(), c in 0x21u8..0x7f) {
        let signer = vector_signer();
        let verifier = verifier_for(&signer, f.event_id);
        let text = signer.encode(&f).unwrap();
        let i = at.index(text.len());
        prop_assume!(text.as_bytes()[i] != c);
        let mut bytes = text.into_bytes();
        bytes[i] = c;
        let tampered = String::from_utf8(bytes).unwrap();
        let refused = verifier.verify(&tampered, u64::from(f.valid_from)).unwrap_err();
        // A change in the key id may name a key this device lacks; every
        // other change is a broken code or a broken signature.
        prop_assert!(matches!(refused.result, ResultCode::Invalid | ResultCode::UnknownKey), "{:?}", refused);
    }

    #[test]
    fn arbitrary_text_never_panics_and_is_never_admitted(s in "\\PC{0,300}") {
        let verifier = verifier_for(&vector_signer(), 1001);
        prop_assert!(verifier.verify(&s, 1_900_000_000).is_err());
    }

    #[test]
    fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let verifier = verifier_for(&vector_signer(), 1001);
        prop_assert!(verifier.verify(&code::encode_body(&body), 1_900_000_000).is_err());
    }
}

#[test]
fn seat_of_33_bytes_cannot_be_encoded() {
    let f = TicketFields {
        event_id: 1,
        ticket_id: TicketId([7; 16]),
        category_id: 1,
        multi_entry: false,
        valid_from: 10,
        valid_until: 20,
        seat: "x".repeat(33),
    };
    assert!(vector_signer().encode(&f).is_err());
    let reversed = TicketFields {
        seat: String::new(),
        valid_from: 30,
        ..f
    };
    assert!(vector_signer().encode(&reversed).is_err());
}
