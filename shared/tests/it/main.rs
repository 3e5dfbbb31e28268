//! The one integration-test binary of `shared`.

mod device;
mod keyset;
mod merge;
mod properties;
mod vectors;

use ed25519_dalek::SigningKey;
use shared::code::Signer;

/// The signing key of the spec's vectors.
pub fn vector_signer() -> Signer {
    let v: serde_json::Value = serde_json::from_str(fixtures::TICKET_CODE_V1_VECTORS).unwrap();
    let seed = shared::hex::decode::<32>(v["signing_seed_hex"].as_str().unwrap()).unwrap();
    Signer::new(SigningKey::from_bytes(&seed))
}

/// The keyset of the spec's vectors.
pub fn vector_keyset() -> shared::Keyset {
    let v: serde_json::Value = serde_json::from_str(fixtures::TICKET_CODE_V1_VECTORS).unwrap();
    shared::Keyset::from_json(&v["keyset"].to_string()).unwrap()
}
