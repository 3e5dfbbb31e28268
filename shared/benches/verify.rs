//! Verifications per second on one core: the full VT1 path (trim, base64,
//! layout, keyset look-up, strict Ed25519, event and time checks) against the
//! peer it is built on, raw `ed25519_dalek::VerifyingKey::verify_strict` over
//! the same message, measured in the same run.
//!
//!     cargo bench -p shared --bench verify

use std::hint::black_box;
use std::time::Instant;

use ed25519_dalek::{Signature, SigningKey};
use shared::code::{self, Signer};
use shared::{Keyset, TicketFields, TicketId, Verifier};

const ROUNDS: usize = 5;
const PER_ROUND: u32 = 20_000;

/// Best of `ROUNDS` rates, in operations per second.
fn rate(mut op: impl FnMut() -> bool) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..PER_ROUND {
                assert!(op());
            }
            f64::from(PER_ROUND) / start.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn main() {
    let signer = Signer::new(SigningKey::from_bytes(&[7; 32]));
    let fields = TicketFields {
        event_id: 1001,
        ticket_id: TicketId([0x5a; 16]),
        category_id: 3,
        multi_entry: false,
        valid_from: 1_900_000_000,
        valid_until: 1_900_086_400,
        seat: "A-12-7".into(),
    };
    let text = signer.encode(&fields).unwrap();
    let mut keyset = Keyset::new();
    keyset.insert(signer.verifying_key(), [1001]);
    let verifier = Verifier::new(keyset);

    // The peer: the bare signature check on the exact bytes VT1 signs.
    let body = code::decode_body(&text).unwrap();
    let (payload, sig) = body.split_at(body.len() - 64);
    let message = [b"VT1".as_slice(), payload].concat();
    let signature = Signature::from_bytes(sig.try_into().unwrap());
    let key = signer.verifying_key();

    let raw = rate(|| {
        key.verify_strict(black_box(&message), black_box(&signature))
            .is_ok()
    });
    let full = rate(|| {
        verifier
            .verify(black_box(&text), black_box(1_900_003_600))
            .is_ok()
    });
    let parse = rate(|| code::parse(black_box(&text)).is_ok());
    println!("raw verify_strict (peer)   {raw:>10.0} /s per core");
    println!("VT1 Verifier::verify       {full:>10.0} /s per core");
    println!("VT1 parse only             {parse:>10.0} /s per core");
    println!("time of full path / raw    {:>10.2}", raw / full);
}
